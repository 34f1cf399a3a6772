"""Rectification from camera_info (madis_core.rectify and the node's calibration cache), and the
frame pipeline's guards: minimum input size, disparities pointing outside the right image,
16-bit images with fewer significant bits. Real OpenCV maps, real SGBM and student models."""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes import make_scene  # noqa: E402

from madis_core.camera import StereoCamera  # noqa: E402
from madis_core.estimator import build_estimator  # noqa: E402
from madis_core.pipeline import InputTooSmallError, ProcessingSettings, StereoFrameProcessor  # noqa: E402
from madis_core.rectify import CameraCalibration, StereoRectifier, raw_image  # noqa: E402

DISTORTION = {"plumb_bob": [-0.25, 0.08, 0.001, -0.0005, -0.01],
              "rational_polynomial": [-0.2, 0.05, 0.001, 0.0, 0.0, 0.01, 0.0, 0.0],
              "equidistant": [-0.05, 0.01, 0.0, 0.0]}


def raw_rig(scene, model: str, yaw_deg: float = 2.0):
    """Calibrations of two cameras whose raw images rectify to ``scene`` (distorted, rotated)."""
    pl, pr = scene.camera.projection_matrices()
    r = cv2.Rodrigues(np.array([0.0, np.deg2rad(yaw_deg), 0.01]))[0]
    k = np.array([[310.0, 0, scene.camera.cx + 2.0], [0, 312.0, scene.camera.cy - 1.5], [0, 0, 1]])
    w, h = scene.camera.width, scene.camera.height
    return (CameraCalibration.from_arrays(w, h, k, DISTORTION[model], r, pl, model),
            CameraCalibration.from_arrays(w, h, k, DISTORTION[model], r.T, pr, model))


@pytest.fixture(scope="module")
def sgbm():
    return build_estimator("sgbm", max_disparity=64)


@pytest.mark.parametrize("model", sorted(DISTORTION))
def test_raw_images_rectified_from_their_calibration_give_the_true_disparity(model, sgbm):
    scene = make_scene(320, 240, "plane", 20.0)
    cl, cr = raw_rig(scene, model)
    assert not cl.is_rectified() and cl.distorted() and cl.rotated()
    raw_l, raw_r = raw_image(cl, scene.left), raw_image(cr, scene.right)
    rect = StereoRectifier(cl, cr)
    back_l, back_r = rect(raw_l, raw_r)
    inner = np.s_[30:-30, 60:-40]
    d_raw = sgbm.predict(raw_l, raw_r).disparity[inner]
    d = sgbm.predict(back_l, back_r).disparity[inner]
    assert np.nanmean(np.abs(d - 20.0) < 0.5) > 0.85, model  # rectified: right
    assert np.nanmean(np.abs(d_raw - 20.0) < 0.5) < 0.05, model  # raw: wrong (the test can fail)
    assert rect.valid[0][inner].all()
    if model == "plumb_bob":  # barrel distortion pulls the corners in: they see no raw pixel
        assert not rect.valid[0].all()


def test_calibrations_are_validated_and_rectified_ones_recognised():
    eye, p = np.eye(3), np.hstack([np.eye(3), np.zeros((3, 1))])
    assert CameraCalibration.from_arrays(8, 6, eye, [0.0] * 5, eye, p).is_rectified()
    assert CameraCalibration.from_arrays(8, 6, eye, [], eye, p, "").model == "plumb_bob"  # empty: plumb_bob
    for kwargs, match in ((dict(model="kannala"), "not supported; supported: plumb_bob, rational_polynomial, "
                                                  "equidistant"),
                          (dict(K=np.eye(2)), "K has 4 elements"), (dict(D=[np.nan] * 5), "D contains NaN"),
                          (dict(D=[0.1] * 6), "plumb_bob takes 5 distortion coefficients")):
        args = dict(width=8, height=6, K=eye, D=[0.0] * 5, R=eye, P=p, model="plumb_bob")
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            CameraCalibration.from_arrays(**args)


