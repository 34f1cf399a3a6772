"""Real robots' inputs into the node over real DDS (issue 15): calibration synchronised with the
images, raw images rectified, compressed images, tiny images, 12-bit mono16, frame_id problems,
stamps that go back or repeat.

Processes: the node (one per configuration, started together) and this test process publishing
crafted messages and subscribing to the outputs. Domains from ``rosutil.free_domain()``.
"""
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rosutil import (NodeProcess, RosContext, StereoInputs, diagnostics_values, free_domain,  # noqa: E402
                     image_pair_messages, make_scene, outputs_with_stamp, started_nodes, to_time)

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from madis_core.camera import StereoCamera  # noqa: E402
from madis_ros.image_conversion import numpy_to_compressed, numpy_to_image  # noqa: E402
from madis_ros.messages import camera_info_msgs, disparity_from_msg, pointcloud2_to_numpy  # noqa: E402

pytestmark = pytest.mark.timeout(180)

DOMAIN_S, DOMAIN_L, DOMAIN_C = (free_domain() for _ in range(3))
W, H = 160, 120
COMMON = {"warn_throttle_sec": 0.2, "no_input_warn_sec": 60.0, "input_qos": "reliable", "diagnostics_period": 0.5}
PARAMS_S = {"model": "sgbm", "max_disparity": 32.0, **COMMON}
PARAMS_L = {"model": "student-lite", "model_random_init": True, "device": "cpu", **COMMON}
PARAMS_C = {"model": "sgbm", "max_disparity": 32.0, "input_transport": "compressed", "approximate_sync": True,
            "slop": 0.01, **COMMON}


@pytest.fixture(scope="module")
def nodes():
    with started_nodes({"S": NodeProcess(PARAMS_S, DOMAIN_S), "L": NodeProcess(PARAMS_L, DOMAIN_L),
                        "C": NodeProcess(PARAMS_C, DOMAIN_C)}) as procs:
        yield procs


def publish(inp, msgs, t, images_first=False, gap=0.05):
    """The four messages of a frame at stamp ``t`` (s): camera_info first (or last), then the images."""
    for m in msgs:
        m.header.stamp = to_time(t)
    order = [(inp.img[0], msgs[0]), (inp.img[1], msgs[1]), (inp.info[0], msgs[2]), (inp.info[1], msgs[3])]
    for k, (pub, m) in enumerate(order if images_first else order[2:] + order[:2]):
        pub.publish(m)
        if k == 1:
            time.sleep(gap)
    return to_time(t)


def test_every_frame_is_processed_with_its_own_calibration(nodes):
    """Issue 15 case 1: a frame whose camera_info arrives after its images used the previous
    calibration (baseline 0.308 came out as t = 0.154). All four inputs are synchronised now."""
    node = nodes["S"]
    scene = make_scene(W, H, "plane", 12.0, baseline=0.154)
    wide = StereoCamera(W, H, scene.camera.fx, scene.camera.fy, scene.camera.cx, scene.camera.cy, 0.308)
    with RosContext(DOMAIN_S) as rc:
        disp = rc.subscribe(DisparityImage, "disparity")
        inp = StereoInputs(rc)
        inp.wait_matched()
        inp.prime(image_pair_messages(scene), disp)
        for k in range(3):
            t = 2000.0 + k
            old = publish(inp, image_pair_messages(scene), t - 0.5)  # a frame with the old calibration
            assert rc.wait_for(lambda: outputs_with_stamp(disp, old), 15), node.log_text()[-2000:]
            li, ri, lc, rc_ = image_pair_messages(scene)
            wl, wr = camera_info_msgs(wide, lc.header, rc_.header)
            # the images first, then (0.3 s later) their own camera_info with the new baseline
            new = publish(inp, (li, ri, wl, wr), t, images_first=True, gap=0.3)
            assert rc.wait_for(lambda: outputs_with_stamp(disp, new), 15), node.log_text()[-2000:]
            assert outputs_with_stamp(disp, old)[0].t == pytest.approx(0.154)
            assert [m.t for m in outputs_with_stamp(disp, new)] == [pytest.approx(0.308)]


