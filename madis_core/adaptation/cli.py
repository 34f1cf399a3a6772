"""``madis adapt``: fine-tune a model on unlabeled stereo pairs of your camera.

    madis adapt --model student --data folder:/data/mycam --steps 300 --out mycam.safetensors
    madis adapt --model student --data recording.mcap --max-pairs 200 --time-budget 600 --out mycam.safetensors
    madis adapt --model runs/x/model.safetensors --data motorcycle --set mask_ratio=0.25 --out moto.safetensors

Writes ``OUT`` (safetensors; loads with ``model:=OUT`` in the node and with
``StereoEstimator.from_pretrained(OUT)``) and the card ``OUT`` with suffix ``.md``.
No ground truth is read: the data sources yield images only
(``madis_core.adaptation.sources``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
import time

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registry model with shipped weights (student, student-lite) or a "
                   "weights file (a madis-* run, an earlier adaptation)")
    p.add_argument("--data", required=True, help="motorcycle, folder:ROOT (left/ right/ images) or a rosbag2 "
                   "(directory or .mcap/.db3)")
    p.add_argument("--out", required=True, help="adapted weights, *.safetensors (the card goes beside it as *.md)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 300)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop adapting after this many seconds of steps")
    p.add_argument("--cpu-budget", type=float, default=None, metavar="SECONDS",
                   help="stop adapting after this many CPU-seconds (all threads of the process)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--max-pairs", type=int, default=None, help="use at most this many pairs of the data")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-4)")
    p.add_argument("--seed", type=int, default=None, help="masks, crops and flips")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any AdaptConfig field (JSON value), e.g. --set mask_ratio=0.25 --set 'crop=[256,512]'")
    p.add_argument("--log-every", type=int, default=25, help="progress line every N steps (0: none)")


def build_config(args: argparse.Namespace):
    from madis_core.adaptation.adapter import AdaptConfig

    fields = {f.name for f in dataclasses.fields(AdaptConfig)}
    kw = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq or key not in fields:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        try:
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value  # bare strings: --set bn=train
    for key, value in (("steps", args.steps), ("time_budget_s", args.time_budget),
                       ("cpu_budget_s", args.cpu_budget), ("lr", args.lr),
                       ("seed", args.seed)):
        if value is not None:
            kw[key] = value
    return AdaptConfig(**kw)


def run(args: argparse.Namespace) -> int:
    import torch

    from madis_core.adaptation.adapter import Adapter
    from madis_core.adaptation.card import write_adapted
    from madis_core.adaptation.sources import build_source, load_pairs
    from madis_core.checkpoint import load_registry_model
    from madis_core.backends.base import resolve_device

    t_start = time.perf_counter()
    if not str(args.out).endswith(".safetensors"):  # before minutes of work, not after
        raise ValueError(f"--out must end in .safetensors, got {args.out}")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = build_config(args)
    device = resolve_device(args.device)
    source = build_source(args.data)
    pairs = load_pairs(source, args.max_pairs)
    model = load_registry_model(args.model)
    sizes = sorted({f"{p.left.shape[1]}x{p.left.shape[0]}" for p in pairs})
    print(f"adapting {getattr(model, 'model_name', args.model)} ({args.model}) on {len(pairs)} pairs of "
          f"{getattr(source, 'description', args.data)} ({', '.join(sizes)}); {config.steps} steps"
          + (f", at most {config.time_budget_s:.0f} s" if config.time_budget_s else ""), flush=True)
    adapter = Adapter(model, config, device)
    before = adapter.self_supervised_loss(pairs)
    print(f"self-supervised loss before: {before['loss']:.4f}", flush=True)
    adapter.run(pairs, log_every=args.log_every, log=lambda s: print(s, flush=True))
    after = adapter.self_supervised_loss(pairs)
    print(f"self-supervised loss after {adapter.steps_done} steps ({adapter.seconds:.0f} s): {after['loss']:.4f}",
          flush=True)
    facts = {"start": args.model, "data": getattr(source, "description", args.data), "pairs": len(pairs),
             "pair_names": [p.name for p in pairs[:20]], "sizes": ", ".join(sizes), "steps": adapter.steps_done,
             "seconds": adapter.seconds, "cpu_seconds": adapter.cpu_seconds,
             "seconds_total": time.perf_counter() - t_start,
             "threads": torch.get_num_threads(), "device": device, "config": config.as_dict(),
             "self_supervised_before": before, "self_supervised_after": after,
             "command": "madis adapt " + " ".join(shlex.quote(a) for a in sys.argv[2:])
             if len(sys.argv) > 2 and sys.argv[1] == "adapt" else "(python API)"}
    out = write_adapted(adapter.export(), args.out, facts)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
