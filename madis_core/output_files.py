"""One writer for a frame's outputs as files (``madis predict``, the demo):

    written = write_outputs(out_dir, disparity, depth=depth, points=points, colors=colors,
                            confidence=conf, prefix="")
    written["files"]   # names relative to out_dir, in writing order
    written["points"]  # finite points in the PLY (0 without points)

Files: ``disparity.pfm`` (float32, invalid = inf), ``disparity.png`` (KITTI 16-bit, value/256
px, 0 invalid), ``disparity_color.png`` (turbo, invalid black), ``confidence.pfm``,
``depth.pfm`` (metres, invalid = inf), ``depth_mm.png`` (16-bit millimetres, 0 invalid) and
``cloud.ply`` (binary, finite points, RGB when ``colors`` is given); each only when its
array is given. ``prefix`` may name a subfolder (``frames/left_``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from madis_core.io import (PathLike, colorize_disparity, depth_to_millimetres, write_disparity_png, write_image,
                           write_pfm, write_ply)


def write_outputs(out_dir: PathLike, disparity: np.ndarray, depth: Optional[np.ndarray] = None,
                  points: Optional[np.ndarray] = None, colors: Optional[np.ndarray] = None,
                  confidence: Optional[np.ndarray] = None, prefix: str = "",
                  color_max_disparity: Optional[float] = None) -> Dict[str, Any]:
    out = Path(out_dir)
    files = []

    def path(name: str) -> Path:
        files.append(prefix + name)
        p = out / (prefix + name)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    write_pfm(path("disparity.pfm"), np.nan_to_num(disparity, nan=np.inf))
    write_disparity_png(path("disparity.png"), disparity)
    write_image(path("disparity_color.png"), colorize_disparity(disparity, max_disparity=color_max_disparity))
    if confidence is not None:
        write_pfm(path("confidence.pfm"), confidence)
    if depth is not None:
        write_pfm(path("depth.pfm"), np.nan_to_num(depth, nan=np.inf))
        write_image(path("depth_mm.png"), depth_to_millimetres(depth))
    n_points = 0
    if points is not None:
        n_points = write_ply(path("cloud.ply"), points, colors)
    return {"files": files, "points": n_points}
