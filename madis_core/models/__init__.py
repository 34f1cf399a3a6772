"""Networks and classical methods of the project, all reachable through one registry.

Modules: ``registry`` (entries, ``ModelMeta``, ``build_model``; no torch), ``classical``
(SGBM entries; no torch), ``catalog`` (imports every model module: the complete
registry), ``student`` (real-time CNN), ``madis`` (MaDis matching transformer,
``epipolar_transformer``), ``croco_vit`` (tiled binocular ViT, ``rope``, ``dpt``,
``patches``), ``cost_volume`` (correlation, soft-argmin, upsampling), ``cli``
(``madis models``).

``from madis_core.models import build_model`` (and list_models, get_entry, model_meta,
meta_of, count_parameters) goes through ``catalog`` on first use, so importing this
package or its light modules does not import torch (the ROS node starts faster, and
SGBM-only users never load it).
"""
from __future__ import annotations

from madis_core.models.registry import ModelMeta, register_model

_FROM_CATALOG = ("build_model", "count_parameters", "get_entry", "list_models", "meta_of", "model_meta")


def __getattr__(name: str):
    if name in _FROM_CATALOG:
        from madis_core.models import catalog

        return getattr(catalog, name)
    raise AttributeError(f"module 'madis_core.models' has no attribute {name!r}")


__all__ = ["ModelMeta", "register_model", *_FROM_CATALOG]
