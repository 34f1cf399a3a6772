"""The Middlebury 2014 "Motorcycle" pair that scikit-image ships: the one real stereo
pair with ground truth available offline, so the project's real-image benchmark.

scikit-image stores it downscaled 4x from the full-resolution scene (2964 x 2000,
``downscale_local_mean``) as 741 x 500. Its docstring gives the calibration divided
by 4, which matches the Middlebury ``Motorcycle-perfect/calib.txt``
(cam0 = [3979.911 0 1244.772; 0 3979.911 1019.507; 0 0 1], cam1 cx = 1369.115,
doffs = 124.343, baseline = 193.001 mm, ndisp = 270):

    f = 994.978 px, cx = 311.193, cy = 254.877, doffs = 31.086 px, baseline = 0.193001 m

(With a pixel-centre convention, 4x block averaging would put cx/cy 0.375 px lower;
doffs, a difference of two cx, is unaffected. We keep the published values.)
Pixels without ground truth are stored as +inf; they become NaN here.
"""
from __future__ import annotations

import functools

import numpy as np

from madis_core.camera import StereoCamera
from madis_core.data.sample import InMemoryDataset, Sample, make_sample

MOTORCYCLE_CAMERA = StereoCamera(width=741, height=500, fx=994.978, fy=994.978, cx=311.193, cy=254.877,
                                 baseline=0.193001, doffs=31.086)
#: Middlebury ndisp = 270 at full resolution
MOTORCYCLE_MAX_DISPARITY = 270 / 4


@functools.lru_cache(maxsize=1)
def _motorcycle_arrays():
    from skimage.data import stereo_motorcycle

    left, right, disp = stereo_motorcycle()
    return left, right, disp


def load_motorcycle() -> Sample:
    """Motorcycle as a sample dict (left, right uint8 500x741x3; disparity float32, NaN
    where unknown; valid; camera; name "motorcycle")."""
    left, right, disp = _motorcycle_arrays()
    d = np.array(disp, dtype=np.float32)
    d[~np.isfinite(d)] = np.nan
    return make_sample(left.copy(), right.copy(), d, "motorcycle", camera=MOTORCYCLE_CAMERA)


def motorcycle_dataset() -> InMemoryDataset:
    return InMemoryDataset("motorcycle", [load_motorcycle()], max_disparity=MOTORCYCLE_MAX_DISPARITY)
