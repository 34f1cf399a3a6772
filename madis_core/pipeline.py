"""The per-frame pipeline: a stereo pair in; disparity, depth, points, colours and confidence out.

Used by the ROS node, ``madis-bag eval``, ``madis predict`` and the demo (through the node),
so every entry point produces the same numbers from the same pair.

    settings = ProcessingSettings(inference_scale=0.5, publish_resolution="camera")
    proc = StereoFrameProcessor(estimator, settings)
    out = proc.process(left, right, camera)     # numpy images + StereoCamera (None: disparity only)
    out.disparity, out.depth, out.points, out.colors, out.confidence, out.camera, out.timings_ms

Public API (stable):
    ProcessingSettings   what to compute and at which resolution (validated in __post_init__)
    InputTooSmallError   the pair is smaller than the model's minimum input (its ModelMeta)
    StereoFrameProcessor(estimator, settings).process(left, right, camera, compute_points=None) -> FrameResult
    FrameResult          arrays at the output resolution plus the camera that describes them
    inference_size(width, height, settings) -> (w, h)
    rgb8_for_colour(img) -> uint8 HxWx3 (mono replicated, 16-bit shifted)

Why one place: the resolution bookkeeping is easy to get wrong. Images are resized to
the inference size, the camera is scaled with them (``StereoCamera.scaled``: fx, cx,
doffs times sx; fy, cy times sy), the model runs, pixels under the confidence
threshold or above ``max_disparity`` are invalidated, and so are disparities that point
outside the right image (``u - d < -0.5``: no match can be there), and if outputs are wanted at
camera resolution the disparity is resized back and multiplied by W/w (disparities
scale with x), so depth computed with the original camera is unchanged. Invalid is
NaN throughout; ``min_depth``/``max_depth`` invalidate depth and points (not the
disparity, which keeps the model's raw answer).

Guards: an inference size below the model's ``meta.min_size`` raises InputTooSmallError
(no output rather than confident garbage). 16-bit images holding fewer bits (12-bit
sensors in mono16) are scaled to the full range before the model and the colours:
``mono16_bits`` (8..16), or 0 to measure it (the highest bit seen so far).

Speed: everything after the forward is whole-array numpy/OpenCV work (points interleaved
by one ``cv2.merge`` and computed only for the kept, decimated pixels); the node's overhead
budget is 10 ms per 640x480 frame (benchmarks/node_latency.py --overhead-only).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from madis_core.camera import StereoCamera

PUBLISH_RESOLUTIONS = ("camera", "inference")


class InputTooSmallError(ValueError):
    """The pair (at the inference size) is smaller than the model's minimum input."""


@dataclass
class ProcessingSettings:
    #: resize factor applied to the camera images before inference (ignored when
    #: inference_width/height are set)
    inference_scale: float = 1.0
    #: explicit inference size in pixels; 0 = use inference_scale. Both or neither.
    inference_width: int = 0
    inference_height: int = 0
    #: "camera": outputs at the input images' size; "inference": at the model's size
    publish_resolution: str = "camera"
    #: pixels whose confidence is below this become invalid (needs a model with confidence)
    confidence_threshold: float = 0.0
    #: disparities above this (inference pixels) become invalid; 0 = no limit
    max_disparity: float = 0.0
    #: depth range kept in depth and points (metres); 0 = no limit
    min_depth: float = 0.0
    max_depth: float = 0.0
    compute_depth: bool = True
    compute_points: bool = True
    #: keep every n-th row and column of the cloud
    cloud_decimation: int = 1
    #: organized (h x w with NaN) or unorganized (finite points only, 1 x N)
    cloud_organized: bool = True
    cloud_color: bool = True
    #: significant bits of 16-bit images (12 for most 12-bit sensors); 0 = measured; 16 = as they are
    mono16_bits: int = 0

    def __post_init__(self):
        if not (math.isfinite(self.inference_scale) and 0 < self.inference_scale <= 4):
            raise ValueError(f"inference_scale must be in (0, 4], got {self.inference_scale}")
        if (self.inference_width > 0) != (self.inference_height > 0) or self.inference_width < 0 or self.inference_height < 0:
            raise ValueError("inference_width and inference_height must both be > 0 (explicit size) or both 0 "
                             f"(use inference_scale), got {self.inference_width}x{self.inference_height}")
        if self.publish_resolution not in PUBLISH_RESOLUTIONS:
            raise ValueError(f"publish_resolution must be one of {PUBLISH_RESOLUTIONS}, got {self.publish_resolution!r}")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"confidence_threshold must be in [0, 1], got {self.confidence_threshold}")
        if not self.max_disparity >= 0:
            raise ValueError(f"max_disparity must be >= 0 (0 = the model's range), got {self.max_disparity}")
        if not (self.min_depth >= 0 and self.max_depth >= 0):
            raise ValueError(f"min_depth and max_depth must be >= 0 (0 = no limit), got {self.min_depth}, {self.max_depth}")
        if self.max_depth and self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth ({self.min_depth}) must be < max_depth ({self.max_depth})")
        if int(self.cloud_decimation) < 1:
            raise ValueError(f"cloud_decimation must be >= 1, got {self.cloud_decimation}")
        if not (self.mono16_bits == 0 or 8 <= self.mono16_bits <= 16):
            raise ValueError(f"mono16_bits must be 0 (measured) or 8..16, got {self.mono16_bits}")


