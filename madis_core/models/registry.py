"""Model registry shared by every network in the project (timm-style named configs).

A model family registers a builder once; named configurations point at it with
default keyword arguments:

    @register_model("madis-tiny", family="madis", embed_dim=192, ...)
    def build_madis(**cfg) -> nn.Module

    model = build_model("madis-tiny", depth=4)   # overrides win over defaults
    model.model_name, model.model_config         # set by build_model, saved with weights

Every registered model takes ``left, right`` as float tensors ``B x 3 x H x W`` with
RGB values in [0, 1] (it normalises internally) and returns a dict with at least
``"disparity"`` (``B x 1 x H x W``, pixels, left view) and optionally
``"confidence"`` (``B x 1 x H x W`` in [0, 1]). Training-only extras go in the same
dict. A model may declare ``size_divisor`` (inputs are padded to a multiple of it)
and ``max_disparity`` attributes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List

import torch.nn as nn


@dataclass
class ModelEntry:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    defaults: Dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: Dict[str, ModelEntry] = {}


def register_model(name: str, family: str, description: str = "", **defaults: Any):
    """Decorator registering ``builder`` under ``name`` with default kwargs."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = ModelEntry(name, family, builder, dict(defaults), description)
        return builder

    return decorator


def _ensure_loaded() -> None:
    # Importing the model modules runs their @register_model decorators.
    from madis_core.models import _import_model_modules

    _import_model_modules()


def list_models() -> List[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build the named configuration; ``overrides`` replace its defaults."""
    entry = get_entry(name)
    cfg = copy.deepcopy(entry.defaults)
    cfg.update(overrides)
    model = entry.builder(**cfg)
    model.model_name = name
    model.model_config = cfg
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
