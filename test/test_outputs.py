"""Outputs, camera_info validation, the per-frame pipeline and the parameter table, in one process.

Messages are real rclpy messages pushed through CDR serialisation; the models are the
real SGBM backend and a real (untrained) torch student for the confidence path.
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Header

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rosutil import make_scene  # noqa: E402

from madis_core.camera import StereoCamera  # noqa: E402
from madis_core.estimator import StereoEstimator  # noqa: E402
from madis_ros.camera_info import CameraInfoError, stereo_camera_from_infos  # noqa: E402
from madis_ros.image_conversion import image_to_numpy  # noqa: E402
from madis_ros.messages import (camera_info_msgs, disparity_from_msg, make_color_disparity_image,  # noqa: E402
                                make_confidence_image, make_depth_image, make_disparity_image, make_pointcloud2,
                                pointcloud2_to_numpy)
from madis_ros.params import PARAMS, ParameterError, descriptor, settings_from_dict  # noqa: E402
from madis_core.pipeline import ProcessingSettings, StereoFrameProcessor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CAM = StereoCamera(8, 6, 100.0, 110.0, 3.5, 2.5, 0.12, doffs=2.0)


def rt(msg):
    return deserialize_message(serialize_message(msg), type(msg))


def header(stamp_s=12, frame="left_optical"):
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = stamp_s, 345
    return h


# --- camera_info ------------------------------------------------------------------------------------
def test_camera_info_round_trip_keeps_geometry():
    li, ri = camera_info_msgs(CAM, Header(frame_id="l"), Header(frame_id="r"))
    cam = stereo_camera_from_infos(rt(li), rt(ri), image_size=(8, 6))
    assert cam == CAM
    assert -ri.p[3] / ri.p[0] == pytest.approx(0.12)


def _infos():
    li, ri = camera_info_msgs(CAM, Header(frame_id="l"), Header(frame_id="r"))
    return li, ri


@pytest.mark.parametrize("edit, match", [
    (lambda l, r: l.p.__setitem__(0, 0.0), r"fx = P\[0,0\] is 0"),
    (lambda l, r: l.p.__setitem__(0, -5.0), r"fx = P\[0,0\] is -5"),
    (lambda l, r: l.p.__setitem__(5, math.nan), "NaN"),
    (lambda l, r: r.p.__setitem__(3, 0.0), "baseline from camera_info is 0"),
    (lambda l, r: r.p.__setitem__(3, 12.0), "baseline from camera_info is -0.12"),
    (lambda l, r: r.p.__setitem__(0, 80.0), "focal lengths differ"),
    (lambda l, r: setattr(r, "width", 16), "sizes differ"),
])
def test_bad_camera_info_raises_a_clear_error(edit, match):
    li, ri = _infos()
    edit(li, ri)
    with pytest.raises(CameraInfoError, match=match):
        stereo_camera_from_infos(li, ri)


def test_camera_info_must_match_the_images():
    li, ri = _infos()
    with pytest.raises(CameraInfoError, match="camera_info is for 8x6 images but the images are 16x12"):
        stereo_camera_from_infos(li, ri, image_size=(16, 12))
    li.width = li.height = ri.width = ri.height = 0  # drivers that leave the size empty
    assert stereo_camera_from_infos(li, ri, image_size=(8, 6)).width == 8


def test_camera_info_from_rosbags_messages():
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    li, ri = (ts.deserialize_cdr(bytes(serialize_message(m)), "sensor_msgs/msg/CameraInfo") for m in _infos())
    assert stereo_camera_from_infos(li, ri) == CAM


# --- message builders ---------------------------------------------------------------------------------
def test_disparity_image_fields_and_invalid_convention():
    d = np.full((6, 8), 10.0, np.float32)
    d[:, :3] = np.nan
    d[5, :] = np.nan
    msg = rt(make_disparity_image(d, CAM, header(), 0.0, 127.0, 1 / 16))
    assert msg.header.frame_id == "left_optical" and msg.header.stamp.sec == 12 and msg.header.stamp.nanosec == 345
    assert msg.image.header.stamp.sec == 12 and msg.image.encoding == "32FC1" and msg.image.step == 8 * 4
    assert msg.f == pytest.approx(100.0) and msg.t == pytest.approx(0.12)
    assert (msg.min_disparity, msg.max_disparity, msg.delta_d) == (0.0, 127.0, 1 / 16)
    vw = msg.valid_window
    assert (vw.x_offset, vw.y_offset, vw.width, vw.height) == (3, 0, 5, 5)
    raw = image_to_numpy(msg.image)
    assert np.all(raw[np.isnan(d)] == -1.0) and np.isfinite(raw).all()  # below min_disparity, never NaN
    np.testing.assert_array_equal(disparity_from_msg(msg), d)


def test_depth_image_units_and_invalid_values():
    z = np.array([[1.0, 2.5004, np.nan, -1.0], [0.0, 65.535, 65.6, 0.0004]], np.float32)
    m32 = rt(make_depth_image(z, header(), "32FC1"))
    assert m32.encoding == "32FC1" and m32.header.frame_id == "left_optical"
    out = image_to_numpy(m32)
    np.testing.assert_array_equal(out[0, :2], z[0, :2])
    assert np.isnan(out[0, 2:]).all() and np.isnan(out[1, 0])  # NaN, negative and 0 -> NaN
    m16 = rt(make_depth_image(z, header(), "16UC1"))
    assert m16.encoding == "16UC1"
    np.testing.assert_array_equal(image_to_numpy(m16), [[1000, 2500, 0, 0], [0, 65535, 0, 0]])
    with pytest.raises(ValueError, match="32FC1"):
        make_depth_image(z, header(), "mm")


def test_confidence_and_colour_images():
    c = np.array([[0.2, 1.5], [-0.1, np.nan]], np.float32)
    out = image_to_numpy(rt(make_confidence_image(c, header())))
    np.testing.assert_array_equal(out[0], np.array([0.2, 1.0], np.float32))
    assert out[1, 0] == 0.0 and np.isnan(out[1, 1])
    d = np.array([[np.nan, 5.0, 60.0]], np.float32)
    col = rt(make_color_disparity_image(d, header(), max_disparity=64))
    rgb = image_to_numpy(col)
    assert col.encoding == "rgb8" and rgb.shape == (1, 3, 3)
    assert (rgb[0, 0] == 0).all() and rgb[0, 1].any() and not np.array_equal(rgb[0, 1], rgb[0, 2])


def test_organized_cloud_geometry_and_colour_packing():
    d = np.full((6, 8), 20.0, np.float32)
    d[0, 0] = np.nan
    pts = CAM.disparity_to_points(d)
    colors = np.zeros((6, 8, 3), np.uint8)
    colors[..., 0], colors[1, 2] = 255, (1, 2, 3)
    msg = rt(make_pointcloud2(pts, header(), colors))
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (6, 8, 16, 128)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1)]
    assert msg.is_dense is False and msg.header.frame_id == "left_optical"
    p, c = pointcloud2_to_numpy(msg)
    np.testing.assert_array_equal(p, pts)
    np.testing.assert_array_equal(c, colors)
    raw = np.frombuffer(bytes(msg.data), np.uint32).reshape(6, 8, 4)
    assert raw[0, 1, 3] == 0x00FF0000 and raw[1, 2, 3] == 0x00010203
    z = 100.0 * 0.12 / (20.0 + 2.0)  # Z = f t / (d + doffs)
    assert p[3, 5, 2] == pytest.approx(z, rel=1e-6)
    assert p[3, 5, 0] == pytest.approx((5 - 3.5) * z / 100.0, rel=1e-5)
    assert p[3, 5, 1] == pytest.approx((3 - 2.5) * z / 110.0, rel=1e-5)


def test_unorganized_cloud_without_colour():
    pts = np.random.default_rng(0).normal(size=(1, 50, 3)).astype(np.float32)
    msg = rt(make_pointcloud2(pts, header()))
    assert (msg.height, msg.width, msg.point_step) == (1, 50, 12) and msg.is_dense is True
    assert [f.name for f in msg.fields] == ["x", "y", "z"]
    p, c = pointcloud2_to_numpy(msg)
    assert c is None
    np.testing.assert_array_equal(p, pts)


# --- the per-frame pipeline --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene():
    return make_scene(160, 120, "plane", disparity=16.0, seed=1)


@pytest.fixture(scope="module")
def sgbm():
    return StereoEstimator.from_pretrained("sgbm", num_disparities=48)


def _center(a, border=50):
    return a[10:-10, border:-10]


def test_full_resolution_depth_and_points(scene, sgbm):
    out = StereoFrameProcessor(sgbm, ProcessingSettings(cloud_decimation=4)).process(scene.left, scene.right, scene.camera)
    z_true = scene.camera.fx * scene.camera.baseline / 16.0
    z = _center(out.depth)
    assert np.isfinite(z).mean() > 0.95
    assert np.nanmedian(np.abs(z / z_true - 1)) < 0.01
    assert out.points.shape == (30, 40, 3) and out.colors.shape == (30, 40, 3)
    np.testing.assert_array_equal(out.colors, scene.left[::4, ::4])
    np.testing.assert_allclose(out.points, scene.camera.depth_to_points(out.depth)[::4, ::4], rtol=1e-6)
    assert (out.min_disparity, out.max_disparity, out.delta_d) == (0.0, 47.0, 1 / 16)
    assert out.timings_ms["inference"] > 0


@pytest.mark.parametrize("publish", ["camera", "inference"])
def test_half_resolution_inference_keeps_depth(scene, sgbm, publish):
    s = ProcessingSettings(inference_scale=0.5, publish_resolution=publish, cloud_organized=False)
    out = StereoFrameProcessor(sgbm, s).process(scene.left, scene.right, scene.camera)
    z_true = scene.camera.fx * scene.camera.baseline / 16.0
    assert out.inference_camera.width == 80 and out.inference_camera.fx == pytest.approx(150.0)
    if publish == "camera":
        assert out.disparity.shape == (120, 160) and out.camera == scene.camera
        assert np.nanmedian(_center(out.disparity)) == pytest.approx(16.0, abs=0.3)
        assert out.max_disparity == pytest.approx(94.0)  # 47 inference px = 94 camera px
    else:
        assert out.disparity.shape == (60, 80) and out.camera == out.inference_camera
        assert np.nanmedian(out.disparity[5:-5, 25:-5]) == pytest.approx(8.0, abs=0.2)
    z = out.depth[np.isfinite(out.depth)]
    assert z.size > 0.5 * out.depth.size * (1 - 48 / 80)
    assert np.median(np.abs(z / z_true - 1)) < 0.02
    assert out.points.ndim == 3 and out.points.shape[0] == 1 and np.isfinite(out.points).all()


def test_depth_range_and_max_disparity_invalidate(scene, sgbm):
    z_true = scene.camera.fx * scene.camera.baseline / 16.0
    out = StereoFrameProcessor(sgbm, ProcessingSettings(max_depth=0.9 * z_true)).process(
        scene.left, scene.right, scene.camera)
    assert np.isfinite(out.disparity).mean() > 0.5 and np.isfinite(out.depth).mean() < 0.02
    out = StereoFrameProcessor(sgbm, ProcessingSettings(max_disparity=10)).process(scene.left, scene.right, scene.camera)
    assert np.isfinite(out.disparity).mean() < 0.02 and out.max_disparity == 10


def test_confidence_threshold_with_a_learned_model(scene):
    est = StereoEstimator.from_pretrained("student-lite", device="cpu", random_init=True)
    base = StereoFrameProcessor(est, ProcessingSettings()).process(scene.left, scene.right, scene.camera)
    assert base.confidence is not None and base.confidence.shape == (120, 160)
    assert 0.0 <= base.confidence.min() and base.confidence.max() <= 1.0
    thr = float(np.median(base.confidence))
    cut = StereoFrameProcessor(est, ProcessingSettings(confidence_threshold=thr)).process(
        scene.left, scene.right, scene.camera)
    expect = np.isfinite(base.disparity) & (base.confidence >= thr)
    np.testing.assert_array_equal(np.isfinite(cut.disparity), expect)


def test_processing_settings_are_validated():
    for kw, match in [({"inference_scale": 0}, "inference_scale"), ({"inference_width": 100}, "inference_width"),
                      ({"publish_resolution": "full"}, "publish_resolution"), ({"cloud_decimation": 0}, "decimation"),
                      ({"min_depth": 5, "max_depth": 2}, "min_depth")]:
        with pytest.raises(ValueError, match=match):
            ProcessingSettings(**kw)


# --- parameters -------------------------------------------------------------------------------------
def test_parameter_defaults_are_valid_and_errors_are_listed():
    s = settings_from_dict({})
    # the default model is the shipped student, and its weights really are shipped
    from madis_core.checkpoint import shipped_weights

    assert s.model == "student" and shipped_weights(s.model) is not None
    assert s.input_qos == "sensor_data" and s.depth_encoding == "32FC1"
    assert settings_from_dict({"slop": 0.02, "queue_size": 3.0, "max_depth": 10}).queue_size == 3
    with pytest.raises(ParameterError) as e:
        settings_from_dict({"depth_encoding": "mm", "slop": -1, "queue_size": 2.5, "input_qos": "fast",
                            "device": "gpu", "model_options": "{bad", "aproximate_sync": True})
    text = str(e.value)
    for part in ("depth_encoding: must be one of 32FC1, 16UC1", "slop: must be > 0", "queue_size: must be an integer",
                 "input_qos", "device: must be auto, cpu, cuda or cuda:N", "model_options: must be a JSON object",
                 "unknown parameter 'aproximate_sync'"):
        assert part in text
    with pytest.raises(ParameterError, match="min_depth"):
        settings_from_dict({"min_depth": 3.0, "max_depth": 1.0})
    s = settings_from_dict({"model": "sgbm", "max_disparity": 70, "model_options": '{"block_size": 7}'})
    assert s.estimator_kwargs() == {"model": "sgbm", "device": "auto", "precision": "fp32", "runtime": "torch",
                                    "max_disparity": 70.0, "random_init": False, "threads": None,
                                    "block_size": 7}
    from madis_core.estimator import build_estimator

    assert build_estimator(**s.estimator_kwargs()).meta.max_disparity == 79  # 80 disparities: 70 rounded up to 16
    # a learned model's range is its own: max_disparity only clips its output downstream
    est = build_estimator(**settings_from_dict({"max_disparity": 70, "device": "cpu"}).estimator_kwargs())
    assert est.meta.max_disparity == 192


def test_config_yaml_lists_every_parameter_with_its_default():
    cfg = yaml.safe_load((REPO / "config" / "madis_stereo.yaml").read_text())
    values = cfg["/**"]["ros__parameters"]
    assert list(values) == [p.name for p in PARAMS]
    for p in PARAMS:
        assert values[p.name] == p.default and type(values[p.name]) is type(p.default), p.name
    assert settings_from_dict(values) == settings_from_dict({})


def test_every_number_parameter_has_its_range_in_the_descriptor():
    """Ranges are declared once: the same limits check the values and fill the rcl descriptor."""
    numbers = [p for p in PARAMS if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)]
    assert len(numbers) >= 12
    for spec in numbers:
        assert spec.limits is not None, spec.name
        d = descriptor(spec)
        r = (d.integer_range or d.floating_point_range)[0]
        assert (r.from_value, r.to_value) == spec.limits and d.read_only, spec.name
        assert spec.limit_error(spec.default) is None, spec.name  # the default is inside its own range
        with pytest.raises(ParameterError, match=rf"{spec.name}: must be"):
            settings_from_dict({spec.name: spec.limits[1] * 2 + 1})