@dataclass
class FrameResult:
    #: float32 HxW pixels at the output resolution, NaN invalid
    disparity: np.ndarray
    #: camera describing the output resolution (use it for DisparityImage f/t and depth); None without one
    camera: Optional[StereoCamera]
    #: camera at the inference resolution
    inference_camera: Optional[StereoCamera]
    #: float32 HxW metres, NaN invalid (None unless compute_depth)
    depth: Optional[np.ndarray] = None
    #: float32 hxwx3 (organized, decimated) or 1xNx3 (unorganized), left optical frame
    points: Optional[np.ndarray] = None
    #: uint8 RGB, same leading shape as points (None unless cloud_color)
    colors: Optional[np.ndarray] = None
    #: float32 HxW in [0, 1] at the output resolution, or None (model without confidence)
    confidence: Optional[np.ndarray] = None
    #: model disparity range and step in output pixels (DisparityImage min/max/delta_d)
    min_disparity: float = 0.0
    max_disparity: float = 0.0
    delta_d: float = 1.0 / 16.0
    timings_ms: Dict[str, float] = field(default_factory=dict)


def inference_size(width: int, height: int, settings: ProcessingSettings) -> Tuple[int, int]:
    """The (w, h) the model runs at for camera images of width x height."""
    if settings.inference_width > 0:
        return int(settings.inference_width), int(settings.inference_height)
    s = float(settings.inference_scale)
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def rgb8_for_colour(img: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 RGB for colouring points: mono replicated, 16-bit reduced to 8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_GRAY2RGB)  # ~10x faster than np.repeat
    return img


def _points(camera: StereoCamera, depth: np.ndarray, k: int) -> np.ndarray:
    """``camera.depth_to_points(depth)[::k, ::k]``, bit for bit, computed only on the kept
    pixels and interleaved by one cv2.merge instead of three strided numpy writes."""
    h, w = depth.shape
    u = ((np.arange(w, dtype=np.float32) - np.float32(camera.cx)) / np.float32(camera.fx))[::k]
    v = ((np.arange(h, dtype=np.float32) - np.float32(camera.cy)) / np.float32(camera.fy))[::k]
    z = np.ascontiguousarray(depth[::k, ::k], dtype=np.float32)
    return cv2.merge([z * u[None, :], z * v[:, None], z])


def _resize(img: np.ndarray, w: int, h: int, interpolation: int) -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    return cv2.resize(img, (w, h), interpolation=interpolation)


def outside_right_image(disparity: np.ndarray) -> np.ndarray:
    """Pixels whose disparity points left of the right image's first column (u - d < -0.5)."""
    u = np.arange(disparity.shape[1], dtype=np.float32) + np.float32(0.5)
    with np.errstate(invalid="ignore"):
        return disparity > u[None, :]


