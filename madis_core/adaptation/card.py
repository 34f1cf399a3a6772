"""Writing adapted weights and their card.

``OUT.safetensors`` holds the weights with the usual ``model``/``config`` metadata (so
``StereoEstimator.from_pretrained(OUT)`` and the node's ``model:=OUT`` load it like
any other weights file) plus ``adaptation``: the card's facts as JSON. ``OUT.md``
beside it is the same card for people: what it started from, the data (source,
pairs, sizes), steps, wall time, the configuration and the self-supervised loss
before and after.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from pathlib import Path
from typing import Any, Dict

import torch.nn as nn

from madis_core.checkpoint import read_weights, save_weights


def card_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".md")


def write_adapted(model: nn.Module, out: str | Path, facts: Dict[str, Any]) -> Path:
    """Save ``model`` to ``out`` (safetensors) with ``facts`` as metadata, and the card
    ``out`` with suffix ``.md``. Returns the weights path."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out}")
    facts = dict(facts)
    facts.setdefault("written", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    facts.setdefault("machine", f"{platform.machine()} {platform.processor() or ''}".strip())
    save_weights(model, out, extra_metadata={"adaptation": json.dumps(facts, sort_keys=True, default=str)})
    facts["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    card_path(out).write_text(render_card(out, getattr(model, "model_name", "?"), facts))
    return out


def read_adaptation(path: str | Path) -> Dict[str, Any]:
    """The ``adaptation`` facts stored in an adapted weights file ({} for other weights)."""
    from safetensors import safe_open

    read_weights(path)  # validates the file
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta["adaptation"]) if "adaptation" in meta else {}


def _fmt_loss(d: Dict[str, float]) -> str:
    return (f"{d['loss']:.4f} (photometric {d['photometric']:.4f}, smoothness {d['smoothness']:.4f}, "
            f"left-right consistent {100 * d['consistent']:.1f} % of pixels)")


def render_card(weights: Path, model_name: str, f: Dict[str, Any]) -> str:
    before, after = f["self_supervised_before"], f["self_supervised_after"]
    change = 100.0 * (after["loss"] - before["loss"]) / max(before["loss"], 1e-12)
    cfg = f.get("config", {})
    rows = [
        ("file", f"`{weights.name}` (safetensors, metadata `model={model_name}` and `adaptation`; sha256 "
                 f"`{f['sha256']}...`)"),
        ("started from", f"`{f['start']}`"),
        ("method", _method(cfg)),
        ("data", f"{f['data']}: {f['pairs']} unlabeled pairs, {f['sizes']}"),
        ("steps", f"{f['steps']} x batch {cfg.get('batch', '?')} (lr {cfg.get('lr', '?')}, "
                  f"{f['threads']} CPU threads on {f['device']})"),
        ("wall time", f"{f['seconds']:.0f} s of adaptation steps ({f['seconds_total']:.0f} s with loading and "
                      "the before/after losses)"
                      + (f"; {f['cpu_seconds']:.0f} CPU-seconds" if f.get("cpu_seconds") is not None else "")),
        ("self-supervised loss before", _fmt_loss(before)),
        ("self-supervised loss after", f"{_fmt_loss(after)}: {change:+.1f} %"),
        ("written", f"{f['written']} ({f['machine']})"),
    ]
    lines = [f"# Adapted weights: `{weights.stem}`", "",
             f"`{model_name}` adapted to unlabeled stereo pairs of a new camera without ground truth. "
             "The self-supervised loss is measured on the adaptation pairs, in eval mode, with no masking "
             "(lower is better; it is not an accuracy figure).", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "Configuration (`madis_core.adaptation.adapter.AdaptConfig`):", "",
              "    " + json.dumps(cfg, sort_keys=True), "", "Command:", "", f"    {f.get('command', '?')}", "",
              "Load it: `StereoEstimator.from_pretrained(\"" + weights.name + "\")`, or run the node with "
              f"`model:={weights.name}`.", ""]
    return "\n".join(lines)


def _method(cfg: Dict[str, Any]) -> str:
    """What the run did, from its configuration (AdaptConfig as a dict)."""
    parts = [f"photometric ({cfg.get('photometric_kind', 'ssim')}) with occlusion handling "
             f"`{cfg.get('occlusion', 'lr')}`", "edge-aware smoothness"]
    if cfg.get("pseudo", 0) > 0 or cfg.get("occluded", 0) > 0:
        masked = f" on inputs with {100 * cfg['mask_ratio']:.0f} % of patches hidden" if cfg.get("mask_ratio") else ""
        parts.append(f"EMA-teacher pseudo labels (confidence-weighted){masked}")
    if cfg.get("proxy", 0) > 0:
        parts.append("SGBM proxy labels where SGBM and the network agree")
    if cfg.get("drift", 0) > 0:
        parts.append("L2 drift guard to the starting weights")
    if cfg.get("synthetic_every", 0) > 0:
        parts.append(f"a synthetic labelled batch every {cfg['synthetic_every']} steps")
    return "self-supervised adaptation: " + ", ".join(parts) + "; no ground truth of the data read"
