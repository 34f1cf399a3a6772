"""OpenCV StereoSGBM: the classical baseline every learned model must beat."""
from __future__ import annotations

import time

import cv2
import numpy as np

from madis_core.estimator import StereoBackend, StereoResult, register_backend, to_uint8_gray

_MODES = {"sgbm": cv2.STEREO_SGBM_MODE_SGBM, "hh": cv2.STEREO_SGBM_MODE_HH,
          "3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY, "hh4": cv2.STEREO_SGBM_MODE_HH4}


class SGBMBackend(StereoBackend):
    """StereoSGBM with the parameters exposed. Holes (no match) are NaN."""

    delta_d = 1.0 / 16.0

    def __init__(self, num_disparities: int = 128, block_size: int = 5, mode: str = "sgbm",
                 min_disparity: int = 0, p1: int | None = None, p2: int | None = None,
                 uniqueness_ratio: int = 10, speckle_window_size: int = 100, speckle_range: int = 2,
                 disp12_max_diff: int = 1, pre_filter_cap: int = 63, device: str = "cpu", **unused):
        if unused:
            raise TypeError(f"sgbm: unknown parameters {sorted(unused)}")
        if num_disparities <= 0 or num_disparities % 16:
            raise ValueError(f"sgbm: num_disparities must be a positive multiple of 16, got {num_disparities}")
        if block_size < 1 or block_size % 2 == 0:
            raise ValueError(f"sgbm: block_size must be odd and >= 1, got {block_size}")
        if mode not in _MODES:
            raise ValueError(f"sgbm: mode must be one of {sorted(_MODES)}, got {mode!r}")
        self.name = "sgbm" if mode == "sgbm" else f"sgbm-{mode}"
        self.device = "cpu"  # OpenCV's SGBM runs on the CPU whatever was asked
        self.min_disparity = float(min_disparity)
        self.max_disparity = float(min_disparity + num_disparities - 1)
        self._sgbm = cv2.StereoSGBM_create(
            minDisparity=min_disparity, numDisparities=num_disparities, blockSize=block_size,
            P1=p1 if p1 is not None else 8 * block_size * block_size,
            P2=p2 if p2 is not None else 32 * block_size * block_size,
            disp12MaxDiff=disp12_max_diff, preFilterCap=pre_filter_cap, uniquenessRatio=uniqueness_ratio,
            speckleWindowSize=speckle_window_size, speckleRange=speckle_range, mode=_MODES[mode])

    def predict_checked(self, left: np.ndarray, right: np.ndarray) -> StereoResult:
        t0 = time.perf_counter()
        raw = self._sgbm.compute(to_uint8_gray(left), to_uint8_gray(right))
        disp = raw.astype(np.float32) / 16.0
        disp[raw < self.min_disparity * 16] = np.nan  # OpenCV marks holes with (minDisparity - 1) * 16
        disp[disp <= 0] = np.nan if self.min_disparity >= 0 else disp[disp <= 0]
        return StereoResult(disp, None, {"inference": (time.perf_counter() - t0) * 1e3})


@register_backend("sgbm")
def _sgbm(**kwargs) -> SGBMBackend:
    return SGBMBackend(**kwargs)


@register_backend("sgbm-3way")
def _sgbm_3way(**kwargs) -> SGBMBackend:
    kwargs.setdefault("mode", "3way")
    return SGBMBackend(**kwargs)
