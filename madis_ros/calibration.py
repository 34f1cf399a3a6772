"""What a camera_info pair means for processing, built once per calibration and cached (no ROS):
the rectified stereo camera, and rectification maps when the images are raw.

    cache = CalibrationCache(rectify="auto")
    cal = cache.get(left_info, right_info, image_size=(w, h))   # CameraInfoError if unusable
    cal.camera, cal.rectifier, cal.raw, cal.first_use

``rectify``: ``auto`` rectifies when the camera_info says the images are raw (non-zero
distortion D or a rotation R that is not the identity), ``true`` always remaps with K, D,
R, P, ``false`` never (the images are taken as rectified whatever camera_info says).
``first_use`` is True the first time a calibration is seen, so callers say once what they do.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from madis_core.camera import StereoCamera
from madis_core.rectify import StereoRectifier
from madis_ros.camera_info import CameraInfoError, calibration_from_info, stereo_camera_from_infos

RECTIFY_MODES = ("auto", "true", "false")


@dataclass
class StereoCalibration:
    camera: StereoCamera                 # the rectified pair (from the projection matrices P)
    rectifier: Optional[StereoRectifier]  # None: the images are used as they are
    raw: bool                            # camera_info says the images are raw (D or R)
    describe: str                        # what camera_info says, for the log
    first_use: bool = False


class CalibrationCache:
    def __init__(self, rectify: str = "auto", keep: int = 4):
        """``rectify``: one of RECTIFY_MODES; ``keep``: calibrations remembered (they rarely change)."""
        if rectify not in RECTIFY_MODES:
            raise ValueError(f"rectify must be one of {RECTIFY_MODES}, got {rectify!r}")
        self.rectify, self.keep = rectify, int(keep)
        self._cache: "OrderedDict[Tuple, StereoCalibration]" = OrderedDict()

    def get(self, left_info: Any, right_info: Any, image_size: Tuple[int, int]) -> StereoCalibration:
        cams = calibration_from_info(left_info, "left", image_size), calibration_from_info(right_info, "right", image_size)
        key = (cams[0].key(), cams[1].key(), tuple(image_size))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            hit.first_use = False
            return hit
        camera = stereo_camera_from_infos(left_info, right_info, image_size)  # validates P and the sizes
        raw = not (cams[0].is_rectified() and cams[1].is_rectified())
        rectifier = None
        if self.rectify == "true" or (self.rectify == "auto" and raw):
            try:
                rectifier = StereoRectifier(*cams)
            except ValueError as e:
                raise CameraInfoError(str(e)) from None
        describe = f"left {cams[0].describe()}; right {cams[1].describe()}"
        cal = StereoCalibration(camera, rectifier, raw, describe, first_use=True)
        self._cache[key] = cal
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return cal
