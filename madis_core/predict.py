"""``madis predict LEFT RIGHT``: disparity (PFM, 16-bit PNG, colour PNG), and with a
calibration also depth (PFM metres, 16-bit PNG millimetres) and a coloured PLY cloud.
The pair goes through the same frame pipeline as the ROS node (``madis_core.pipeline``)
and the files come from the one output writer (``madis_core.output_files``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from madis_core.camera import StereoCamera
from madis_core.estimator import build_estimator, default_model
from madis_core.io import read_image
from madis_core.output_files import write_outputs
from madis_core.pipeline import ProcessingSettings, StereoFrameProcessor


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("left", help="rectified left image")
    p.add_argument("right", help="rectified right image")
    p.add_argument("--model", default=None, help="sgbm, a registry model with shipped weights, or a weights file "
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
    cal.add_argument("--max-depth", type=float, default=0.0, help="drop depth and cloud points beyond this depth (m)")


def run(args: argparse.Namespace) -> int:
    left, right = read_image(args.left), read_image(args.right)
    est = build_estimator(args.model or default_model(), device=args.device, precision=args.precision,
                          threads=args.threads)
    h, w = left.shape[:2]
    camera = None
    if args.fx and args.baseline:
        camera = StereoCamera(w, h, args.fx, args.fy or args.fx, args.cx if args.cx is not None else (w - 1) / 2,
                              args.cy if args.cy is not None else (h - 1) / 2, args.baseline, args.doffs)
    res = StereoFrameProcessor(est, ProcessingSettings(max_depth=args.max_depth or 0.0)).process(left, right, camera)
    d = res.disparity
    written = write_outputs(args.out, d, depth=res.depth, points=res.points, colors=res.colors,
                            confidence=res.confidence)
    summary = {"model": est.name, "device": est.device, "size": [w, h],
               "latency_ms": round(res.timings_ms["inference"], 2),
               "density_percent": round(100.0 * float(np.mean(np.isfinite(d) & (d > 0))), 2),
               "files": written["files"]}
    if camera is not None:
        summary["points"] = written["points"]
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0