class StereoFrameProcessor:
    """Runs one estimator over stereo pairs with the resolution and validity rules above."""

    def __init__(self, estimator: Any, settings: Optional[ProcessingSettings] = None):
        """``estimator``: a StereoEstimator (its ``meta`` gives range, step and minimum size)."""
        self.estimator = estimator
        self.settings = settings or ProcessingSettings()
        self.bits_seen = 8  # highest significant bit of the 16-bit images so far (mono16_bits 0)

    def reset(self) -> None:
        """Forget what was measured from earlier frames (a new stream, e.g. a bag that loops)."""
        self.bits_seen = 8

    def _full_range(self, left: np.ndarray, right: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """16-bit images holding fewer significant bits, shifted to the full 16-bit range."""
        bits = self.settings.mono16_bits
        if not bits:
            peak = int(max(left.max(), right.max()))
            self.bits_seen = max(self.bits_seen, peak.bit_length())
            bits = self.bits_seen
        if bits >= 16:
            return left, right
        top = np.uint16((1 << bits) - 1)
        return tuple(np.left_shift(np.minimum(img, top), np.uint16(16 - bits)) for img in (left, right))  # type: ignore

    def process(self, left: np.ndarray, right: np.ndarray, camera: Optional[StereoCamera],
                compute_points: Optional[bool] = None, valid: Optional[np.ndarray] = None) -> FrameResult:
        """One pair through the pipeline. ``camera`` None: disparity (and confidence) only.
        ``compute_points`` overrides the settings for this call (the node builds the cloud only
        while someone subscribes to it). ``valid``: HxW bool, the left pixels that hold image
        content (rectified images have empty borders); the others are invalid."""
        s = self.settings
        want_points = s.compute_points if compute_points is None else bool(compute_points)
        t0 = time.perf_counter()
        h, w = left.shape[:2]
        if right.shape[:2] != (h, w):
            raise ValueError(f"left and right sizes differ: {w}x{h} vs {right.shape[1]}x{right.shape[0]}")
        if camera is not None and (camera.width, camera.height) != (w, h):
            raise ValueError(f"camera is for {camera.width}x{camera.height} images but the images are {w}x{h}")
        wi, hi = inference_size(w, h, s)
        meta = self.estimator.meta
        mh, mw = meta.min_size
        if hi < mh or wi < mw:
            raise InputTooSmallError(f"{w}x{h} images (inference {wi}x{hi}) are smaller than the minimum input of "
                                     f"{self.estimator.name}, {mw}x{mh}: no output (its result would be meaningless); "
                                     "use larger images or a larger inference size")
        if left.dtype == np.uint16:
            left, right = self._full_range(left, right)
        down = wi * hi < w * h
        interp = cv2.INTER_AREA if down else cv2.INTER_LINEAR
        left_i, right_i = _resize(left, wi, hi, interp), _resize(right, wi, hi, interp)
        cam_i = camera if camera is None or (wi, hi) == (w, h) else camera.scaled(wi, hi)
        t1 = time.perf_counter()

        res = self.estimator.predict(left_i, right_i)
        t2 = time.perf_counter()

        disp = res.disparity
        conf = res.confidence
        if conf is not None and s.confidence_threshold > 0:
            disp = np.where(conf >= s.confidence_threshold, disp, np.float32(np.nan)).astype(np.float32, copy=False)
        if s.max_disparity > 0:
            with np.errstate(invalid="ignore"):
                disp = np.where(disp <= s.max_disparity, disp, np.float32(np.nan)).astype(np.float32, copy=False)
        bad = outside_right_image(disp)
        if valid is not None:
            bad |= ~_resize(valid.view(np.uint8), wi, hi, cv2.INTER_NEAREST).astype(bool)
        disp = np.where(bad, np.float32(np.nan), disp)

        if s.publish_resolution == "camera" and (wi, hi) != (w, h):
            sx = w / wi
            # Linear interpolation spreads NaN to the neighbours of holes: a conservative edge.
            disp = (_resize(disp, w, h, cv2.INTER_LINEAR) * np.float32(sx)).astype(np.float32)
            if conf is not None:
                conf = np.clip(_resize(conf, w, h, cv2.INTER_LINEAR), 0.0, 1.0).astype(np.float32)
            cam_out, colour_src = camera, left
        else:
            sx = 1.0
            cam_out, colour_src = cam_i, left_i
        max_d = min(s.max_disparity, meta.max_disparity) if s.max_disparity else meta.max_disparity
        out = FrameResult(disparity=np.ascontiguousarray(disp, dtype=np.float32), camera=cam_out,
                          inference_camera=cam_i, confidence=conf, min_disparity=float(meta.min_disparity) * sx,
                          max_disparity=float(max_d) * sx, delta_d=float(meta.delta_d) * sx)

        if cam_out is not None and (s.compute_depth or want_points):
            depth = cam_out.disparity_to_depth(out.disparity)
            if s.min_depth > 0 or s.max_depth > 0:
                lo = s.min_depth if s.min_depth > 0 else 0.0
                hi = s.max_depth if s.max_depth > 0 else np.inf
                with np.errstate(invalid="ignore"):
                    depth[(depth < lo) | (depth > hi)] = np.nan
            if s.compute_depth:
                out.depth = depth
            if want_points:
                k = int(s.cloud_decimation)
                pts = _points(cam_out, depth, k)
                cols = rgb8_for_colour(colour_src[::k, ::k]) if s.cloud_color else None
                if not s.cloud_organized:
                    keep = np.isfinite(pts[..., 2])
                    pts = pts[keep][None]
                    cols = cols[keep][None] if cols is not None else None
                out.points = np.ascontiguousarray(pts)
                out.colors = None if cols is None else np.ascontiguousarray(cols)
        t3 = time.perf_counter()
        out.timings_ms = {"resize": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                          "postprocess": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        for k, v in (res.timings_ms or {}).items():
            out.timings_ms.setdefault(f"model_{k}", float(v))
        return out
