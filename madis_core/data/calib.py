"""Calibration files of the public stereo benchmarks -> StereoCamera.

* Middlebury 2014 / 2021 / MiddEval3 and ETH3D two-view ``calib.txt``::

      cam0=[3979.911 0 1244.772; 0 3979.911 1019.507; 0 0 1]
      cam1=[3979.911 0 1369.115; 0 3979.911 1019.507; 0 0 1]
      doffs=124.343        # cx1 - cx0, pixels
      baseline=193.001     # millimetres
      width=2964
      height=1988
      ndisp=270            # disparity search range
      isint=0, vmin=.., vmax=.., dyavg=.., dymax=..

  Z = baseline * f / (d + doffs).
* KITTI 2012 ``calib/NNNNNN.txt`` (``P0:`` .. ``P3:`` 3x4 rows) and KITTI 2015
  ``calib_cam_to_cam/NNNNNN.txt`` (``P_rect_02:``, ``P_rect_03:``, ``S_rect_02:``).
  The rectified P matrices of a pair both carry an offset relative to camera 0; the
  pair's baseline is ``(P_left[0,3] - P_right[0,3]) / fx``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

import numpy as np

from madis_core.camera import StereoCamera


class CalibrationError(ValueError):
    """A calibration file that cannot be parsed."""


def _matrix(text: str, path) -> np.ndarray:
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise CalibrationError(f"{path}: expected a [a b c; d e f; g h i] matrix, got {text!r}")
    try:
        rows = [[float(x) for x in r.replace(",", " ").split()] for r in body[1:-1].split(";")]
        m = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise CalibrationError(f"{path}: bad number in matrix {text!r}") from exc
    if m.shape != (3, 3):
        raise CalibrationError(f"{path}: expected a 3x3 matrix, got shape {m.shape} from {text!r}")
    return m


def parse_middlebury_calib(path) -> Dict[str, object]:
    """``calib.txt`` -> dict with ``cam0``/``cam1`` (3x3 arrays) and the numeric keys as
    floats (``doffs``, ``baseline`` [mm], ``width``, ``height``, ``ndisp``, ``vmin``...)."""
    path = Path(path)
    out: Dict[str, object] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise CalibrationError(f"{path}:{lineno}: expected key=value, got {raw!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        if key in ("cam0", "cam1"):
            out[key] = _matrix(value, path)
        else:
            try:
                out[key] = float(value)
            except ValueError as exc:
                raise CalibrationError(f"{path}:{lineno}: {key} is not a number: {value!r}") from exc
    missing = [k for k in ("cam0", "cam1", "baseline") if k not in out]
    if missing:
        raise CalibrationError(f"{path}: missing {', '.join(missing)}")
    return out


def middlebury_camera(calib: Dict[str, object], width: int | None = None, height: int | None = None) -> StereoCamera:
    """StereoCamera from a parsed ``calib.txt`` (baseline converted from mm to m),
    rescaled to ``width`` x ``height`` when the images differ from the calibration size."""
    k0, k1 = calib["cam0"], calib["cam1"]
    cw = int(calib.get("width", width or 0))
    ch = int(calib.get("height", height or 0))
    if cw <= 0 or ch <= 0:
        raise CalibrationError("calib.txt has no width/height and no image size was given")
    doffs = float(calib.get("doffs", k1[0, 2] - k0[0, 2]))
    cam = StereoCamera(cw, ch, float(k0[0, 0]), float(k0[1, 1]), float(k0[0, 2]), float(k0[1, 2]),
                       float(calib["baseline"]) / 1000.0, doffs)
    if width is not None and height is not None and (width, height) != (cw, ch):
        cam = cam.scaled(width, height)
    return cam


def parse_kitti_calib(path) -> Dict[str, np.ndarray]:
    """``KEY: v1 v2 ...`` lines -> dict of float arrays (non-numeric lines skipped)."""
    path = Path(path)
    out: Dict[str, np.ndarray] = {}
    for raw in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_]+)\s*:\s*(.*)$", raw)
        if not m:
            continue
        try:
            out[m.group(1)] = np.array([float(v) for v in m.group(2).split()], dtype=np.float64)
        except ValueError:
            continue  # e.g. calib_time: 09-Jan-2012 13:57:47
    return out


def kitti_camera(calib: Dict[str, np.ndarray], left_key: str, right_key: str, width: int, height: int,
                 path="calib") -> StereoCamera:
    """StereoCamera for the rectified pair (``left_key``, ``right_key``), e.g.
    (``P2``, ``P3``) for KITTI 2012 colour or (``P_rect_02``, ``P_rect_03``) for 2015."""
    for key in (left_key, right_key):
        if key not in calib or calib[key].size != 12:
            raise CalibrationError(f"{path}: missing 3x4 matrix {key}")
    pl = calib[left_key].reshape(3, 4).copy()
    pr = calib[right_key].reshape(3, 4).copy()
    # both P carry fx * t relative to camera 0; keep only the pair's relative offset
    pr[0, 3] -= pl[0, 3]
    pl[:, 3] = 0.0
    pr[1:, 3] = 0.0
    return StereoCamera.from_projection(pl, pr, width, height)

