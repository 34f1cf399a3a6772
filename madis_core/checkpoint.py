"""Saving, finding and loading model weights without executing pickles.

Two formats are read:
- ``*.safetensors``: tensors plus metadata ``{"model": registry name, "config": json}``
  (the format shipped under ``madis_core/weights/``);
- ``*.pt`` / ``*.pth`` / ``*.ckpt``: a training checkpoint, a dict loaded with
  ``torch.load(weights_only=True)`` holding ``model_name``, ``model_config`` and
  ``model`` (a state dict), as the training engine writes it.

``resolve_weights(name_or_path)`` turns what a user typed into a weights file (a path,
or a registry name with shipped weights under ``madis_core/weights/``);
``load_registry_model`` is the one place a network is obtained from such a string.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
import torch.nn as nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: suffixes that mark a model string as a file path (".onnx" for the onnxruntime backend)
WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".onnx")


class CheckpointError(ValueError):
    """A weights file that is missing, corrupt or not a madis checkpoint."""


def save_weights(model: nn.Module, path: str | os.PathLike, extra_metadata: Dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights as safetensors with its registry name and config."""
    from safetensors.torch import save_file

    path = Path(path)
    from madis_core.models import meta_of

    meta_of(model)  # refuses a network that was not built by the registry
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"model": model.model_name, "config": json.dumps(model.model_config, sort_keys=True)}
    meta.update(extra_metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def read_weights(path: str | os.PathLike) -> Tuple[str, Dict[str, Any], Dict[str, torch.Tensor]]:
    """Return ``(model_name, model_config, state_dict)`` from a weights file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
        if "model" not in meta:
            raise CheckpointError(f"{path} has no 'model' metadata; it was not written by madis_core")
        return meta["model"], json.loads(meta.get("config", "{}")), state
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable weights-only torch checkpoint: {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise CheckpointError(f"{path} is not a madis checkpoint (expected keys model_name, model_config, model)")
    return ckpt["model_name"], dict(ckpt.get("model_config", {})), ckpt["model"]


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Build the model a weights file describes and load its weights (strict)."""
    from madis_core.models import build_model

    name, cfg, state = read_weights(path)
    try:
        model = build_model(name, **cfg)
    except KeyError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {exc}") from exc
    return model.to(map_location).eval()


def shipped_weights(name: str) -> Path | None:
    """Path of the weights shipped for registry name ``name``, if any."""
    for ext in (".safetensors", ".pt"):
        p = WEIGHTS_DIR / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def resolve_weights(name_or_path: str | os.PathLike) -> Path | None:
    """A path (by suffix or a folder separator), or the shipped weights of a registry name; else None."""
    text = str(name_or_path)
    p = Path(text).expanduser()
    if p.suffix in WEIGHTS_SUFFIXES or os.sep in text:
        return p
    return shipped_weights(text)


def load_registry_model(model: "str | nn.Module", random_init: bool = False, **overrides: Any) -> nn.Module:
    """A module as it is, a weights path, a registry name with shipped weights, or (``random_init``)
    an untrained registry network; a clear error for anything else."""
    from madis_core.models import build_model, list_models

    if isinstance(model, nn.Module):
        return model
    weights = resolve_weights(model)
    if weights is not None and not random_init:
        if not weights.is_file():
            raise FileNotFoundError(f"weights file not found: {weights}")
        return load_model(weights)
    if model in list_models(learned=True):
        if random_init:
            return build_model(model, **overrides)
        raise FileNotFoundError(
            f"no shipped weights for model {model!r}; pass a weights file path, or random_init=True for an untrained network")
    raise ValueError(f"{model!r} is neither a registered model ({', '.join(list_models())}) nor a weights file")