def test_frame_id_problems_repeated_and_backward_stamps_are_warned_and_handled(nodes):
    node = nodes["S"]
    scene = make_scene(W, H, "plane", 12.0)
    with RosContext(DOMAIN_S) as rc:
        disp, diags = rc.subscribe(DisparityImage, "disparity"), rc.subscribe(DiagnosticArray, "/diagnostics")
        inp = StereoInputs(rc)
        inp.wait_matched()
        inp.prime(image_pair_messages(scene), disp)
        msgs = image_pair_messages(scene)
        msgs[2].header.frame_id = "some_other_frame"
        inp.send(msgs)
        assert node.wait_for_log(r"left image frame_id 'left_optical' differs from its camera_info's "
                                 r"'some_other_frame'", 10), node.log_text()[-2000:]
        msgs = image_pair_messages(scene, frame="")
        stamp = inp.send(msgs)
        assert node.wait_for_log(r"the left image has an empty frame_id, so the outputs have none.*set the frame_id "
                                 r"parameter", 10), node.log_text()[-2000:]
        assert rc.wait_for(lambda: outputs_with_stamp(disp, stamp), 10)  # warned, still served
        inp.img[0].publish(msgs[0])  # the same left image again: same stamp
        assert node.wait_for_log(r"left message with the same stamp as the previous one \(\d+ ns\) dropped", 10)
        # a bag that loops: stamps go back; the node resets its synchroniser and serves the new stream
        inp.t = 500.0
        stamp = inp.send(image_pair_messages(scene))
        assert node.wait_for_log(r"left(_info)? stamps went back by [\d.]+ s \(a bag that loops, or a restarted "
                                 r"driver\): synchroniser reset", 10), node.log_text()[-2000:]
        assert rc.wait_for(lambda: outputs_with_stamp(disp, stamp), 10), node.log_text()[-2000:]
        assert rc.wait_for(lambda: int(diagnostics_values(diags.msgs).get("stamp_resets", 0)) >= 1, 5)
    assert "Traceback" not in node.log_text()


def test_12_bit_mono16_gives_a_visible_cloud(nodes):
    scene = make_scene(W, H, "plane", 12.0)
    msgs = list(image_pair_messages(scene))
    for i, img in enumerate((scene.left, scene.right)):
        mono12 = (img.mean(axis=2) * 16).astype(np.uint16)  # what a 12-bit sensor writes into mono16
        msgs[i] = numpy_to_image(mono12, "mono16", header=msgs[i].header)
    with RosContext(DOMAIN_S) as rc:
        points = rc.subscribe(PointCloud2, "points2")
        inp = StereoInputs(rc)
        inp.wait_matched()
        stamp = inp.prime(msgs, points)
    _, colors = pointcloud2_to_numpy(outputs_with_stamp(points, stamp)[0])
    assert colors.mean() > 100  # was ~7 (value >> 8 of 12-bit data): a nearly black cloud


def test_tiny_images_give_a_clear_warning_and_no_output(nodes):
    node = nodes["L"]
    with RosContext(DOMAIN_L) as rc:
        disp, diags = rc.subscribe(DisparityImage, "disparity"), rc.subscribe(DiagnosticArray, "/diagnostics")
        inp = StereoInputs(rc)
        inp.wait_matched()
        inp.prime(image_pair_messages(make_scene(96, 64, "plane", 4.0)), disp)
        n = len(disp)
        for w, h in ((16, 16), (1, 1)):
            inp.send(image_pair_messages(make_scene(w, h, "plane", 4.32 if w > 1 else 0.0)))
            assert node.wait_for_log(rf"dropping stereo pair \(input_too_small\): {w}x{h} images \(inference {w}x{h}\) "
                                     r"are smaller than the minimum input of student-lite, 48x32: no output", 10), \
                node.log_text()[-2000:]
            time.sleep(0.3)  # past warn_throttle_sec, so the next case logs too
        assert rc.wait_for(lambda: int(diagnostics_values(diags.msgs).get("dropped_input_too_small", 0)) == 2, 5)
        assert len(disp) == n


def test_compressed_jpeg_and_16_bit_png_input(nodes):
    node = nodes["C"]
    scene = make_scene(W, H, "plane", 12.0)

    def compressed(fmt, mono16=False):
        li, ri, lc, rc_ = image_pair_messages(scene)
        out = []
        for img, m in ((scene.left, li), (scene.right, ri)):
            if mono16:
                out.append(numpy_to_compressed((img.mean(axis=2) * 256).astype(np.uint16), "mono16", "png", m.header))
            else:
                out.append(numpy_to_compressed(img, "rgb8", fmt, m.header))
        return out[0], out[1], lc, rc_

    with RosContext(DOMAIN_C) as rc:
        disp = rc.subscribe(DisparityImage, "disparity")
        inp = StereoInputs(rc, compressed=True)
        inp.wait_matched()
        for fmt, mono16 in (("jpeg", False), ("png", True)):
            stamp = inp.prime(compressed(fmt, mono16), disp)
            d = disparity_from_msg(outputs_with_stamp(disp, stamp)[0])
            assert np.nanmedian(d[10:-10, 40:-10]) == pytest.approx(12.0, abs=0.5), fmt
        bad = compressed("jpeg")
        bad[0].data = bad[0].data[:100]
        inp.send(bad)
        assert node.wait_for_log(r"\(malformed_image\): cannot decode the compressed image \(format 'rgb8; jpeg "
                                 r"compressed bgr8', 100 bytes\)", 10), node.log_text()[-2000:]
