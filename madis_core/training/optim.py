"""AdamW with weight decay only on weight matrices/kernels (not norms, biases or tokens).

Why: decaying LayerNorm gains, biases and learned tokens pulls them towards zero
for no regularisation benefit (the ViT/MAE recipe the MaDis code follows).
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
import torch.nn as nn


def no_decay(name: str, param: torch.Tensor, extra: set) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or name in extra or name.endswith("token")


def param_groups(module: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    extra = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
    decay, skip = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (skip if no_decay(name, p, extra) else decay).append(p)
    if not decay and not skip:
        raise ValueError("the trainable module has no parameters that require gradients")
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": skip, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, optim_cfg: Dict[str, Any]) -> torch.optim.AdamW:
    betas = tuple(float(b) for b in optim_cfg["betas"])
    if len(betas) != 2:
        raise ValueError(f"optim.betas must have two values, got {optim_cfg['betas']}")
    return torch.optim.AdamW(param_groups(module, optim_cfg["weight_decay"]), lr=float(optim_cfg["lr"]),
                             betas=betas, eps=float(optim_cfg["eps"]))
