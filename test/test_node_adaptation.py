"""Online adaptation in the node over real DDS (issue 17): ``adapt:=true`` steps in a child
process (the default ``adapt_in_process``) while frames keep coming out, /diagnostics reports its steps and loss, and SIGINT saves the
adapted weights with their card, which load back as a model. A backend that cannot learn (SGBM)
gets a clear error and the node serves unadapted.

Processes: two nodes (started together) and this test process publishing pairs and subscribing.
"""
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rosutil import (NodeProcess, RosContext, StereoInputs, diagnostics_values, free_domain,  # noqa: E402
                     image_pair_messages, make_scene, started_nodes)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

pytestmark = pytest.mark.timeout(180)

DOMAIN_T, DOMAIN_S = free_domain(), free_domain()
W, H = 192, 128
COMMON = {"no_input_warn_sec": 60.0, "input_qos": "reliable", "diagnostics_period": 0.5, "publish_points": False,
          "adapt": True, "adapt_interval_sec": 0.2}


def adaptation_child(node_pid: int) -> int:
    """The pid of the node's adaptation process (its spawned child that is not the resource tracker)."""
    for task in os.listdir(f"/proc/{node_pid}/task"):
        with open(f"/proc/{node_pid}/task/{task}/children") as f:
            for pid in f.read().split():
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    cmd = c.read().replace(b"\0", b" ")
                if b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
                    return int(pid)
    raise AssertionError(f"node {node_pid} has no adaptation process")


def test_online_adaptation_steps_reports_and_saves_on_sigint(tmp_path):
    saved = tmp_path / "adapted.safetensors"
    torch_node = NodeProcess({"model": "student-lite", "device": "cpu", "adapt_save_path": str(saved), **COMMON},
                             DOMAIN_T)
    sgbm_node = NodeProcess({"model": "sgbm", "max_disparity": 32.0, **COMMON}, DOMAIN_S)
    scene = make_scene(W, H, "photo", 8.0)
    with started_nodes({"T": torch_node, "S": sgbm_node}):
        assert torch_node.wait_for_log(r"online adaptation on \(child process\): at most one step per 0.2 s", 5), torch_node.log_text()
        assert sgbm_node.wait_for_log(r"adapt:=true needs a torch model; sgbm .* runs without adaptation", 5), \
            sgbm_node.log_text()
        with RosContext(DOMAIN_S) as rc:  # the SGBM node still serves
            disp = rc.subscribe(DisparityImage, "disparity")
            inp = StereoInputs(rc)
            inp.wait_matched()
            inp.prime(image_pair_messages(scene), disp)
        with RosContext(DOMAIN_T) as rc:
            disp, diags = rc.subscribe(DisparityImage, "disparity"), rc.subscribe(DiagnosticArray, "/diagnostics")
            inp = StereoInputs(rc)
            inp.wait_matched()
            inp.prime(image_pair_messages(scene), disp)

            def adapted(n):
                return int(diagnostics_values(diags.msgs).get("adapt_steps", 0)) >= n

            for _ in range(200):  # pairs at about 10 Hz until the adapter has stepped 3 times
                inp.send(image_pair_messages(scene))
                if rc.wait_for(lambda: adapted(3), 0.1):
                    break
            d = diagnostics_values(diags.msgs)
            assert adapted(3), (d, torch_node.log_text()[-3000:])
            assert int(d["adapt_failed_steps"]) == 0 and np.isfinite(float(d["adapt_loss"])), d
            assert int(d["adapt_pairs_offered"]) >= int(d["adapt_pairs_used"]) >= 3, d
            assert d["adapt_running"] == "True" and d["_level"] == 0, d

            # the adaptation process dies (OOM killer, a crash): the node says so and keeps serving
            child = adaptation_child(torch_node.pid)
            os.kill(child, signal.SIGKILL)

            def stopped():
                v = diagnostics_values(diags.msgs)
                return v.get("adapt_running") == "False" and v["_level"] == 1

            for _ in range(100):
                inp.send(image_pair_messages(scene))
                if rc.wait_for(stopped, 0.1):
                    break
            d = diagnostics_values(diags.msgs)
            assert stopped(), d
            assert "online adaptation stopped" in d["_message"], d
            n_before = len(disp)
            for _ in range(5):
                inp.send(image_pair_messages(scene))
            assert rc.wait_for(lambda: len(disp) > n_before, 10), "no output after the adapter died"
            n_out = len(disp)
        assert n_out >= 3
        assert torch_node.wait_for_log(r"online adaptation stopped unexpectedly", 5), torch_node.log_text()[-3000:]
        assert torch_node.stop(timeout=15) == 0, torch_node.log_text()[-3000:]
    log = torch_node.log_text()
    assert "adapted weights (" in log and f"load them with model:={saved}" in log, log[-3000:]
    assert "Traceback" not in log and "leaked" not in log, log[-3000:]  # the child ended cleanly

    from madis_core.adaptation.card import read_adaptation
    from madis_core.estimator import StereoEstimator

    facts = read_adaptation(saved)
    assert facts["start"] == "student-lite" and facts["steps"] >= 3 and facts["data"] == "online (node input)"
    assert saved.with_suffix(".md").is_file()
    est = StereoEstimator.from_pretrained(str(saved), device="cpu")
    res = est.predict(scene.left, scene.right)
    assert res.disparity.shape == (H, W) and np.isfinite(res.disparity).all()
