"""Accuracy of the shipped models against OpenCV SGBM, in one run (issue 7's table).

    python benchmarks/accuracy.py                       # shipped models + SGBM
    python benchmarks/accuracy.py --extra distilled=runs/x/model.safetensors --json acc.json

Datasets: the real Middlebury Motorcycle pair (scikit-image, full 741x500, every pixel
with ground truth, holes count as errors) and the fixed seeded synthetic test set.
Models: the classical registry entries (sgbm, sgbm-3way), every registry model with weights
under madis_core/weights/, and any --extra NAME=WEIGHTS (ablation runs).
"""
from __future__ import annotations

import argparse
import json
import sys

import madis_core  # noqa: E402,F401  (first: the thread policy, madis_core/runtime.py)
import torch  # noqa: E402

from madis_core.checkpoint import shipped_weights  # noqa: E402
from madis_core.data import build_dataset  # noqa: E402
from madis_core.estimator import build_estimator, is_classical  # noqa: E402
from madis_core.evaluate import evaluate, format_table, search_range  # noqa: E402
from madis_core.models import list_models  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="motorcycle,synthetic-test")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=WEIGHTS", help="another weights file to compare")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [(name, name) for name in list_models() if is_classical(name) or shipped_weights(name) is not None]
    for item in args.extra:
        name, _, path = item.partition("=")
        if not path:
            ap.error(f"--extra wants NAME=WEIGHTS, got {item!r}")
        models.append((name, path))
    rows = []
    for spec in args.datasets.split(","):
        data = build_dataset(spec)
        for label, source in models:
            est = build_estimator(source, device=args.device, max_disparity=search_range(data), threads=args.threads)
            row = {"model": label, "dataset": spec, **evaluate(est, data)}
            rows.append(row)
            print(f"  evaluated {label} on {spec}", file=sys.stderr, flush=True)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
