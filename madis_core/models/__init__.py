"""Networks of the project, all reachable through one registry."""
from __future__ import annotations

from madis_core.models.registry import build_model, count_parameters, get_entry, list_models, register_model


def _import_model_modules() -> None:
    """Import the modules whose @register_model decorators fill the registry. Done on
    first registry use rather than here, so `import madis_core.models` stays light."""
    import madis_core.models.croco_vit  # noqa: F401
    import madis_core.models.madis  # noqa: F401
    import madis_core.models.student  # noqa: F401


__all__ = ["build_model", "count_parameters", "get_entry", "list_models", "register_model"]
