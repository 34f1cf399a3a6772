"""``madis evaluate``: accuracy and latency of stereo models on datasets, side by side.

    madis evaluate --model student --model run/best.safetensors --dataset motorcycle \\
                   --dataset synthetic-test --dataset kitti2015:/data/kitti --json results.json

OpenCV SGBM is always in the comparison (the baseline every learned model must beat);
a classical method's search range follows the dataset's documented disparity range (at
least its default, 128).
Metrics are over the pixels with valid ground truth; holes count as errors (see
``madis_core.metrics``); latency is the mean wall time of ``StereoEstimator.predict``
per pair after one untimed warm-up call.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from madis_core import runtime
from madis_core.estimator import build_estimator, is_classical
from madis_core.metrics import aggregate_metrics, compute_metrics
from madis_core.models.classical import SGBM_DEFAULT_DISPARITIES

log = logging.getLogger(__name__)

TABLE_COLUMNS = (("model", "model", "s"), ("dataset", "dataset", "s"), ("epe", "EPE", ".3f"),
                 ("bad_0.5", "bad-0.5", ".2f"), ("bad_1", "bad-1", ".2f"), ("bad_2", "bad-2", ".2f"),
                 ("bad_3", "bad-3", ".2f"), ("d1", "D1", ".2f"), ("density", "density", ".1f"),
                 ("latency_ms", "ms/pair", ".1f"), ("samples", "pairs", "d"))


def evaluate(estimator, samples: Sequence[Dict[str, Any]], max_samples: Optional[int] = None,
             warmup: bool = True) -> Dict[str, float]:
    """Run ``estimator`` over ``samples`` (sample dicts with ground truth) and return the
    pixel-weighted metrics (``madis_core.metrics``) plus ``latency_ms`` (mean per pair)
    and ``samples`` (how many pairs were evaluated)."""
    n = len(samples) if max_samples is None else min(len(samples), int(max_samples))
    if n <= 0:
        raise ValueError("evaluate: no samples to evaluate")
    per_sample: List[Dict[str, float]] = []
    times: List[float] = []
    for i in range(n):
        s = samples[i]
        if i == 0 and warmup:
            estimator.predict(s["left"], s["right"])
        t0 = time.perf_counter()
        res = estimator.predict(s["left"], s["right"])
        times.append((time.perf_counter() - t0) * 1e3)
        per_sample.append(compute_metrics(res.disparity, s["disparity"], s.get("valid")))
    out = aggregate_metrics(per_sample)
    out["latency_ms"] = float(sum(times) / len(times))
    out["samples"] = n
    return out


def _fmt(value: Any, spec: str) -> str:
    if spec == "s":
        return str(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(results: Iterable[Dict[str, Any]]) -> str:
    """One row per (model, dataset) result dict, aligned columns."""
    rows = [[h for _, h, _ in TABLE_COLUMNS]]
    for r in results:
        rows.append([_fmt(r.get(k), spec) for k, _, spec in TABLE_COLUMNS])
    widths = [max(len(row[c]) for row in rows) for c in range(len(TABLE_COLUMNS))]
    lines = []
    for j, row in enumerate(rows):
        cells = [cell.ljust(w) if TABLE_COLUMNS[c][2] == "s" else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def search_range(dataset) -> float:
    """A classical method's search range for a dataset: its documented maximum disparity,
    at least the method's default range."""
    md = dataset.max_disparity if dataset is not None else None
    return max(float(md or 0.0), float(SGBM_DEFAULT_DISPARITIES))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], metavar="NAME|PATH",
                        help="backend (sgbm, sgbm-3way), registry model with shipped weights, or weights file; repeatable")
    parser.add_argument("--dataset", action="append", default=[], metavar="SPEC",
                        help="motorcycle, synthetic-test[:N], sceneflow:ROOT, kitti2012:ROOT, kitti2015:ROOT, "
                             "middlebury:ROOT, eth3d:ROOT, folder:ROOT; repeatable (default: motorcycle and synthetic-test)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON here")
    parser.add_argument("--max-samples", type=int, default=None, metavar="N", help="evaluate at most N pairs per dataset")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--runtime", default="torch", choices=("torch", "onnxruntime"))
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU inference threads for every model (default auto, madis_core/runtime.py)")
    parser.add_argument("--random-init", action="store_true",
                        help="untrained registry models (pipeline checks and timing only)")


def _build(name: str, args, dataset=None):
    return build_estimator(name, device=args.device, precision=args.precision, runtime=args.runtime,
                           random_init=args.random_init, max_disparity=search_range(dataset),
                           threads=getattr(args, "threads", None))


def run(args: argparse.Namespace) -> int:
    from madis_core.data import build_dataset

    if args.max_samples is not None and args.max_samples < 1:
        raise ValueError(f"--max-samples must be >= 1, got {args.max_samples}")
    models = list(dict.fromkeys(args.model))
    if not any(is_classical(m) for m in models):
        models.insert(0, "sgbm")
    specs = args.dataset or ["motorcycle", "synthetic-test"]
    datasets = [(spec, build_dataset(spec)) for spec in specs]
    learned = {m: _build(m, args) for m in models if not is_classical(m)}  # load each network once
    results = []
    for spec, ds in datasets:
        for m in models:
            est = _build(m, args, ds) if is_classical(m) else learned[m]
            log.info("evaluating %s on %s (%d pairs)", est.name, spec, len(ds) if args.max_samples is None else min(len(ds), args.max_samples))
            r = evaluate(est, ds, args.max_samples)
            results.append({"model": m, "dataset": spec, "device": est.device, **r})
    print(format_table(results))
    if args.json:
        import torch

        payload = {"results": results,
                   "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                   "threads": getattr(args, "threads", None) or "auto",
                                   "cpu": runtime.describe(), "machine": platform.machine(),
                                   "processor": platform.processor() or platform.machine()}}
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {out}")
    return 0
