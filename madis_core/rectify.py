"""Rectification of raw stereo images from their calibration (the ROS CameraInfo convention, no ROS).

    cal_l = CameraCalibration.from_arrays(width, height, K, D, R, P, "plumb_bob")
    rect = StereoRectifier(cal_l, cal_r)          # maps built once (OpenCV), reuse per frame
    left_rect, right_rect = rect(left_raw, right_raw)

Each camera is ``K`` (3x3 intrinsics of the raw image), ``D`` (distortion), ``R`` (3x3
rectifying rotation) and ``P`` (3x4 projection of the rectified image, the right one
carrying ``Tx = -fx * baseline``); the rectified image has the calibration's width and
height, and the rectified pair is described by the two ``P`` (``StereoCamera.from_projection``).
Distortion models: ``plumb_bob`` (k1 k2 p1 p2 k3), ``rational_polynomial`` (k1 k2 p1 p2 k3
k4 k5 k6), ``equidistant`` (fisheye k1 k2 k3 k4). A calibration with zero distortion and
R = I describes images that are already rectified (``is_rectified``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")
_MAX_COEFFS = {"plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}


@dataclass(frozen=True)
class CameraCalibration:
    width: int
    height: int
    K: np.ndarray  # 3x3
    D: np.ndarray  # distortion coefficients (model-dependent length)
    R: np.ndarray  # 3x3
    P: np.ndarray  # 3x4
    model: str = "plumb_bob"

    @classmethod
    def from_arrays(cls, width: int, height: int, K, D, R, P, model: str = "plumb_bob") -> "CameraCalibration":
        """Validated calibration; ValueError naming the field for anything unusable."""
        model = model or "plumb_bob"  # drivers that leave it empty mean plumb_bob (or no distortion)
        if model not in DISTORTION_MODELS:
            raise ValueError(f"distortion model {model!r} is not supported; supported: {', '.join(DISTORTION_MODELS)}")
        arrays = {}
        for name, value, shape in (("K", K, (3, 3)), ("R", R, (3, 3)), ("P", P, (3, 4))):
            a = np.asarray(value, dtype=np.float64).reshape(-1)
            if a.size != shape[0] * shape[1]:
                raise ValueError(f"{name} has {a.size} elements, expected {shape[0] * shape[1]}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} contains NaN or inf")
            arrays[name] = a.reshape(shape)
        d = np.asarray(D if D is not None else (), dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(d)):
            raise ValueError("D contains NaN or inf")
        if d.size > _MAX_COEFFS[model]:
            if np.any(d[_MAX_COEFFS[model]:] != 0):
                raise ValueError(f"{model} takes {_MAX_COEFFS[model]} distortion coefficients, got {d.size}")
            d = d[:_MAX_COEFFS[model]]
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"image size is {width}x{height}")
        return cls(int(width), int(height), arrays["K"], d, arrays["R"], arrays["P"], model)

    def distorted(self, atol: float = 1e-9) -> bool:
        return bool(np.any(np.abs(self.D) > atol))

    def rotated(self, atol: float = 1e-9) -> bool:
        return not np.allclose(self.R, np.eye(3), atol=atol, rtol=0)

    def is_rectified(self) -> bool:
        """No distortion and R = I: the images are rectified already (K may still differ from P)."""
        return not (self.distorted() or self.rotated())

    def describe(self) -> str:
        return (f"{self.model} D=[{', '.join(f'{v:.3g}' for v in self.D)}]" + (", R != I" if self.rotated() else ""))

    def key(self) -> Tuple:
        """Hashable identity of the calibration (the rectification maps depend on nothing else)."""
        return (self.width, self.height, self.model, self.K.tobytes(), self.D.tobytes(), self.R.tobytes(),
                self.P.tobytes())


def rectification_maps(cal: CameraCalibration) -> Tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (fixed point, CV_16SC2) from the raw image to the rectified one."""
    size = (cal.width, cal.height)
    new_k = np.ascontiguousarray(cal.P[:, :3])
    if cal.model == "equidistant":
        d = np.zeros(4) if cal.D.size == 0 else np.pad(cal.D, (0, 4 - cal.D.size))
        return cv2.fisheye.initUndistortRectifyMap(cal.K, d.reshape(4, 1), cal.R, new_k, size, cv2.CV_16SC2)
    return cv2.initUndistortRectifyMap(cal.K, cal.D if cal.D.size else None, cal.R, new_k, size, cv2.CV_16SC2)


def raw_image(cal: CameraCalibration, rectified: np.ndarray) -> np.ndarray:
    """The raw (distorted, unrotated) image whose rectification is ``rectified``: each raw pixel
    samples the rectified image where the calibration maps it (tests and simulated cameras)."""
    h, w = cal.height, cal.width
    uv = np.stack(np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)), -1).reshape(-1, 1, 2)
    new_p = np.ascontiguousarray(cal.P[:, :3])
    if cal.model == "equidistant":
        d = np.pad(cal.D, (0, 4 - cal.D.size)).reshape(4, 1)
        rect = cv2.fisheye.undistortPoints(uv, cal.K, d, R=cal.R, P=new_p)
    else:
        rect = cv2.undistortPoints(uv, cal.K, cal.D if cal.D.size else None, R=cal.R, P=new_p)
    m = rect.reshape(h, w, 2).astype(np.float32)
    return cv2.remap(rectified, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


class StereoRectifier:
    """Rectification maps of both cameras, built once; calling it rectifies a raw pair."""

    def __init__(self, left: CameraCalibration, right: CameraCalibration):
        """``left``/``right``: the calibrations of the raw images (same width and height)."""
        if (left.width, left.height) != (right.width, right.height):
            raise ValueError(f"left and right calibrations are for {left.width}x{left.height} and "
                             f"{right.width}x{right.height} images")
        self.size = (left.width, left.height)
        self._maps = (rectification_maps(left), rectification_maps(right))
        #: HxW bool per camera: rectified pixels that see the raw image (the rest is an empty border)
        self.valid = tuple(self._remap(np.full((left.height, left.width), 255, np.uint8), m) > 127 for m in self._maps)

    @staticmethod
    def _remap(img: np.ndarray, maps) -> np.ndarray:
        return cv2.remap(img, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def __call__(self, left: np.ndarray, right: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        w, h = self.size
        if left.shape[:2] != (h, w) or right.shape[:2] != (h, w):
            raise ValueError(f"the calibration is for {w}x{h} images, the images are "
                             f"{left.shape[1]}x{left.shape[0]}")
        return self._remap(left, self._maps[0]), self._remap(right, self._maps[1])
