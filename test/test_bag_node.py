"""Bags replayed over real DDS into the real stereo node (``madis-bag play``), and the same bag
through the node and through ``madis-bag eval``: identical pairs.

ROS_DOMAIN_ID from ``rosutil.free_domain()``; every process uses the same-host profile.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bagutil import NS, T0, hdr, image, infos, write_stereo_bag  # noqa: E402
from rosutil import ChildProcess, NodeProcess, RosContext, free_domain, make_scene  # noqa: E402

from madis_ros.bag.files import CAMERA_INFO, IMAGE, BagWriter  # noqa: E402
from madis_ros.messages import disparity_from_msg  # noqa: E402
from madis_ros.msgkit import stamp_ns  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def test_best_effort_recording_reaches_the_node_with_its_default_qos(tmp_path):
    """Issue 6: a bag recorded best effort, replayed as recorded (--qos auto), reaches the
    node with its default QoS (sensor_data); the same replay does not reach a node that
    subscribes reliably (the classic silent failure, so this test can fail)."""
    from rosgraph_msgs.msg import Clock
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from stereo_msgs.msg import DisparityImage

    scenes = [make_scene(320, 240, "plane", disparity=20.0 + 2 * i, seed=i) for i in range(6)]
    bag = tmp_path / "best_effort_bag"
    stamps = write_stereo_bag(bag, [(s.left, s.right, s.disparity) for s in scenes], scenes[0].camera,
                               "mcap", reliability="best_effort", gt=False, hz=4.0)
    domain = free_domain()
    with RosContext(domain) as ros:
        got = ros.subscribe(DisparityImage, f"{NS}/disparity")
        got_reliable = ros.subscribe(DisparityImage, "/reliable_node/disparity")
        clock = ros.subscribe(Clock, "/clock", QoSProfile(depth=50, reliability=ReliabilityPolicy.BEST_EFFORT))
        default_node = NodeProcess({"model": "sgbm"}, domain, namespace=NS, name="default_node").start()
        reliable_node = NodeProcess({"model": "sgbm", "input_qos": "reliable"}, domain, namespace=NS,
                                    name="reliable_node",
                                    extra_args=["-r", "disparity:=/reliable_node/disparity"]).start()
        try:
            assert ros.wait_for(lambda: ros.node.count_subscribers(f"{NS}/left/image_rect") >= 2
                                and ros.node.count_subscribers(f"{NS}/right/camera_info") >= 2, 90), \
                default_node.log_text() + reliable_node.log_text()
            player = ChildProcess([sys.executable, "-m", "madis_ros.bag_tool", "play", str(bag), "--clock",
                                   "--wait-for-subscribers", "30"], domain).start()
            assert player.wait(90) == 0, player.log_text()
            assert "recorded: best_effort" in player.log_text()
            ros.wait_for(lambda: len(got) >= len(stamps), 20)
            received = {stamp_ns(m) for m in got.msgs}
            assert received, ("the default-QoS node got nothing from a best-effort replay\n"
                              + default_node.log_text())
            assert received <= set(stamps)
            assert len(received) >= len(stamps) // 2, (sorted(received), default_node.log_text())
            assert len(got_reliable) == 0, "a reliable subscription received a best-effort replay"
            sims = [m.clock.sec * 10**9 + m.clock.nanosec for m in clock.msgs]
            # /clock carries bag time, and exactly each frame's stamp when that frame goes out
            assert sims and stamps[0] <= min(sims) and max(sims) <= stamps[-1] and set(stamps) & set(sims)
            d = disparity_from_msg(got.msgs[0])
            scene = scenes[stamps.index(stamp_ns(got.msgs[0]))]
            inner = d[20:-20, 100:-20]
            assert np.nanmedian(np.abs(inner - scene.disparity[20:-20, 100:-20])) < 0.5
        finally:
            default_node.stop()
            reliable_node.stop()


def _jittery_bag(path, n=10, hz=10.0):
    """Unsynchronised cameras: right stamps a few ms off the left ones (one beyond the slop, one right
    frame missing, one right image logged before its left), camera_info with each image's stamp."""
    offsets_ms = [0.0, 3.0, -2.0, 4.0, None, 1.0, 25.0, 2.0, -4.0, 3.5][:n]
    scene = make_scene(96, 64, "plane", disparity=6.0)
    with BagWriter(path, storage="mcap") as w:
        for side in ("left", "right"):
            w.add_topic(f"{NS}/{side}/camera_info", CAMERA_INFO)
            w.add_topic(f"{NS}/{side}/image_rect", IMAGE)
        for i, off in enumerate(offsets_ms):
            sl = T0 + int(i * 1e9 / hz)
            msgs = [(sl, "left", scene.left)]
            if off is not None:
                sr = sl + int(off * 1e6)
                msgs.append((sr, "right", scene.right))
                if i == 3:
                    msgs.reverse()  # the right image comes first in the bag
            for stamp, side, img in msgs:
                li, ri = infos(scene.camera, stamp, f"{side}_optical", f"{side}_optical")
                w.write(f"{NS}/{side}/camera_info", li if side == "left" else ri, stamp)
                w.write(f"{NS}/{side}/image_rect", image(img, stamp, f"{side}_optical"), stamp)
    return offsets_ms


def test_the_node_and_madis_bag_eval_pair_the_same_bag_identically(tmp_path):
    """One synchroniser for both: the same bag replayed into the node over DDS and evaluated
    offline gives the same (left stamp, right stamp) pairs, and the same unpaired images."""
    from madis_ros.bag_tool import main

    bag = tmp_path / "jittery"
    offsets = _jittery_bag(bag)
    params = {"model": "sgbm", "max_disparity": 16.0, "approximate_sync": True, "slop": 0.01, "queue_size": 5,
              "input_qos": "reliable", "no_input_warn_sec": 60.0}
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    out = tmp_path / "eval.json"
    assert main(["eval", str(bag), "--params-file", str(params_file), "--json", str(out)]) == 0
    offline = {(f["left_stamp_ns"], f["right_stamp_ns"]) for f in json.loads(out.read_text())["per_frame"]}
    expected = {(T0 + i * 100_000_000, T0 + i * 100_000_000 + int(o * 1e6)) for i, o in enumerate(offsets)
                if o is not None and abs(o) < 10}
    assert offline == expected  # the 25 ms pair is beyond the slop, frame 4 has no right image

    domain = free_domain()
    node = NodeProcess(params, domain, namespace=NS, extra_args=["--log-level", "cam.madis_stereo:=debug"]).start()
    try:
        with RosContext(domain) as ros:
            assert ros.wait_for(lambda: ros.node.count_subscribers(f"{NS}/right/image_rect") >= 1, 90), node.log_text()
        player = ChildProcess([sys.executable, "-m", "madis_ros.bag_tool", "play", str(bag),
                               "--wait-for-subscribers", "30"], domain).start()
        assert player.wait(90) == 0, player.log_text()
        rx = r"frame stamp_ns=(\d+) right_stamp_ns=(\d+)"
        assert RosContext.wait_for(lambda: len(re.findall(rx, node.log_text())) >= len(expected), 30), \
            node.log_text()[-3000:]
        live = {(int(a), int(b)) for a, b in re.findall(rx, node.log_text())}
    finally:
        node.stop()
    assert live == offline, (sorted(live), sorted(offline))
