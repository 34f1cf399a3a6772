"""Stereo camera geometry: round trips and a fronto-parallel plane."""
import numpy as np
import pytest

from madis_core.camera import StereoCamera

CAM = StereoCamera(width=64, height=48, fx=500.0, fy=480.0, cx=31.5, cy=23.5, baseline=0.12, doffs=3.0)


def test_points_disparity_points_round_trip():
    rng = np.random.default_rng(0)
    disp = rng.uniform(2.0, 60.0, size=(48, 64)).astype(np.float32)
    disp[5, 7] = np.nan
    pts = CAM.disparity_to_points(disp)
    back = CAM.points_to_disparity(pts)
    assert np.isnan(back[5, 7]) and np.all(np.isnan(pts[5, 7]))
    ok = np.isfinite(disp)
    np.testing.assert_allclose(back[ok], disp[ok], rtol=1e-5)
    # projecting the points back lands on their own pixels
    u, v, d = CAM.project(pts[ok].reshape(-1, 3))
    vv, uu = np.nonzero(ok)
    np.testing.assert_allclose(u, uu, atol=1e-3)
    np.testing.assert_allclose(v, vv, atol=1e-3)
    np.testing.assert_allclose(d, disp[ok], rtol=1e-5)


def test_fronto_parallel_plane_depth_within_one_percent():
    z = 2.5
    disp = np.full((48, 64), CAM.fx * CAM.baseline / z - CAM.doffs, dtype=np.float32)
    depth = CAM.disparity_to_depth(disp)
    assert np.all(np.abs(depth - z) / z < 0.01)
    pts = CAM.disparity_to_points(disp)
    assert np.allclose(pts[..., 2], z, rtol=1e-5)
    # x grows to the right, y downwards (optical frame)
    assert pts[24, 63, 0] > 0 > pts[24, 0, 0]
    assert pts[47, 32, 1] > 0 > pts[0, 32, 1]


def test_invalid_disparities_give_nan():
    disp = np.array([[0.0, -5.0, np.nan, np.inf]], dtype=np.float32)
    cam = StereoCamera(4, 1, 100.0, 100.0, 2.0, 0.0, 0.1, doffs=0.0)
    assert np.all(np.isnan(cam.disparity_to_depth(disp)))


def test_from_projection_matches_camera_info_convention():
    pl, pr = CAM.projection_matrices()
    assert pr[0, 3] == pytest.approx(-CAM.fx * CAM.baseline)
    cam = StereoCamera.from_projection(pl, pr, 64, 48)
    assert cam == CAM


def test_scaling_keeps_depth():
    disp = np.full((48, 64), 20.0, dtype=np.float32)
    depth_full = CAM.disparity_to_depth(disp)[0, 0]
    half = CAM.scaled(32, 24)
    assert half.fx == pytest.approx(250.0) and half.cy == pytest.approx(11.75) and half.doffs == pytest.approx(1.5)
    depth_half = half.disparity_to_depth(np.full((24, 32), 10.0, dtype=np.float32))[0, 0]
    assert depth_half == pytest.approx(depth_full, rel=1e-6)


@pytest.mark.parametrize("bad", [dict(fx=0.0), dict(baseline=-0.1), dict(fy=float("nan")), dict(cx=float("inf"))])
def test_bad_calibration_raises(bad):
    kw = dict(width=4, height=4, fx=1.0, fy=1.0, cx=0.0, cy=0.0, baseline=0.1)
    kw.update(bad)
    with pytest.raises(ValueError):
        StereoCamera(**kw)


def test_from_projection_rejects_zero_baseline():
    pl, pr = CAM.projection_matrices()
    pr[0, 3] = 0.0
    with pytest.raises(ValueError, match="baseline"):
        StereoCamera.from_projection(pl, pr, 64, 48)
