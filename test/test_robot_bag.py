"""A bag like a real robot's (issue 15): two cameras with distortion and a rectifying rotation,
raw images stored compressed (jpeg) under a driver's topic names, right stamps a few ms after
the left ones, camera_info at the image rate. Played into the node over DDS (approximate sync,
compressed input, rectify auto) and evaluated offline: depth within 5 % of the truth."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bagutil import T0, hdr  # noqa: E402
from rosutil import ChildProcess, NodeProcess, RosContext, free_domain, make_scene  # noqa: E402
from test_rectify import raw_rig  # noqa: E402

from sensor_msgs.msg import Image  # noqa: E402

from madis_core.rectify import raw_image  # noqa: E402
from madis_ros.bag.files import CAMERA_INFO, COMPRESSED_IMAGE, DISPARITY, BagWriter  # noqa: E402
from madis_ros.image_conversion import image_to_numpy, numpy_to_compressed  # noqa: E402
from madis_ros.messages import camera_info_msgs, make_disparity_image  # noqa: E402
from madis_ros.msgkit import ROSBAGS, stamp_ns  # noqa: E402

pytestmark = pytest.mark.timeout(240)
N, HZ = 6, 5.0
PARAMS = {"model": "sgbm", "max_disparity": 64.0, "input_transport": "compressed", "approximate_sync": True,
          "slop": 0.01, "rectify": "auto", "no_input_warn_sec": 60.0}
TOPICS = {"left/image_rect/compressed": "/robot/left/image_raw/compressed",
          "right/image_rect/compressed": "/robot/right/image_raw/compressed",
          "left/camera_info": "/robot/left/camera_info", "right/camera_info": "/robot/right/camera_info"}


def write_robot_bag(path):
    """The bag, and per left stamp the true depth of the rectified left view."""
    scene = make_scene(320, 240, "slanted", 30.0)
    cal_l, cal_r = raw_rig(scene, "plumb_bob")
    raw_l, raw_r = raw_image(cal_l, scene.left), raw_image(cal_r, scene.right)
    truth = {}
    with BagWriter(path, storage="mcap") as w:
        for t in list(TOPICS.values())[:2]:
            w.add_topic(t, COMPRESSED_IMAGE)
        for t in list(TOPICS.values())[2:]:
            w.add_topic(t, CAMERA_INFO)
        w.add_topic("/robot/ground_truth/disparity", DISPARITY)
        for i in range(N):
            sl = T0 + int(i * 1e9 / HZ)
            sr = sl + int((3.0 + 0.7 * np.sin(i)) * 1e6)  # the right camera fires 2-4 ms later
            for stamp, side, cal, img in ((sl, "left", cal_l, raw_l), (sr, "right", cal_r, raw_r)):
                h = hdr(stamp, f"robot_{side}_optical")
                info = camera_info_msgs(scene.camera, h, h, kit=ROSBAGS)[0 if side == "left" else 1]
                info.distortion_model, info.d = cal.model, cal.D.copy()
                info.k, info.r = cal.K.reshape(-1).copy(), cal.R.reshape(-1).copy()
                w.write(f"/robot/{side}/camera_info", info, stamp)
                w.write(f"/robot/{side}/image_raw/compressed", numpy_to_compressed(img, "rgb8", "jpeg", h, ROSBAGS), stamp)
            w.write("/robot/ground_truth/disparity", make_disparity_image(
                scene.disparity, scene.camera, hdr(sl, "robot_left_optical"), 0.0, 64.0, 1 / 16, kit=ROSBAGS), sl)
            truth[sl] = scene.depth
    return truth


def depth_error(z, z_true):
    inner = np.s_[24:-24, 80:-24]  # away from the rectification border and the unmatched left strip
    rel = np.abs(z[inner] / z_true[inner] - 1)
    return float(np.nanmedian(rel)), float(np.isfinite(rel).mean())


def test_raw_compressed_unsynchronised_cameras_give_depth_within_5_percent(tmp_path):
    from madis_ros.bag_tool import main

    bag = tmp_path / "robot"
    truth = write_robot_bag(bag)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": PARAMS}}))

    # offline, with the node's parameters
    out = tmp_path / "eval.json"
    assert main(["eval", str(bag), "--params-file", str(params_file), "--json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["topics"]["left"] == "/robot/left/image_raw/compressed" and s["frames"]["processed"] == N
    # SGBM leaves the left strip it cannot match empty (holes count as errors): EPE on the rest
    assert s["metrics"]["epe"] < 0.5 and s["metrics"]["density"] > 75, s["metrics"]

    # live: the bag played into the node over DDS, topics remapped as a user would
    domain = free_domain()
    remaps = [a for k, v in TOPICS.items() for a in ("-r", f"{k}:={v}")]
    node = NodeProcess(PARAMS, domain, extra_args=remaps).start()
    try:
        with RosContext(domain) as rc:
            depth = rc.subscribe(Image, "depth")
            assert rc.wait_for(lambda: rc.node.count_subscribers(TOPICS["left/camera_info"]) >= 1, 90), node.log_text()
            player = ChildProcess([sys.executable, "-m", "madis_ros.bag_tool", "play", str(bag),
                                   "--wait-for-subscribers", "30"], domain).start()
            assert player.wait(90) == 0, player.log_text()
            assert rc.wait_for(lambda: len(depth) >= N - 1, 30), node.log_text()[-3000:]
            msgs = depth.msgs
    finally:
        node.stop()
    log = node.log_text()
    assert log.count("rectifying the input images with their camera_info (left plumb_bob D=[-0.25") == 1, log
    for m in msgs:
        err, filled = depth_error(image_to_numpy(m), truth[stamp_ns(m)])
        assert err < 0.05 and filled > 0.8, (err, filled)
