"""Where a model's bad-2 pixels on the real Motorcycle pair are: occluded, near a depth
edge, low texture or elsewhere (the measurement that says what to improve next).

    python benchmarks/error_breakdown.py                      # shipped student and SGBM
    python benchmarks/error_breakdown.py --model student-lite --model runs/x/model.safetensors

Each pixel with ground truth gets one region, first match wins:
- occluded: its match in the right view is hidden by a nearer surface (from the
  ground-truth disparity: another pixel on the row lands within 0.5 px of the same
  right-view column with a disparity more than 1 px larger), or it falls off the
  right image;
- depth edge: ground-truth disparity varies by more than 3 px within 2 px;
- low texture: local mean Sobel gradient in the lowest quarter of the image's;
- other: the rest.
Every figure is a share of all pixels with ground truth, so the regions' bad-2 shares
add up to the model's bad-2 (holes count as errors, as in benchmarks/accuracy.py).
Optionally saves the |error| map (white = 8 px or more) with --save-error-map.
"""
from __future__ import annotations

import argparse
import os
import sys

import madis_core  # noqa: E402,F401  (first: the thread policy, madis_core/runtime.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from madis_core.data import build_dataset  # noqa: E402
from madis_core.estimator import build_estimator  # noqa: E402
from madis_core.evaluate import search_range  # noqa: E402
from madis_core.metrics import error_map, ground_truth_mask  # noqa: E402


def occlusion_mask(gt: np.ndarray) -> np.ndarray:
    """Left-view pixels whose right-view match is occluded or outside the image."""
    h, w = gt.shape
    occ = np.zeros((h, w), bool)
    d = np.nan_to_num(gt, nan=-1.0)
    for y in range(h):
        row = d[y]
        xr = np.arange(w) - row
        order = np.argsort(-row)  # nearest surfaces first
        seen = np.full(2 * w + 2, -np.inf)  # largest disparity landed on each half-pixel bin
        for x in order:
            if row[x] < 0:
                continue
            if xr[x] < 0:
                occ[y, x] = True
                continue
            b = int(round(xr[x] * 2))
            if max(seen[b], seen[max(b - 1, 0)], seen[b + 1]) > row[x] + 1:
                occ[y, x] = True
            seen[b] = max(seen[b], row[x])
    return occ


def regions(sample, valid: np.ndarray) -> dict:
    """One boolean mask per region over the pixels in ``valid`` (those with ground truth)."""
    gt = sample["disparity"]
    occ = occlusion_mask(gt) & valid
    filled = np.where(valid, gt, np.nanmedian(gt))
    edge = (ndimage.maximum_filter(filled, 5) - ndimage.minimum_filter(filled, 5) > 3) & valid & ~occ
    gray = sample["left"].astype(np.float32).mean(2)
    texture = ndimage.uniform_filter(np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1)), 9)
    low = (texture < np.percentile(texture[valid], 25)) & valid & ~occ & ~edge
    other = valid & ~occ & ~edge & ~low
    return {"occluded": occ, "depth edge": edge, "low texture": low, "other": other}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None, help="registry name, weights file or sgbm (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-error-map", default=None, metavar="DIR", help="write DIR/<model>_error.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = build_dataset("motorcycle")
    sample = data[0]
    gt = sample["disparity"]
    valid = ground_truth_mask(gt, sample.get("valid"))
    n = valid.sum()
    masks = regions(sample, valid)
    names = list(masks)
    print("share of pixels with ground truth: " + ", ".join(f"{k} {100 * masks[k].sum() / n:.1f} %" for k in names))
    print("| model | bad-2 % | " + " | ".join(f"bad-2 in {k} (% of all)" for k in names) + " |")
    print("| --- " * (2 + len(names)) + "|")
    for spec in args.model or ["sgbm", "student"]:
        pred = build_estimator(spec, max_disparity=search_range(data), threads=args.threads).predict(sample["left"], sample["right"]).disparity
        err, _ = error_map(pred, gt, sample.get("valid"))  # holes are inf: they count as errors
        bad = valid & (err > 2)
        cells = [f"{100 * (bad & masks[k]).sum() / n:.2f}" for k in names]
        print(f"| {spec} | {100 * bad.sum() / n:.2f} | " + " | ".join(cells) + " |")
        if args.save_error_map:
            from PIL import Image

            os.makedirs(args.save_error_map, exist_ok=True)
            shade = np.where(valid, np.clip(err / 8.0, 0, 1), 0)
            label = os.path.basename(spec).replace(".safetensors", "")
            Image.fromarray((shade * 255).astype(np.uint8)).save(os.path.join(args.save_error_map, f"{label}_error.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
