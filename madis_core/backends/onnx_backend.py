"""onnxruntime backend: ``StereoEstimator.from_pretrained(x, runtime="onnxruntime")``.

``x`` is an ``.onnx`` file (as written by ``madis export``), or anything the torch
backend accepts (registry name with shipped weights, weights file, or a registry name
with ``random_init=True``): that model is exported once with dynamic batch/height/
width to a cache folder (``$MADIS_CACHE`` or ``~/.cache/madis/onnx``, keyed by a hash
of its weights and config, checked against PyTorch) and the file is loaded.

Execution providers: CPU always; with ``device="cuda"``/``"auto"`` the TensorRT and
CUDA providers when this onnxruntime build has them (``onnxruntime-gpu``; TensorRT
with ``precision="fp16"`` turns on its fp16 mode). Inputs are padded to the model's
``size_divisor`` by edge replication and the outputs cropped back, like the torch
backend, so both backends return the same disparity for the same pair.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from madis_core.backends.base import BACKENDS, StereoBackend, StereoResult, to_float_rgb
from madis_core.checkpoint import load_registry_model
from madis_core.export import export_onnx
from madis_core.models.catalog import meta_of, model_meta

log = logging.getLogger(__name__)

import onnxruntime as ort  # noqa: E402  (ImportError here leaves the backend unregistered)


def cache_dir() -> Path:
    root = os.environ.get("MADIS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "madis")
    return Path(root) / "onnx"


def _weights_digest(model) -> str:
    """Hash of a module's registry name, config and every weight (the cache key)."""
    h = hashlib.sha256()
    h.update(model.model_name.encode())
    h.update(json.dumps(model.model_config, sort_keys=True, default=str).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def export_cached(model: Any, random_init: bool = False, **overrides: Any) -> Path:
    """The cached dynamic-shape ONNX export of a registry model / weights file (exported on first use)."""
    net = load_registry_model(model, random_init=random_init, **overrides).cpu().eval()
    name, meta = net.model_name, meta_of(net)
    if meta.own_inference:
        log.warning("%s has its own inference procedure (infer(): tiling, upscaling); the ONNX graph runs its plain "
                    "forward, so results can differ from the torch backend", name)
    path = cache_dir() / f"{name}-{_weights_digest(net)}.onnx"
    if not path.is_file():
        div = meta.size_divisor
        h, w = max(div, 64 // div * div), max(div, 128 // div * div)
        log.info("exporting %s to %s (first use)", name, path)
        export_onnx(net, path, height=h, width=w, dynamic=True, check=True)
    return path


def select_providers(device: str, precision: str) -> List[Any]:
    """Execution providers for ``device`` (auto/cpu/cuda[:N]), best first."""
    available = ort.get_available_providers()
    device = (device or "auto").strip()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "auto" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r} for onnxruntime; use auto, cpu or cuda[:N]")
    index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    gpu: List[Any] = []
    if "TensorrtExecutionProvider" in available:
        gpu.append(("TensorrtExecutionProvider", {"device_id": index, "trt_fp16_enable": precision == "fp16",
                                                  "trt_engine_cache_enable": True,
                                                  "trt_engine_cache_path": str(cache_dir() / "trt")}))
    if "CUDAExecutionProvider" in available:
        gpu.append(("CUDAExecutionProvider", {"device_id": index}))
    if device.startswith("cuda") and not gpu:
        raise RuntimeError(f"device {device!r} requested but this onnxruntime ({ort.__version__}) has no CUDA or "
                           f"TensorRT execution provider (available: {', '.join(available)}); install "
                           "onnxruntime-gpu or use device 'cpu'")
    return gpu + ["CPUExecutionProvider"]


class OnnxBackend(StereoBackend):
    thread_library = "none"  # the session's intra-op count is fixed when it is made (``threads``)

    def __init__(self, model: Any, device: str = "auto", precision: str = "fp32", random_init: bool = False,
                 threads: int = 0, allow_spinning: bool = False, **model_overrides: Any):
        """``threads``: intra-op threads (0: onnxruntime's default, one per core).
        ``allow_spinning``: let idle worker threads spin (lowest latency on an otherwise
        idle CPU); off by default because on a CPU shared with other processes spinning
        threads slow everything down, the same effect as OMP_WAIT_POLICY=ACTIVE."""
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"onnxruntime precision must be fp32 or fp16 (TensorRT), got {precision!r}")
        path = Path(str(model)).expanduser()
        if path.suffix == ".onnx":
            if not path.is_file():
                raise FileNotFoundError(f"ONNX file not found: {path}")
            if model_overrides or random_init:
                raise ValueError("random_init and model overrides do not apply to an .onnx file")
        else:
            path = export_cached(model, random_init=random_init, **model_overrides)
        providers = select_providers(device, precision)
        opts = ort.SessionOptions()
        if threads > 0:
            opts.intra_op_num_threads = int(threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        used = self.session.get_providers()
        if precision == "fp16" and "TensorrtExecutionProvider" not in used:
            log.warning("fp16 needs the TensorRT execution provider; running %s in fp32 on %s", path.name, used[0])
            precision = "fp32"
        self.precision = precision
        self.path = path
        meta: Dict[str, str] = self.session.get_modelmeta().custom_metadata_map
        if "model_name" not in meta:
            raise ValueError(f"{path} has no madis metadata (model_name); write it with `madis export`")
        self.name = meta["model_name"]
        config = json.loads(meta.get("model_config", "{}"))
        self.meta = model_meta(self.name, config)
        self.device = "cuda" if used[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider") else "cpu"
        self.outputs = [o.name for o in self.session.get_outputs()]
        inputs = [i.name for i in self.session.get_inputs()]
        shape = self.session.get_inputs()[0].shape  # ints for fixed axes, names for dynamic ones
        self.fixed_hw = tuple(shape[2:]) if len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]) else None
        if inputs != ["left", "right"] or "disparity" not in self.outputs:
            raise ValueError(f"{path} is not a madis stereo export (inputs {inputs}, outputs {self.outputs}); "
                             "write it with `madis export`")

    def describe(self) -> str:
        return f"{self.name} (onnxruntime, {self.session.get_providers()[0]}, precision={self.precision})"

    def run_arrays(self, left: np.ndarray, right: np.ndarray) -> Dict[str, np.ndarray]:
        """Batched run on ``B x 3 x H x W`` float32 arrays in [0, 1]; pads to size_divisor and crops back."""
        h, w = left.shape[-2:]
        ph, pw = (-h) % self.meta.size_divisor, (-w) % self.meta.size_divisor
        if ph or pw:
            pad = ((0, 0), (0, 0), (0, ph), (0, pw))
            left, right = np.pad(left, pad, mode="edge"), np.pad(right, pad, mode="edge")
        if self.fixed_hw is not None and tuple(left.shape[-2:]) != self.fixed_hw:
            raise ValueError(f"{self.path.name} was exported for {self.fixed_hw[0]}x{self.fixed_hw[1]} inputs, got "
                             f"{h}x{w} (padded {left.shape[-2]}x{left.shape[-1]}); re-export with that size or --dynamic")
        res = self.session.run(self.outputs, {"left": np.ascontiguousarray(left, dtype=np.float32),
                                              "right": np.ascontiguousarray(right, dtype=np.float32)})
        return {k: v[..., :h, :w] for k, v in zip(self.outputs, res)}

    def predict_checked(self, left: np.ndarray, right: np.ndarray) -> StereoResult:
        t0 = time.perf_counter()
        lt = to_float_rgb(left).transpose(2, 0, 1)[None]
        rt = to_float_rgb(right).transpose(2, 0, 1)[None]
        t1 = time.perf_counter()
        out = self.run_arrays(lt, rt)
        t2 = time.perf_counter()
        disp = np.ascontiguousarray(out["disparity"][0, 0], dtype=np.float32)
        disp[~np.isfinite(disp)] = np.nan
        conf: Optional[np.ndarray] = None
        if "confidence" in out:
            conf = np.clip(np.ascontiguousarray(out["confidence"][0, 0], dtype=np.float32), 0.0, 1.0)
        return StereoResult(disp, conf, {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                                         "postprocess": (time.perf_counter() - t2) * 1e3})


@BACKENDS.decorator("onnxruntime")
def _onnxruntime(**kwargs) -> OnnxBackend:
    return OnnxBackend(**kwargs)
