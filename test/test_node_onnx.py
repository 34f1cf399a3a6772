"""The node on the onnxruntime backend publishes the same disparity as on the torch backend
(issue 8): two node processes over real DDS, one per runtime, the same weights file and the
same stereo pair, DisparityImages compared to 1e-3 px.

The weights are an untrained ``student`` saved with ``madis_core.checkpoint.save_weights``
into the test's temporary folder (both runtimes load a weights path; the onnxruntime backend
exports it to ONNX on first use, into ``MADIS_CACHE`` which points into the temporary folder).
The image size (330x250) is deliberately not a multiple of the network's size divisor, so
the padding and cropping of both backends are compared too.
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rosutil import RELIABLE, NodeProcess, RosContext, StereoInputs, free_domain, image_pair_messages, make_scene  # noqa: E402

pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs the onnxruntime package")

from stereo_msgs.msg import DisparityImage  # noqa: E402

from madis_ros.messages import disparity_from_msg  # noqa: E402

pytestmark = pytest.mark.timeout(150)

DOMAIN = free_domain()
W, H = 330, 250
TOL_PX = 1e-3


def test_onnxruntime_node_publishes_the_torch_disparity(tmp_path, monkeypatch):
    import torch

    from madis_core.checkpoint import save_weights
    from madis_core.models import build_model

    torch.manual_seed(0)
    weights = save_weights(build_model("student"), tmp_path / "student.safetensors")
    monkeypatch.setenv("MADIS_CACHE", str(tmp_path / "cache"))  # the ONNX export lands here, not in ~/.cache
    base = {"model": str(weights), "device": "cpu", "input_qos": "reliable", "publish_points": False,
            "publish_depth": False, "publish_color_disparity": False, "no_input_warn_sec": 120.0}
    nodes = {rt: NodeProcess(dict(base, runtime=rt), DOMAIN, namespace=f"/{rt}_rt")
             for rt in ("torch", "onnxruntime")}
    for n in nodes.values():
        n.start()
    try:
        for rt, n in nodes.items():
            assert n.wait_for_log(r"input QoS", 90), f"{rt} node did not start:\n{n.log_text()[-3000:]}"
        assert "(onnxruntime, CPUExecutionProvider" in nodes["onnxruntime"].log_text()
        assert "(torch, device=cpu" in nodes["torch"].log_text()

        scene = make_scene(W, H, "slanted", 20.0)
        with RosContext(DOMAIN) as rc:
            out, inputs = {}, {}
            for rt in nodes:
                out[rt] = rc.subscribe(DisparityImage, f"/{rt}_rt/disparity", RELIABLE)
                inputs[rt] = StereoInputs(rc, namespace=f"/{rt}_rt")
            for rt in nodes:
                inputs[rt].wait_matched()
            msgs = {rt: image_pair_messages(scene) for rt in nodes}  # identical content for both
            stamps = {rt: inputs[rt].prime(msgs[rt], out[rt], timeout=60.0) for rt in nodes}
            got = {rt: next(m for m in out[rt].msgs if m.header.stamp == stamps[rt]) for rt in nodes}
    finally:
        for n in nodes.values():
            n.stop()

    t, o = got["torch"], got["onnxruntime"]
    assert (t.image.width, t.image.height) == (o.image.width, o.image.height) == (W, H)
    for field in ("f", "t", "min_disparity", "max_disparity", "delta_d"):
        assert math.isclose(getattr(t, field), getattr(o, field), rel_tol=1e-6), field
    dt, do = disparity_from_msg(t), disparity_from_msg(o)
    valid = np.isfinite(dt)
    assert np.array_equal(valid, np.isfinite(do)), "the runtimes disagree on which pixels are valid"
    assert valid.mean() > 0.9 and np.ptp(dt[valid]) > 1.0, "degenerate disparity: the comparison would prove nothing"
    diff = float(np.abs(dt[valid] - do[valid]).max())
    print(f"\nonnxruntime vs torch node at {W}x{H}: max |disparity difference| {diff:.2e} px "
          f"(disparity range {np.nanmin(dt):.2f}..{np.nanmax(dt):.2f} px)")
    assert diff <= TOL_PX
