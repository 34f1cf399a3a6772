"""Model registry shared by every estimator of the project (timm-style named configs),
with typed metadata on each entry.

A model family registers a builder once; named configurations point at it with
default keyword arguments and a ``ModelMeta``:

    @register_model("madis-tiny", family="madis", meta=ModelMeta(family="madis", ...), embed_dim=192, ...)
    def build_madis(**cfg) -> nn.Module

    model = build_model("madis-tiny", depth=4)   # overrides win over defaults
    model.model_name, model.model_config         # set by build_model, saved with weights
    model_meta("madis-tiny", model.model_config) # what callers read instead of guessing

This module holds the mechanism only and imports no torch; ``madis_core.models.catalog``
imports every model module, so use ``madis_core.models.build_model`` etc. for the
complete registry. Classical methods (OpenCV SGBM) are entries too, with no builder: ``meta.learned`` is
False and ``meta.backend`` names the backend that runs them, ``meta.backend_options``
its fixed options. Every learned model takes ``left, right`` as float tensors
``B x 3 x H x W`` with RGB values in [0, 1] (it normalises internally) and returns a
dict with at least ``"disparity"`` (``B x 1 x H x W``, pixels, left view) and
optionally ``"confidence"`` (``B x 1 x H x W`` in [0, 1]); training-only extras go
in the same dict.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from madis_core.registry import Registry

#: disparity step reported for regressed (learned) disparities (DisparityImage.delta_d)
LEARNED_DELTA_D = 1.0 / 64.0
#: the disparity range a model covers unless its config says otherwise (px)
DEFAULT_MAX_DISPARITY = 192.0


@dataclass(frozen=True)
class ModelMeta:
    """What the rest of the project needs to know about an estimator, in one place."""

    family: str
    learned: bool = True
    #: inputs are padded to a multiple of this (the backends do it)
    size_divisor: int = 1
    #: the disparity range the model can output (px); a config's max_disparity replaces it
    max_disparity: float = DEFAULT_MAX_DISPARITY
    min_disparity: float = 0.0
    #: smallest disparity step the model resolves (DisparityImage.delta_d)
    delta_d: float = LEARNED_DELTA_D
    has_confidence: bool = False
    #: smallest input (height, width) in px the model gives meaningful output for
    min_size: Tuple[int, int] = (1, 1)
    #: the network has its own inference procedure (``infer``: the ViT's tiling, MaDis' test-time
    #: upscaling), run instead of forward on inputs it pads itself
    own_inference: bool = False
    #: backend implementing a classical entry ("sgbm"); learned models take the runtime's
    backend: Optional[str] = None
    backend_options: Dict[str, Any] = field(default_factory=dict)

    def for_config(self, config: Optional[Dict[str, Any]]) -> "ModelMeta":
        """This meta for one built configuration (a config's max_disparity wins)."""
        md = (config or {}).get("max_disparity")
        return self if md is None else replace(self, max_disparity=float(md))


@dataclass
class ModelEntry:
    name: str
    family: str
    builder: Optional[Callable[..., Any]]
    defaults: Dict[str, Any] = field(default_factory=dict)
    description: str = ""
    meta: ModelMeta = None  # type: ignore[assignment]


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(name: str, family: str, description: str = "", meta: Optional[ModelMeta] = None,
                   **defaults: Any):
    """Decorator registering ``builder`` under ``name`` with default kwargs and metadata."""

    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        m = meta if meta is not None else ModelMeta(family=family)
        if m.family != family:
            raise ValueError(f"model {name!r}: meta.family {m.family!r} differs from family {family!r}")
        if name in MODELS and MODELS.get(name).builder is builder:
            return builder  # the same module imported twice
        MODELS.register(name, ModelEntry(name, family, builder, dict(defaults), description,
                                         m.for_config(defaults)))
        return builder

    return decorator


def register_classical(name: str, meta: ModelMeta, description: str = "") -> None:
    """A method without a network (``meta.learned`` False), run by backend ``meta.backend``."""
    if meta.learned or not meta.backend:
        raise ValueError(f"classical entry {name!r} needs learned=False and a backend")
    MODELS.register(name, ModelEntry(name, meta.family, None, {}, description, meta))


def list_models(learned: Optional[bool] = None) -> List[str]:
    """Registered names; ``learned=True`` networks only, ``False`` classical methods only."""
    return [n for n in MODELS.names() if learned is None or MODELS.get(n).meta.learned == learned]


def get_entry(name: str) -> ModelEntry:
    return MODELS.get(name)


def model_meta(name: str, config: Optional[Dict[str, Any]] = None) -> ModelMeta:
    """The metadata of registry entry ``name`` for ``config`` (a built model's model_config)."""
    return get_entry(name).meta.for_config(config)


def meta_of(model: Any) -> ModelMeta:
    """The metadata of a network built by :func:`build_model` (or loaded from weights)."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError(f"{type(model).__name__} has no model_name; build it with madis_core.models.build_model")
    return model_meta(name, model.model_config)


def build_model(name: str, **overrides: Any):
    """Build the named configuration; ``overrides`` replace its defaults."""
    entry = get_entry(name)
    if entry.builder is None:
        raise ValueError(f"{name!r} is a classical method ({entry.meta.backend}), not a network; "
                         "use madis_core.estimator.build_estimator")
    cfg = copy.deepcopy(entry.defaults)
    cfg.update(overrides)
    model = entry.builder(**cfg)
    model.model_name = name
    model.model_config = cfg
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
