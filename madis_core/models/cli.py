"""``madis models``: the registry (networks and classical methods) with family, parameter
count and the metadata the node and tools read (size divisor, range, confidence,
minimum input size).

Parameters are counted on the meta device (no memory, no init time); ``--no-count``
lists names only.
"""
from __future__ import annotations

import argparse
import json
from contextlib import nullcontext


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="only this family (e.g. madis, student)")
    parser.add_argument("--no-count", action="store_true", help="do not build the networks to count parameters")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def model_table(family: str | None = None, count: bool = True) -> list:
    """[{name, family, learned, params_m, min_size, has_confidence, description}] per registry entry."""
    from madis_core.models import build_model, count_parameters, get_entry, list_models

    rows = []
    for name in list_models():
        entry = get_entry(name)
        if family and entry.family != family:
            continue
        m = entry.meta
        params = count_parameters(build_model(name)) / 1e6 if count and m.learned else None
        rows.append({"name": name, "family": entry.family, "learned": m.learned, "params_m": params,
                     "max_disparity": m.max_disparity, "min_size": list(m.min_size),
                     "has_confidence": m.has_confidence, "description": entry.description})
    return rows


def run(args: argparse.Namespace) -> int:
    import torch

    # parameters are counted on the meta device: no memory, no init time
    with torch.device("meta") if not args.no_count else nullcontext():
        rows = model_table(args.family, count=not args.no_count)
    if args.family and not rows:
        raise ValueError(f"no registered model of family {args.family!r}")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max([len(r["name"]) for r in rows] + [4])
    fw = max([len(r["family"]) for r in rows] + [6])
    print(f"{'name':<{w}}  {'family':<{fw}}  {'params (M)':>10}  {'min HxW':>7}  conf  description")
    for r in rows:
        p = "-" if r["params_m"] is None else f"{r['params_m']:.2f}"
        size = "x".join(str(v) for v in r["min_size"])
        print(f"{r['name']:<{w}}  {r['family']:<{fw}}  {p:>10}  {size:>7}  {'yes' if r['has_confidence'] else 'no ':4s}"
              f"  {r['description']}")
    return 0

