"""Every registered model: importing this module imports each model module (their
``@register_model`` decorators fill the registry) and the classical entries, then offers
the registry's queries over the complete set. ``madis_core.models`` forwards to it.
"""
from __future__ import annotations

from madis_core.models import classical, croco_vit, madis, student  # noqa: F401  (their entries)
from madis_core.models.registry import (build_model, count_parameters, get_entry, list_models, meta_of,  # noqa: F401
                                        model_meta)
