"""One inference API over every stereo backend: classical (SGBM) and learned models.

    est = StereoEstimator.from_pretrained("sgbm")            # backend by name
    est = StereoEstimator.from_pretrained("student")         # shipped weights
    est = StereoEstimator.from_pretrained("run/best.safetensors", device="cuda")
    res = est.predict(left, right)   # numpy images: HxW or HxWx3 (RGB), uint8/uint16
    res.disparity   # float32 HxW, pixels, left view, NaN where invalid
    res.confidence  # float32 HxW in [0, 1], or None
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class StereoResult:
    disparity: np.ndarray
    confidence: Optional[np.ndarray] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)


class StereoBackend:
    """What every backend implements. ``predict_checked`` gets validated inputs."""

    name: str = "backend"
    min_disparity: float = 0.0
    max_disparity: float = 192.0
    #: smallest disparity step the backend resolves (1/16 for SGBM, small for regression)
    delta_d: float = 1.0 / 16.0
    device: str = "cpu"

    def predict_checked(self, left: np.ndarray, right: np.ndarray) -> StereoResult:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} (device={self.device}, max_disparity={self.max_disparity:g})"


_BACKENDS: Dict[str, Callable[..., StereoBackend]] = {}


def register_backend(name: str):
    """Register a backend factory ``f(**kwargs) -> StereoBackend`` under ``name``."""

    def decorator(factory: Callable[..., StereoBackend]) -> Callable[..., StereoBackend]:
        _BACKENDS[name] = factory
        return factory

    return decorator


def _load_backends() -> None:
    import madis_core.backends  # noqa: F401  (registers sgbm, torch, onnxruntime)


def list_backends() -> List[str]:
    _load_backends()
    return sorted(_BACKENDS)


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


class StereoEstimator:
    """Front end over one backend: input checks, timing, a stable result type."""

    def __init__(self, backend: StereoBackend, threads: Any = None):
        from madis_core.inference_threads import InferenceThreads  # thread policy: madis_core/runtime.py

        self.backend = backend
        self.threads = InferenceThreads.for_backend(backend, threads)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str = "auto",
        precision: str = "fp32",
        runtime: str = "torch",
        **kwargs: Any,
    ) -> "StereoEstimator":
        """Build an estimator from a backend name (``sgbm``), a model registry name with
        shipped weights (``student``), or a weights file path.

        ``random_init=True`` builds an untrained registry model (tests, benchmarks).
        ``threads``: CPU threads for inference, "auto" (default, ``madis_core.runtime``) or a count.
        Remaining keyword arguments go to the backend.
        """
        _load_backends()
        key = str(name_or_path)
        threads = kwargs.pop("threads", None)
        if key in _BACKENDS and key not in ("torch", "onnxruntime"):
            return cls(_BACKENDS[key](device=device, **kwargs), threads)
        if runtime not in ("torch", "onnxruntime"):
            raise ValueError(f"unknown runtime {runtime!r}; use 'torch' or 'onnxruntime'")
        if runtime not in _BACKENDS:
            raise ValueError(f"runtime {runtime!r} is not available in this install")
        if runtime == "onnxruntime":  # its session's thread count is fixed when it is made
            from madis_core.runtime import resolve_threads
            kwargs["threads"] = resolve_threads(threads)
        return cls(_BACKENDS[runtime](model=key, device=device, precision=precision, **kwargs), threads)

    # --- properties the node and evaluation use -------------------------------------
    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def min_disparity(self) -> float:
        return self.backend.min_disparity

    @property
    def max_disparity(self) -> float:
        return self.backend.max_disparity

    @property
    def delta_d(self) -> float:
        return self.backend.delta_d

    def predict(self, left: np.ndarray, right: np.ndarray) -> StereoResult:
        left, right = check_pair(left, right)
        t0 = time.perf_counter()
        with self.threads.run(left.shape):
            res = self.backend.predict_checked(left, right)
        res.timings_ms.setdefault("total", (time.perf_counter() - t0) * 1e3)
        d = res.disparity
        if d.shape != left.shape[:2] or d.dtype != np.float32:
            raise RuntimeError(f"backend {self.name} returned disparity {d.shape}/{d.dtype}, expected {left.shape[:2]}/float32")
        return res

    def __repr__(self) -> str:
        return f"StereoEstimator({self.backend.describe()})"


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


def resolve_weights(name_or_path: str) -> Path | None:
    """A path that exists, or the shipped weights of a registry name; else None."""
    from madis_core.checkpoint import shipped_weights

    p = Path(name_or_path).expanduser()
    if p.suffix in (".safetensors", ".pt", ".pth", ".ckpt", ".onnx") or os.sep in str(name_or_path):
        return p
    return shipped_weights(str(name_or_path))
