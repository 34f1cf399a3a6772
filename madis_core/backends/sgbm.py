"""OpenCV StereoSGBM: the classical baseline every learned model must beat.

Registry entries ``sgbm`` and ``sgbm-3way`` (``madis_core.models.classical``) run here;
``meta`` reports the search range actually configured."""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Optional

import cv2
import numpy as np

from madis_core.backends.base import BACKENDS, StereoBackend, StereoResult, to_uint8_gray
from madis_core.models.classical import SGBM_DEFAULT_DISPARITIES
from madis_core.models.registry import model_meta

_MODES = {"sgbm": cv2.STEREO_SGBM_MODE_SGBM, "hh": cv2.STEREO_SGBM_MODE_HH,
          "3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY, "hh4": cv2.STEREO_SGBM_MODE_HH4}


class SGBMBackend(StereoBackend):
    """StereoSGBM with the parameters exposed. Holes (no match) are NaN."""

    thread_library = "opencv"

    def __init__(self, num_disparities: Optional[int] = None, max_disparity: float = 0.0, block_size: int = 5,
                 mode: str = "sgbm",
                 min_disparity: int = 0, p1: int | None = None, p2: int | None = None,
                 uniqueness_ratio: int = 10, speckle_window_size: int = 100, speckle_range: int = 2,
                 disp12_max_diff: int = 1, pre_filter_cap: int = 63, device: str = "cpu", **unused):
        """OpenCV's StereoSGBM_create arguments in snake case (``p1``/``p2`` default to
        8 and 32 x block_size^2); ``mode`` one of sgbm, hh, 3way, hh4. The search range is
        ``num_disparities``, else ``max_disparity`` px rounded up to a multiple of 16, else 128.
        ``device`` is accepted and ignored (OpenCV's SGBM runs on the CPU)."""
        if num_disparities is None:
            num_disparities = (int(math.ceil(max_disparity / 16.0)) * 16 if max_disparity > 0
                               else SGBM_DEFAULT_DISPARITIES)
        if unused:
            raise TypeError(f"sgbm: unknown parameters {sorted(unused)}")
        if num_disparities <= 0 or num_disparities % 16:
            raise ValueError(f"sgbm: num_disparities must be a positive multiple of 16, got {num_disparities}")
        if block_size < 1 or block_size % 2 == 0:
            raise ValueError(f"sgbm: block_size must be odd and >= 1, got {block_size}")
        if mode not in _MODES:
            raise ValueError(f"sgbm: mode must be one of {sorted(_MODES)}, got {mode!r}")
        self.name = "sgbm" if mode == "sgbm" else f"sgbm-{mode}"
        self.device = "cpu"
        self.meta = replace(model_meta("sgbm"), min_disparity=float(min_disparity),
                            max_disparity=float(min_disparity + num_disparities - 1), backend_options={"mode": mode})
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
        disp[raw < self.meta.min_disparity * 16] = np.nan  # OpenCV marks holes with (minDisparity - 1) * 16
        if self.meta.min_disparity >= 0:
            disp[disp <= 0] = np.nan
        return StereoResult(disp, None, {"inference": (time.perf_counter() - t0) * 1e3})


@BACKENDS.decorator("sgbm")
def _sgbm(**kwargs) -> SGBMBackend:
    return SGBMBackend(**kwargs)
