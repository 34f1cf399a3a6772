"""PyTorch backend for every model in the registry."""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from madis_core.estimator import (StereoBackend, StereoResult, register_backend, resolve_device,
                                  resolve_weights, to_float_rgb)

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_registry_model(model: str | nn.Module, random_init: bool = False, **overrides: Any) -> nn.Module:
    """A module, a weights path, a registry name with shipped weights, or (random_init) an untrained one."""
    from madis_core.checkpoint import load_model
    from madis_core.models import build_model, list_models

    if isinstance(model, nn.Module):
        return model
    weights = resolve_weights(model)
    if weights is not None and not random_init:
        if not weights.is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        return load_model(weights)
    if model in list_models():
        if random_init:
            return build_model(model, **overrides)
        raise FileNotFoundError(
            f"no shipped weights for model {model!r}; pass a weights file path, or random_init=True for an untrained network")
    raise ValueError(f"{model!r} is neither a backend ({', '.join(_backend_names())}), a registered model "
                     f"({', '.join(list_models())}) nor a weights file")


def _backend_names():
    from madis_core.estimator import list_backends
    return list_backends()


class TorchBackend(StereoBackend):
    def __init__(self, model: str | nn.Module, device: str = "auto", precision: str = "fp32",
                 random_init: bool = False, channels_last: bool = False, compile: bool = False,
                 **model_overrides: Any):
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {precision!r}")
        self.device = resolve_device(device)
        net = load_registry_model(model, random_init=random_init, **model_overrides)
        self.name = getattr(net, "model_name", type(net).__name__)
        if precision != "fp32" and not self.device.startswith("cuda"):
            log.warning("precision %s needs a CUDA device; running %s in fp32 on %s", precision, self.name, self.device)
            precision = "fp32"
        self.precision = precision
        self.net = net.to(self.device).eval()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self.size_divisor = int(getattr(net, "size_divisor", 1))
        self.max_disparity = float(getattr(net, "max_disparity", 192))
        self.delta_d = 1.0 / 64.0
        self._forward = torch.compile(self.net) if compile else self.net

    def describe(self) -> str:
        return f"{self.name} (torch, device={self.device}, precision={self.precision})"

    @torch.inference_mode()
    def predict_tensors(self, left: torch.Tensor, right: torch.Tensor) -> dict:
        """Batched forward on B x 3 x H x W float tensors in [0, 1]; pads to size_divisor."""
        h, w = left.shape[-2:]
        infer = getattr(self.net, "infer", None)
        # A model with its own inference procedure (e.g. MaDis' tiling) handles any size
        # itself; padding it would put tiles on the replicated border.
        div = 1 if infer is not None else self.size_divisor
        ph, pw = (-h) % div, (-w) % div
        if ph or pw:
            left = F.pad(left, (0, pw, 0, ph), mode="replicate")
            right = F.pad(right, (0, pw, 0, ph), mode="replicate")
        if self.channels_last:
            left = left.contiguous(memory_format=torch.channels_last)
            right = right.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.split(":")[0], dtype=_DTYPES[self.precision],
                            enabled=self.precision != "fp32"):
            out = infer(left, right) if infer is not None else self._forward(left, right)
        return {k: v[..., :h, :w].float() for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() == 4}

    def predict_checked(self, left: np.ndarray, right: np.ndarray) -> StereoResult:
        t0 = time.perf_counter()
        lt = torch.from_numpy(to_float_rgb(left)).permute(2, 0, 1)[None]
        rt = torch.from_numpy(to_float_rgb(right)).permute(2, 0, 1)[None]
        if self.device != "cpu":
            lt = lt.pin_memory().to(self.device, non_blocking=True)
            rt = rt.pin_memory().to(self.device, non_blocking=True)
        t1 = time.perf_counter()
        out = self.predict_tensors(lt, rt)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        disp = out["disparity"][0, 0].cpu().numpy().astype(np.float32)
        conf = out.get("confidence")
        conf = None if conf is None else conf[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)
        disp[~np.isfinite(disp)] = np.nan
        return StereoResult(disp, conf, {"preprocess": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3,
                                         "postprocess": (time.perf_counter() - t2) * 1e3})


@register_backend("torch")
def _torch(**kwargs) -> TorchBackend:
    return TorchBackend(**kwargs)
