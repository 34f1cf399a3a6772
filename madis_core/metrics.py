"""Stereo accuracy metrics over the pixels with valid ground truth.

Holes in the prediction (NaN, inf or <= 0) count as errors for bad-N and D1, so a
sparse method cannot look good by refusing hard pixels; ``density`` reports the
share it filled. EPE is the mean absolute error over the filled pixels only.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import numpy as np

BAD_THRESHOLDS = (0.5, 1.0, 2.0, 3.0, 4.0)
METRIC_KEYS = ("epe", "bad_0.5", "bad_1", "bad_2", "bad_3", "bad_4", "d1", "density")


def _key(t: float) -> str:
    return f"bad_{t:g}"


def ground_truth_mask(gt: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """The pixels every metric here is over: finite, positive ground truth (and ``valid``)."""
    gt = np.asarray(gt, dtype=np.float64)
    mask = np.isfinite(gt) & (gt > 0)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != gt.shape:
            raise ValueError(f"valid mask {valid.shape} and ground truth {gt.shape} differ in shape")
        mask &= valid
    return mask


def error_map(pred: np.ndarray, gt: np.ndarray, valid: Optional[np.ndarray] = None):
    """Per-pixel absolute error (``inf`` where the prediction is a hole: NaN, inf or <= 0)
    and ``ground_truth_mask``, both full-size: the rule every metric here uses, so
    per-region breakdowns can select from them."""
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    mask = ground_truth_mask(gt, valid)
    filled = np.isfinite(pred) & (pred > 0)
    with np.errstate(invalid="ignore"):
        err = np.where(filled, np.abs(pred - gt), np.inf)
    return err, mask


def compute_metrics(pred: np.ndarray, gt: np.ndarray, valid: Optional[np.ndarray] = None) -> Dict[str, float]:
    err, mask = error_map(pred, gt, valid)
    n = int(mask.sum())
    out: Dict[str, float] = {"n": float(n)}
    if n == 0:
        out.update({k: float("nan") for k in METRIC_KEYS})
        return out
    err, g = err[mask], np.asarray(gt, dtype=np.float64)[mask]
    filled = np.isfinite(err)
    out["epe"] = float(err[filled].mean()) if filled.any() else float("nan")
    for t in BAD_THRESHOLDS:
        out[_key(t)] = float(100.0 * np.mean(err > t))
    out["d1"] = float(100.0 * np.mean((err > 3.0) & (err > 0.05 * g)))
    out["density"] = float(100.0 * filled.mean())
    out["n_filled"] = float(filled.sum())
    return out


def aggregate_metrics(results: Iterable[Dict[str, float]]) -> Dict[str, float]:
    """Pixel-weighted means over several images (EPE weighted by filled pixels)."""
    results = [r for r in results if r.get("n", 0) > 0]
    if not results:
        return {"n": 0.0, **{k: float("nan") for k in METRIC_KEYS}}
    n = np.array([r["n"] for r in results])
    nf = np.array([r.get("n_filled", r["n"] * r["density"] / 100.0) for r in results])
    out = {"n": float(n.sum()), "n_filled": float(nf.sum())}
    for k in METRIC_KEYS:
        vals = np.array([r[k] for r in results])
        if k == "epe":
            ok = nf > 0
            out[k] = float((vals[ok] * nf[ok]).sum() / nf[ok].sum()) if ok.any() else float("nan")
        else:
            out[k] = float((vals * n).sum() / n.sum())
    return out
