"""Training configuration: one YAML file plus ``key.sub=value`` overrides from the command line.

Why a plain dict: the same config drives every task (MaDis MIM, the supervised
ablation, distillation); each task reads its own section and the engine reads the
shared ones (``train``, ``optim``, ``output``, ``validation``, ``data``). Defaults for
the shared sections live here so a config only states what it changes; unknown keys
in the shared sections are rejected so typos fail loudly.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable

import yaml

#: defaults of the sections the engine reads (tasks document their own sections)
ENGINE_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "train": {
        "steps": 1000,          # optimizer steps in total
        "batch_size": 4,        # per process
        "crop": [352, 704],     # training crop (H, W); multiples of 16 for MaDis
        "seed": 0,
        "device": "auto",       # auto | cpu | cuda ; under torchrun: cuda:LOCAL_RANK
        "amp": "auto",          # auto (bf16 on CUDA if supported, else fp16; off on CPU) | off | bf16 | fp16
        "threads": 0,           # torch.set_num_threads on CPU; 0 leaves torch's default
    },
    "optim": {
        "lr": 3.0e-5,
        "min_lr": 0.0,          # cosine decays to this
        "weight_decay": 0.05,   # not applied to norms, biases and tokens
        "betas": [0.9, 0.95],
        "eps": 1.0e-8,
        "warmup_steps": 100,    # linear warm-up from 0
        "grad_clip": 1.0,       # max global grad norm; 0 disables
    },
    "output": {
        "dir": "runs/madis",
        "checkpoint_every": 1000,   # steps; the latest checkpoint is output.dir/checkpoint.pt
        "log_every": 20,            # progress line + TensorBoard scalars
        "image_every": 500,         # TensorBoard image previews; 0 disables
        "tensorboard": True,
    },
    "validation": {
        "every": 0,             # steps; 0 = only at the end (if dataset is set)
        "dataset": None,        # a madis_core.data.build_dataset spec, e.g. synthetic-test or motorcycle
        "max_samples": 16,
    },
}


class ConfigError(ValueError):
    """A config file or override that cannot be used."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text) -> object:
    return yaml.load(text, Loader=_Loader)


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> Dict[str, Any]:
    """Read a YAML config, apply ``key.sub=value`` overrides, fill engine defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        try:
            cfg = parse_yaml(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(cfg).__name__}")
    cfg = apply_overrides(cfg, overrides)
    return with_defaults(cfg)


def apply_overrides(cfg: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """``["optim.lr=1e-4", "train.crop=[64,128]"]``: values are parsed as YAML scalars/lists."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = parse_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse value: {exc}") from exc
        node = cfg
        for p in parts[:-1]:
            node = _child(node, p, item)
        _set(node, parts[-1], value, item)
    return cfg


def _child(node: Any, key: str, item: str) -> Any:
    """Step into ``node[key]`` (a dict key, or an integer index of a list such as data.sources.0)."""
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise ConfigError(f"override {item!r}: {key!r} is not an index of a list of {len(node)}")
        return node[int(key)]
    if not isinstance(node, dict):
        raise ConfigError(f"override {item!r}: cannot go into {key!r} (not a section)")
    if key not in node or node[key] is None:
        node[key] = {}
    if not isinstance(node[key], (dict, list)):
        raise ConfigError(f"override {item!r}: {key!r} is a value, not a section")
    return node[key]


def _set(node: Any, key: str, value: Any, item: str) -> None:
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise ConfigError(f"override {item!r}: {key!r} is not an index of a list of {len(node)}")
        node[int(key)] = value
    else:
        node[key] = value


def with_defaults(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Merge engine defaults under ``cfg``; reject unknown keys in the engine's sections."""
    cfg = copy.deepcopy(cfg)
    for section, defaults in ENGINE_DEFAULTS.items():
        given = cfg.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ConfigError(f"unknown key(s) in section {section!r}: {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(defaults))}")
        merged = copy.deepcopy(defaults)
        merged.update(given)
        cfg[section] = merged
    if "model" not in cfg or not isinstance(cfg["model"], dict) or "name" not in cfg["model"]:
        raise ConfigError("config needs a 'model' section with a registry 'name' (see `madis models`)")
    cfg["model"].setdefault("overrides", {})
    cfg.setdefault("data", {})
    crop = cfg["train"]["crop"]
    if not (isinstance(crop, (list, tuple)) and len(crop) == 2 and all(int(c) > 0 for c in crop)):
        raise ConfigError(f"train.crop must be [H, W], got {crop!r}")
    cfg["train"]["crop"] = [int(c) for c in crop]
    for key in ("steps", "batch_size"):
        if int(cfg["train"][key]) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {cfg['train'][key]}")
    return cfg


def dump_config(cfg: Dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
