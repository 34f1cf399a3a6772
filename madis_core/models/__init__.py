"""Networks of the project, all reachable through one registry."""
from __future__ import annotations

import importlib

from madis_core.models.registry import build_model, count_parameters, get_entry, list_models, register_model

# Modules whose import registers models. A module that is not written yet is skipped.
_MODEL_MODULES = ("madis_core.models.madis", "madis_core.models.student")
_loaded = False


def _import_model_modules() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise


__all__ = ["build_model", "count_parameters", "get_entry", "list_models", "register_model"]
