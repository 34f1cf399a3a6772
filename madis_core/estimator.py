"""One inference API over every stereo backend, and one function from a user's model string to it.

    est = build_estimator("sgbm")                        # classical registry entry
    est = build_estimator("student")                     # shipped weights
    est = build_estimator("run/best.safetensors", device="cuda", runtime="onnxruntime")
    res = est.predict(left, right)   # numpy images: HxW or HxWx3 (RGB), uint8/uint16
    res.disparity   # float32 HxW, pixels, left view, NaN where invalid
    res.confidence  # float32 HxW in [0, 1], or None
    est.meta        # madis_core.models.ModelMeta: range, step, confidence, minimum input size

The node, the bag tools, ``madis predict``/``evaluate`` and the benchmarks all call
``build_estimator``; ``StereoEstimator.from_pretrained`` is the same function.
"""
from __future__ import annotations

import os
import time
from typing import Any, List

import numpy as np

from madis_core.backends.base import BACKENDS, StereoBackend, StereoResult, check_pair
from madis_core.models import classical  # noqa: F401  (its entries: is_classical needs them, not torch)
from madis_core.models.registry import MODELS, ModelMeta, get_entry

RUNTIMES = ("torch", "onnxruntime")
#: the model every entry point uses when none is given (the ROS node, madis predict, the benchmarks):
#: the shipped distilled student (madis_core/weights/student.safetensors)
DEFAULT_MODEL = "student"


def default_model() -> str:
    """DEFAULT_MODEL when its weights are shipped in this install, else the classical ``sgbm``."""
    from madis_core.checkpoint import shipped_weights

    return DEFAULT_MODEL if shipped_weights(DEFAULT_MODEL) is not None else "sgbm"


def _backend(name: str):
    """The factory of backend ``name``, importing only its module (SGBM never loads torch, whose
    import and interpreter exit cost seconds on a busy CPU); KeyError when it is not installed."""
    if name not in BACKENDS:
        try:
            if name == "sgbm":
                from madis_core.backends import sgbm  # noqa: F401
            elif name == "torch":
                from madis_core.backends import torch_backend  # noqa: F401
            elif name == "onnxruntime":
                from madis_core.backends import onnx_backend  # noqa: F401
        except ImportError:  # pragma: no cover - onnxruntime is optional
            pass
    return BACKENDS.get(name)


def list_backends() -> List[str]:
    for name in ("sgbm", "torch", "onnxruntime"):
        try:
            _backend(name)
        except KeyError:  # pragma: no cover - not installed
            pass
    return BACKENDS.names()


def is_classical(model: Any) -> bool:
    """Whether a model string names a classical (not learned) registry entry, e.g. ``sgbm``."""
    return isinstance(model, str) and model in MODELS and not get_entry(model).meta.learned


def build_estimator(model: Any, device: str = "auto", precision: str = "fp32", runtime: str = "torch",
                    max_disparity: float = 0.0, random_init: bool = False, **options: Any) -> "StereoEstimator":
    """Build the estimator a user's ``model`` names.

    ``model``: a registry name (classical ``sgbm``/``sgbm-3way``, or a network with shipped
    weights such as ``student``), a weights file (``.safetensors``/``.pt``/``.onnx``) or a
    network built by the registry. ``runtime`` (torch or onnxruntime), ``precision`` and
    ``random_init`` (an untrained network, for tests and timing) apply to networks.
    ``max_disparity`` > 0 sets a classical method's search range (a network's range is its
    own; the frame pipeline invalidates disparities above a limit). ``options`` go to the
    backend (e.g. ``block_size`` for SGBM). ``threads``: CPU threads for inference, "auto"
    (default: affinity and cgroup quota, adapted to the load, ``madis_core.runtime``) or a count.
    """
    threads = options.pop("threads", None)
    if is_classical(model):
        meta = get_entry(model).meta
        opts = {**meta.backend_options, **options}
        if max_disparity > 0:  # classical backends take their search range as max_disparity
            opts.setdefault("max_disparity", float(max_disparity))
        return StereoEstimator(_backend(meta.backend)(device=device, **opts), threads)
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    try:
        factory = _backend(runtime)
    except KeyError:
        raise ValueError(f"runtime {runtime!r} is not available in this install") from None
    if random_init:
        options["random_init"] = True
    if runtime == "onnxruntime":  # its session's thread count is fixed when it is made
        from madis_core.runtime import resolve_threads
        options["threads"] = resolve_threads(threads)
    key = model if not isinstance(model, os.PathLike) else os.fspath(model)
    return StereoEstimator(factory(model=key, device=device, precision=precision, **options), threads)


class StereoEstimator:
    """Front end over one backend: input checks, timing, a stable result type."""

    def __init__(self, backend: StereoBackend, threads: Any = None):
        from madis_core.inference_threads import InferenceThreads  # thread policy: madis_core/runtime.py

        self.backend = backend
        self.threads = InferenceThreads.for_backend(backend, threads)

    @classmethod
    def from_pretrained(cls, name_or_path: Any, device: str = "auto", precision: str = "fp32",
                        runtime: str = "torch", **kwargs: Any) -> "StereoEstimator":
        """``build_estimator`` (kept as the library's documented entry point)."""
        return build_estimator(name_or_path, device=device, precision=precision, runtime=runtime, **kwargs)

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def meta(self) -> ModelMeta:
        return self.backend.meta

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
