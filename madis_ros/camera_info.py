"""A left/right sensor_msgs/CameraInfo pair -> ``madis_core.camera.StereoCamera``, validated.

Public API (stable; the node and the bag tools use it):

    stereo_camera_from_infos(left_info, right_info, image_size=None) -> StereoCamera
        Uses the rectified projection matrices P (as stereo_image_proc does):
        fx = P_l[0,0], fy = P_l[1,1], cx = P_l[0,2], cy = P_l[1,2],
        baseline = (P_l[0,3] - P_r[0,3]) / P_r[0,0]   (metres; P_l[0,3] is 0 for the usual
        left-reference rig, so this is -P_r[0,3]/P_r[0,0] as in ros-conventions.md),
        doffs = P_r[0,2] - P_l[0,2].
        ``image_size=(width, height)`` checks the infos against the images.
    calibration_from_info(info, side, image_size=None) -> madis_core.rectify.CameraCalibration (K, D, R, P, model)
    CameraInfoError (ValueError): every refusal; the text names the field and value.

Why its own module: a camera_info with a zero, negative or NaN focal length or
baseline otherwise produces inf/NaN depth silently; here it becomes a clear error
the node turns into a rate-limited warning and a per-reason drop counter. Duck-typed
on ``.p`` (or ``.P``), ``.width``, ``.height``, so rosbags' messages work as well.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from madis_core.camera import StereoCamera
from madis_core.rectify import CameraCalibration


class CameraInfoError(ValueError):
    """A camera_info pair that does not describe a usable rectified stereo camera."""


def _projection(info: Any, side: str) -> np.ndarray:
    p = getattr(info, "p", None)
    if p is None:
        p = getattr(info, "P", None)  # ROS 1 style field name
    if p is None:
        raise CameraInfoError(f"{side} camera_info has no projection matrix P")
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if p.size != 12:
        raise CameraInfoError(f"{side} camera_info P has {p.size} elements, expected 12")
    return p.reshape(3, 4)


def _positive(value: float, what: str) -> float:
    if not np.isfinite(value):
        raise CameraInfoError(f"{what} is {value} (NaN or inf); the camera_info is not a usable calibration")
    if value <= 0:
        raise CameraInfoError(f"{what} is {value:g}, must be > 0; is the camera calibrated and rectified?")
    return float(value)


def stereo_camera_from_infos(left_info: Any, right_info: Any,
                             image_size: Optional[Tuple[int, int]] = None) -> StereoCamera:
    """Build the validated stereo camera from a rectified CameraInfo pair (see module doc)."""
    pl, pr = _projection(left_info, "left"), _projection(right_info, "right")
    for side, p in (("left", pl), ("right", pr)):
        if not np.all(np.isfinite(p)):
            raise CameraInfoError(f"{side} camera_info P contains NaN or inf: {p.reshape(-1).tolist()}")
    fx = _positive(pl[0, 0], "left camera_info focal length fx = P[0,0]")
    fy = _positive(pl[1, 1], "left camera_info focal length fy = P[1,1]")
    fx_r = _positive(pr[0, 0], "right camera_info focal length fx = P[0,0]")
    if abs(fx_r - fx) > 1e-3 * fx:
        raise CameraInfoError(f"left and right focal lengths differ ({fx:g} vs {fx_r:g}); the pair is not rectified together")
    baseline = (pl[0, 3] - pr[0, 3]) / fx_r
    if not baseline > 0:
        raise CameraInfoError(
            f"baseline from camera_info is {baseline:g} m (right P[0,3] = {pr[0, 3]:g}, expected -fx * baseline < 0); "
            "are left and right swapped, or is the right camera_info missing its Tx?")
    sizes = []
    for side, info in (("left", left_info), ("right", right_info)):
        w, h = int(getattr(info, "width", 0) or 0), int(getattr(info, "height", 0) or 0)
        sizes.append((w, h))
    if sizes[0] != sizes[1] and all(s != (0, 0) for s in sizes):
        raise CameraInfoError(f"left and right camera_info sizes differ: {sizes[0][0]}x{sizes[0][1]} vs {sizes[1][0]}x{sizes[1][1]}")
    width, height = sizes[0] if sizes[0] != (0, 0) else sizes[1]
    if image_size is not None:
        iw, ih = int(image_size[0]), int(image_size[1])
        if (width, height) == (0, 0):
            width, height = iw, ih  # some drivers leave the size empty
        elif (width, height) != (iw, ih):
            raise CameraInfoError(f"camera_info is for {width}x{height} images but the images are {iw}x{ih}; "
                                  "scale the camera_info with the images (e.g. image_proc's resize)")
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"camera_info image size is {width}x{height}; give image_size or fill width/height")
    return StereoCamera(width=width, height=height, fx=fx, fy=fy, cx=float(pl[0, 2]), cy=float(pl[1, 2]),
                        baseline=float(baseline), doffs=float(pr[0, 2] - pl[0, 2]))


def _field(info: Any, name: str) -> Any:
    value = getattr(info, name, None)
    return getattr(info, name.upper(), None) if value is None else value  # ROS 1 style names: K, D, R, P


def calibration_from_info(info: Any, side: str = "left",
                          image_size: Optional[Tuple[int, int]] = None) -> CameraCalibration:
    """One camera's calibration (for rectification) from its CameraInfo; CameraInfoError names the
    problem (unsupported distortion model, wrong array sizes, NaN). An empty width/height takes
    ``image_size`` (w, h)."""
    w, h = int(getattr(info, "width", 0) or 0), int(getattr(info, "height", 0) or 0)
    if (w, h) == (0, 0) and image_size is not None:
        w, h = int(image_size[0]), int(image_size[1])
    try:
        return CameraCalibration.from_arrays(w, h, _field(info, "k"), _field(info, "d"), _field(info, "r"),
                                             _field(info, "p"), str(getattr(info, "distortion_model", "") or ""))
    except ValueError as e:
        raise CameraInfoError(f"{side} camera_info {e}") from None