def test_calibration_cache_rectifies_raw_input_once_per_calibration():
    from madis_ros.calibration import CalibrationCache
    from madis_ros.camera_info import CameraInfoError
    from madis_ros.messages import camera_info_msgs
    from madis_ros.msgkit import ROSBAGS

    scene = make_scene(160, 120, "plane", 10.0)
    li, ri = camera_info_msgs(scene.camera, ROSBAGS.header(1, "l"), ROSBAGS.header(1, "r"), kit=ROSBAGS)
    auto = CalibrationCache("auto")
    first = auto.get(li, ri, (160, 120))
    assert first.first_use and first.rectifier is None and not first.raw
    assert auto.get(li, ri, (160, 120)) is first and not first.first_use  # built once, cached
    li.d = np.array([-0.2, 0.05, 0.0, 0.0, 0.0])
    raw = auto.get(li, ri, (160, 120))
    assert raw.raw and raw.rectifier is not None and raw.first_use and "left plumb_bob D=[-0.2" in raw.describe
    assert CalibrationCache("false").get(li, ri, (160, 120)).rectifier is None
    assert CalibrationCache("true").get(*camera_info_msgs(scene.camera, ROSBAGS.header(1, "l"), ROSBAGS.header(1, "r"),
                                                         kit=ROSBAGS), (160, 120)).rectifier is not None
    li.distortion_model = "fisheye_unknown"
    with pytest.raises(CameraInfoError, match="left camera_info distortion model 'fisheye_unknown' is not supported"):
        auto.get(li, ri, (160, 120))


# --- the pipeline's guards ------------------------------------------------------------------------
def test_tiny_images_give_no_output_instead_of_confident_garbage():
    """Issue 15: a 16x16 pair (true disparity 4.32) gave 0.03-38.6 px, all valid; now the model's
    minimum input size (ModelMeta.min_size, measured) refuses it."""
    est = build_estimator("student", device="cpu")
    proc = StereoFrameProcessor(est, ProcessingSettings())
    for w, h in ((16, 16), (1, 1), (40, 30)):
        scene = make_scene(w, h, "plane", 4.32)
        with pytest.raises(InputTooSmallError, match=rf"{w}x{h} images .* smaller than the minimum input of "
                                                     r"student, 48x32: no output"):
            proc.process(scene.left, scene.right, scene.camera)
    ok = make_scene(96, 64, "plane", 4.32)
    assert np.nanmedian(proc.process(ok.left, ok.right, ok.camera).disparity[:, 8:]) == pytest.approx(4.32, abs=0.5)
    # and at a larger inference scale the same small pair is accepted
    up = StereoFrameProcessor(est, ProcessingSettings(inference_scale=2.0))
    up.process(make_scene(40, 30, "plane", 4.0).left, make_scene(40, 30, "plane", 4.0).right,
               make_scene(40, 30, "plane", 4.0).camera)


def test_disparities_pointing_outside_the_right_image_are_invalid_and_the_window_says_so():
    from madis_ros.messages import make_disparity_image

    est = build_estimator("student", device="cpu")
    scene = make_scene(160, 96, "plane", 24.0)
    res = StereoFrameProcessor(est, ProcessingSettings()).process(scene.left, scene.right, scene.camera)
    d = res.disparity
    u = np.arange(d.shape[1])[None, :]
    assert not np.any(d > u + 0.5)                      # no pixel points left of the right image
    assert np.isnan(d[:, :20]).mean() > 0.9             # the first ~24 columns have no match
    assert np.isfinite(d[:, 40:]).all()                 # the rest stays dense
    msg = make_disparity_image(d, res.camera, _header(), res.min_disparity, res.max_disparity, res.delta_d)
    assert msg.valid_window.x_offset >= 15 and msg.valid_window.width <= 160 - 15  # not the whole image


def test_12_bit_mono16_is_scaled_to_the_full_range():
    """Issue 15: 12-bit data in mono16 gave a nearly black cloud (colour = value >> 8);
    mono16_bits (or the measured bit depth) scales it to 16 bits first."""
    scene = make_scene(160, 96, "plane", 12.0)
    cam = scene.camera
    to12 = lambda rgb: (rgb.mean(axis=2) * 16).astype(np.uint16)  # noqa: E731  (0..4080: 12 bits)
    left, right = to12(scene.left), to12(scene.right)
    sgbm = build_estimator("sgbm", max_disparity=32)
    raw = StereoFrameProcessor(sgbm, ProcessingSettings(mono16_bits=16)).process(left, right, cam)
    for bits in (12, 0):  # given, and measured
        res = StereoFrameProcessor(sgbm, ProcessingSettings(mono16_bits=bits)).process(left, right, cam)
        assert res.colors[..., 0].mean() > 100 > raw.colors[..., 0].mean(), bits  # the cloud is not black
        inner = res.disparity[10:-10, 40:-10]
        assert np.nanmean(np.abs(inner - 12.0) < 0.5) > 0.9, bits


def _header():
    from std_msgs.msg import Header

    return Header(frame_id="l")


def test_stereo_camera_of_a_rectified_pair_comes_from_the_projections():
    cam = StereoCamera(320, 240, 300.0, 300.0, 159.5, 119.5, 0.1)
    pl, pr = cam.projection_matrices()
    assert StereoCamera.from_projection(pl, pr, 320, 240) == cam
