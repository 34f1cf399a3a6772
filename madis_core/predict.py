"""``madis predict LEFT RIGHT``: disparity (PFM, 16-bit PNG, colour PNG), and with a
calibration also depth (PFM metres, 16-bit PNG millimetres) and a coloured PLY cloud."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from madis_core.camera import StereoCamera
from madis_core.estimator import StereoEstimator
from madis_core.io import colorize_disparity, depth_to_millimetres, read_image, write_disparity_png, write_image, write_pfm, write_ply


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("left", help="rectified left image")
    p.add_argument("right", help="rectified right image")
    p.add_argument("--model", default=None, help="backend (sgbm), registry model with shipped weights, or a weights file "
                   "(default: the shipped student, else sgbm)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--threads", type=int, default=None, help="CPU inference threads (default auto, madis_core/runtime.py)")
    p.add_argument("--out", default="predict_out", help="output folder")
    cal = p.add_argument_group("calibration (for depth and the point cloud)")
    cal.add_argument("--fx", type=float, help="focal length in px")
    cal.add_argument("--fy", type=float, help="vertical focal length in px (default fx)")
    cal.add_argument("--cx", type=float, help="principal point x (default image centre)")
    cal.add_argument("--cy", type=float, help="principal point y (default image centre)")
    cal.add_argument("--baseline", type=float, help="baseline in metres")
    cal.add_argument("--doffs", type=float, default=0.0, help="cx_right - cx_left in px")
    cal.add_argument("--max-depth", type=float, default=None, help="drop cloud points beyond this depth (m)")


def default_model() -> str:
    from madis_core.checkpoint import shipped_weights

    return "student" if shipped_weights("student") is not None else "sgbm"


def run(args: argparse.Namespace) -> int:
    left, right = read_image(args.left), read_image(args.right)
    est = StereoEstimator.from_pretrained(args.model or default_model(), device=args.device, precision=args.precision,
                                          threads=args.threads)
    res = est.predict(left, right)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    d = res.disparity
    write_pfm(out / "disparity.pfm", np.nan_to_num(d, nan=np.inf))
    write_disparity_png(out / "disparity.png", d)
    write_image(out / "disparity_color.png", colorize_disparity(d))
    summary = {"model": est.name, "device": est.device, "size": [left.shape[1], left.shape[0]],
               "latency_ms": round(res.timings_ms.get("total", float("nan")), 2),
               "density_percent": round(100.0 * float(np.mean(np.isfinite(d) & (d > 0))), 2),
               "files": ["disparity.pfm", "disparity.png", "disparity_color.png"]}
    if res.confidence is not None:
        write_pfm(out / "confidence.pfm", res.confidence)
        summary["files"].append("confidence.pfm")
    if args.fx and args.baseline:
        h, w = d.shape
        cam = StereoCamera(w, h, args.fx, args.fy or args.fx, args.cx if args.cx is not None else (w - 1) / 2,
                           args.cy if args.cy is not None else (h - 1) / 2, args.baseline, args.doffs)
        depth = cam.disparity_to_depth(d)
        write_pfm(out / "depth.pfm", np.nan_to_num(depth, nan=np.inf))
        write_image(out / "depth_mm.png", depth_to_millimetres(depth))
        pts = cam.depth_to_points(depth)
        if args.max_depth:
            pts[depth > args.max_depth] = np.nan
        rgb = left if left.ndim == 3 else np.repeat(left[..., None], 3, axis=2)
        if rgb.dtype == np.uint16:
            rgb = (rgb >> 8).astype(np.uint8)
        summary["points"] = write_ply(out / "cloud.ply", pts, rgb)
        summary["files"] += ["depth.pfm", "depth_mm.png", "cloud.ply"]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0
