"""``madis models``: the registered networks with their family and parameter count.

Counting parameters builds each network once on the CPU (the largest, madis-base,
takes a second or two); ``--no-count`` lists names only.
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
    """[{name, family, params_m, description}] for every registered model."""
    from madis_core.models import build_model, count_parameters, get_entry, list_models

    rows = []
    for name in list_models():
        entry = get_entry(name)
        if family and entry.family != family:
            continue
        params = count_parameters(build_model(name)) / 1e6 if count else None
        rows.append({"name": name, "family": entry.family, "params_m": params, "description": entry.description})
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
    print(f"{'name':<{w}}  {'family':<{fw}}  {'params (M)':>10}  description")
    for r in rows:
        p = "-" if r["params_m"] is None else f"{r['params_m']:.2f}"
        print(f"{r['name']:<{w}}  {r['family']:<{fw}}  {p:>10}  {r['description']}")
    return 0

