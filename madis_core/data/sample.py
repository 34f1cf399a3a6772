"""The sample dict every reader returns, and the lazy dataset base class.

A sample is a plain dict (cheap to build, easy to extend):

    left, right   HxWx3 uint8 (or uint16) RGB
    disparity     float32 HxW, pixels, left view, NaN where unknown
    valid         bool HxW (finite ground truth)
    noc           optional bool HxW: valid and visible in the right view
    camera        optional madis_core.camera.StereoCamera (when the format has calibration)
    name          str, unique within its dataset
    disparity_right  optional float32 HxW (formats that ship both views)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Dict, List, Optional

import numpy as np

Sample = Dict[str, Any]


def as_rgb(img: np.ndarray, what: str = "image") -> np.ndarray:
    """HxW grey or HxWx3/4 -> HxWx3 (uint8/uint16 kept)."""
    img = np.asarray(img)
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{what}: expected uint8 or uint16 pixels, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{what}: expected HxW or HxWx3, got shape {img.shape}")
    return np.ascontiguousarray(img)


def make_sample(left: np.ndarray, right: np.ndarray, disparity: Optional[np.ndarray], name: str,
                valid: Optional[np.ndarray] = None, noc: Optional[np.ndarray] = None, camera=None,
                **extra: Any) -> Sample:
    """Validate and normalise one sample. ``disparity=None`` (no ground truth) gives an
    all-NaN disparity and an all-False valid mask. Non-finite or negative disparities
    are invalid; ``valid`` (if given) further restricts."""
    left = as_rgb(left, f"{name}: left")
    right = as_rgb(right, f"{name}: right")
    if left.shape != right.shape or left.dtype != right.dtype:
        raise ValueError(f"{name}: left {left.shape}/{left.dtype} and right {right.shape}/{right.dtype} differ")
    h, w = left.shape[:2]
    if disparity is None:
        disp = np.full((h, w), np.nan, dtype=np.float32)
    else:
        disp = np.array(disparity, dtype=np.float32)
        if disp.ndim == 3:  # some tools write disparity as 3 equal channels
            disp = disp[:, :, 0]
        if disp.shape != (h, w):
            raise ValueError(f"{name}: disparity {disp.shape} does not match the images {(h, w)}")
    ok = np.isfinite(disp) & (disp >= 0)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (h, w):
            raise ValueError(f"{name}: valid mask {valid.shape} does not match the images {(h, w)}")
        ok &= valid
    disp[~ok] = np.nan
    sample: Sample = {"left": left, "right": right, "disparity": disp, "valid": ok, "name": name}
    if noc is not None:
        noc = np.asarray(noc, dtype=bool)
        if noc.shape != (h, w):
            raise ValueError(f"{name}: non-occluded mask {noc.shape} does not match the images {(h, w)}")
        sample["noc"] = noc & ok
    if camera is not None:
        if (camera.width, camera.height) != (w, h):
            camera = camera.scaled(w, h)
        sample["camera"] = camera
    for k, v in extra.items():
        if v is not None:
            sample[k] = v
    return sample


def lr_consistency_noc(disp_left: np.ndarray, disp_right: np.ndarray, tol: float = 1.0) -> np.ndarray:
    """Non-occluded mask of the left view from both views' disparities: the right
    view's disparity at ``x - d`` (nearest pixel) agrees within ``tol`` px."""
    h, w = disp_left.shape
    xs = np.arange(w, dtype=np.float32)[None, :]
    xr = np.rint(xs - np.nan_to_num(disp_left, nan=-1e6)).astype(np.int64)
    inside = (xr >= 0) & (xr < w) & np.isfinite(disp_left)
    rows = np.repeat(np.arange(h)[:, None], w, axis=1)
    dr = np.full((h, w), np.nan, dtype=np.float32)
    dr[inside] = disp_right[rows[inside], xr[inside]]
    with np.errstate(invalid="ignore"):
        return inside & (np.abs(dr - disp_left) <= tol)


class StereoDataset(Sequence):
    """A lazily loaded list of samples: ``entries`` describe the files, ``load`` reads one.

    ``max_disparity`` is the disparity range the format documents (for choosing a
    classical matcher's search range), or None when unknown."""

    def __init__(self, name: str, entries: List[Any], max_disparity: Optional[float] = None):
        self.name = name
        self.entries = list(entries)
        self.max_disparity = max_disparity

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} samples")
        return self.load(self.entries[index % n])

    def load(self, entry: Any) -> Sample:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} samples)"


class InMemoryDataset(StereoDataset):
    """Samples already in memory (the Motorcycle pair, the synthetic test set)."""

    def load(self, entry: Sample) -> Sample:
        return dict(entry)
