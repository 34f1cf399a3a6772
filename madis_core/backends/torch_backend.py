"""PyTorch backend for every network in the model registry."""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from madis_core.backends.base import BACKENDS, StereoBackend, StereoResult, resolve_device, to_float_rgb
from madis_core.checkpoint import load_registry_model
from madis_core.models.registry import meta_of

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(StereoBackend):
    def __init__(self, model: str | nn.Module, device: str = "auto", precision: str = "fp32",
                 random_init: bool = False, channels_last: bool = False, compile: bool = False,
                 **model_overrides: Any):
        """``model``: a registry name with shipped weights, a weights file or a module built by the
        registry; ``random_init``: an untrained registry network (``model_overrides`` change its
        config); ``channels_last``/``compile``: torch memory format and torch.compile."""
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {precision!r}")
        self.device = resolve_device(device)
        net = load_registry_model(model, random_init=random_init, **model_overrides)
        self.meta = meta_of(net)
        self.name = net.model_name
        if precision != "fp32" and not self.device.startswith("cuda"):
            log.warning("precision %s needs a CUDA device; running %s in fp32 on %s", precision, self.name, self.device)
            precision = "fp32"
        self.precision = precision
        self.net = net.to(self.device).eval()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        self._forward = torch.compile(self.net) if compile else self.net

    def describe(self) -> str:
        return f"{self.name} (torch, device={self.device}, precision={self.precision})"

    def trainable_network(self) -> nn.Module:
        return self.net

    @torch.inference_mode()
    def predict_tensors(self, left: torch.Tensor, right: torch.Tensor) -> dict:
        """Batched forward on B x 3 x H x W float tensors in [0, 1]; pads to size_divisor."""
        h, w = left.shape[-2:]
        # A model with its own inference procedure (ViT tiling, MaDis upscaling) handles any size
        # itself; padding it would put tiles on the replicated border.
        div = 1 if self.meta.own_inference else self.meta.size_divisor
        ph, pw = (-h) % div, (-w) % div
        if ph or pw:
            left = F.pad(left, (0, pw, 0, ph), mode="replicate")
            right = F.pad(right, (0, pw, 0, ph), mode="replicate")
        if self.channels_last:
            left = left.contiguous(memory_format=torch.channels_last)
            right = right.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.split(":")[0], dtype=_DTYPES[self.precision],
                            enabled=self.precision != "fp32"):
            out = self.net.infer(left, right) if self.meta.own_inference else self._forward(left, right)
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


@BACKENDS.decorator("torch")
def _torch(**kwargs) -> TorchBackend:
    return TorchBackend(**kwargs)
