"""The backend contract: what every estimator backend implements and the helpers they share.

    class MyBackend(StereoBackend):
        def __init__(self, ..., device="auto"):
            self.name, self.device, self.meta = ..., ..., ModelMeta(...)
        thread_library = "torch"  # or "opencv", "none": whose thread count predict uses
        def predict_checked(self, left, right) -> StereoResult: ...

    @BACKENDS.decorator("mine")
    def _mine(**kwargs) -> MyBackend: return MyBackend(**kwargs)

A backend gets inputs that ``check_pair`` accepted (HxW or HxWx3 RGB, uint8/uint16, same
size and format on both sides) and returns float32 HxW disparity with NaN where it has
none. ``meta`` (``madis_core.models.ModelMeta``) describes what it outputs: disparity
range and step, confidence, minimum input size. This module imports no backend and is
imported by all of them and by ``madis_core.estimator``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np

from madis_core.models.registry import ModelMeta
from madis_core.registry import Registry


@dataclass
class StereoResult:
    disparity: np.ndarray
    confidence: Optional[np.ndarray] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)


class StereoBackend:
    """What every backend implements. ``predict_checked`` gets validated inputs."""

    name: str = "backend"
    device: str = "cpu"
    meta: ModelMeta
    #: which library's thread count governs ``predict_checked`` on the CPU, so the estimator
    #: can set it per call: "torch", "opencv", or "none" (the backend fixes its own count)
    thread_library: str = "torch"

    def predict_checked(self, left: np.ndarray, right: np.ndarray) -> StereoResult:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} (device={self.device}, max_disparity={self.meta.max_disparity:g})"

    def trainable_network(self) -> Optional[Any]:
        """The torch module inference runs, for online adaptation to copy and update in place;
        None for backends that cannot learn (SGBM, ONNX Runtime)."""
        return None


#: backend name -> factory ``f(**kwargs) -> StereoBackend`` (sgbm, torch, onnxruntime)
BACKENDS: Registry[Callable[..., StereoBackend]] = Registry("backend")


def check_image(img: Any, what: str) -> np.ndarray:
    """Validate one input image; returns it as a contiguous numpy array (HxW or HxWx3)."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{what} image must be a numpy array, got {type(img).__name__}")
    if img.size == 0:
        raise ValueError(f"{what} image is empty (shape {img.shape})")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"{what} image must be HxW or HxWx3, got shape {img.shape}")
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{what} image must be uint8 or uint16, got {img.dtype}")
    return np.ascontiguousarray(img)


def check_pair(left: Any, right: Any) -> tuple[np.ndarray, np.ndarray]:
    left = check_image(left, "left")
    right = check_image(right, "right")
    if left.shape[:2] != right.shape[:2]:
        raise ValueError(f"left and right sizes differ: {left.shape[:2]} vs {right.shape[:2]}")
    if left.ndim != right.ndim or left.dtype != right.dtype:
        raise ValueError(
            f"left and right formats differ: {left.shape}/{left.dtype} vs {right.shape}/{right.dtype}"
        )
    return left, right


def to_float_rgb(img: np.ndarray) -> np.ndarray:
    """uint8/uint16 HxW or HxWx3 -> float32 HxWx3 in [0, 1]."""
    scale = 255.0 if img.dtype == np.uint8 else 65535.0
    out = img.astype(np.float32) / scale
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return out


def to_uint8_gray(img: np.ndarray) -> np.ndarray:
    """uint8/uint16 HxW or HxWx3 (RGB) -> uint8 HxW."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 3:
        img = (img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114 + 0.5).astype(np.uint8)
    return img


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu`` (callers such as the node log the
    fallback); ``cuda[:N]`` without CUDA raises a clear error."""
    import torch

    device = (device or "auto").strip()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available (torch {torch.__version__}); use device 'cpu' or 'auto'")
        return device
    if device in ("cpu", "mps"):
        return device
    raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda[:N]")
