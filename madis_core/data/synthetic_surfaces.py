"""Surfaces of the synthetic stereo world (``madis_core.data.synthetic``): the per-surface
parameter table, footprints and their right-view solution in closed form, shading tables,
and the blurs that soften object edges. Pure functions of tensors and rows; the generator
samples the rows and renders with them.
"""
from __future__ import annotations

import math
from typing import Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# --- surface parameter table ------------------------------------------------------------
# One row per surface; the same formulas evaluate a row broadcast over an image crop
# or rows gathered per pixel, so footprints agree between the two code paths.
_COLUMNS = (
    # geometry
    "xc", "yc", "cos", "sin", "a", "b", "p", "wamp", "wfu", "wfv", "wpu", "wpv", "hole", "pfreq", "pthr", "inf",
    # disparity surface
    "c", "gx", "gy", "kk", "delta",
    # appearance
    "tile", "ts", "tcos", "tsin", "toffu", "toffv", "gain_r", "gain_g", "gain_b", "bias_r", "bias_g", "bias_b",
    "flat", "fc_r", "fc_g", "fc_b", "amb", "shx", "shy", "shq", "R", "spec", "spx", "spy", "spsig", "spshift",
)
COL = {name: i for i, name in enumerate(_COLUMNS)}
_GEOM = ("xc", "yc", "cos", "sin", "a", "b", "p", "wamp", "wfu", "wfv", "wpu", "wpv", "hole", "pfreq", "pthr",
         "inf", "c", "gx", "gy", "kk")
def _features(row: np.ndarray) -> Tuple[bool, bool, bool]:
    """Which optional footprint features a surface uses (wobble, hole, perforation)."""
    return bool(row[COL["wamp"]] > 0), bool(row[COL["hole"]] > 0), bool(row[COL["pthr"]] < 1.0)


_ALL_FEATURES = (True, True, True)


def _ipow(x: torch.Tensor, p) -> torch.Tensor:
    """x ** p, by multiplication for the exponents the generator draws (1, 2, 4, 8)."""
    if isinstance(p, float):
        if p == 1.0:
            return x
        if p == 2.0:
            return x * x
        if p == 4.0:
            x = x * x
            return x * x
        if p == 8.0:
            x = x * x
            x = x * x
            return x * x
    return x.pow(p)


def _iroot(x: torch.Tensor, p) -> torch.Tensor:
    """x ** (1/p), by square roots for p in (1, 2, 4, 8)."""
    if isinstance(p, float) and p in (1.0, 2.0, 4.0, 8.0):
        for _ in range({1.0: 0, 2.0: 1, 4.0: 2, 8.0: 3}[p]):
            x = x.sqrt()
        return x
    return x.pow(1.0 / p)


def _shape_mask(u, v, P, features: Tuple[bool, bool, bool] = _ALL_FEATURES):
    """Footprint test in surface-local coordinates ``u, v``: a superellipse
    ``(|u|/a)^p + (|v|/b)^p <= 1`` with optional wobble, hole and perforation.
    ``P`` holds the surface parameters (Python floats, or tensors with one value per
    pixel); ``features`` lets the per-surface path skip features that are off."""
    p = P["p"]
    s = _ipow(u.abs() * (1.0 / P["a"]), p) + _ipow(v.abs() * (1.0 / P["b"]), p)
    wobble, hole, perforated = features
    if not (wobble or hole):
        mask = s <= 1.0
    else:
        rho = _iroot(s, p)
        if wobble:
            rho = rho + P["wamp"] * torch.sin(P["wfu"] * u + P["wpu"]) * torch.sin(P["wfv"] * v + P["wpv"])
        mask = rho <= 1.0
        if hole:
            mask &= rho >= P["hole"]
    if perforated:
        mask &= ~((torch.cos(P["pfreq"] * u) > P["pthr"]) & (torch.cos(P["pfreq"] * v) > P["pthr"]))
    return mask


def _solve_right(xr, dy, P):
    """Left-image x of the surface point seen at right-image x ``xr`` on rows ``y``
    (``dy = y - yc``): closed-form root of ``kk t^2 - (1-gx) t + C0 = 0``.
    Returns (x_left, ok) where ok is False where the surface has no solution (None:
    always solvable)."""
    kk = P["kk"]
    bq = 1.0 - P["gx"]
    if isinstance(kk, float) and kk == 0.0:  # planar surface: linear
        return P["xc"] + ((xr - P["xc"] + P["c"]) + P["gy"] * dy) / bq, None
    c0 = (xr - P["xc"] + P["c"]) + (P["gy"] * dy + kk * dy * dy)
    disc = bq * bq - 4.0 * kk * c0
    ok = disc >= 0
    t = 2.0 * c0 / (bq + disc.clamp(min=0).sqrt())
    return P["xc"] + t, ok


# per-surface shading constants, gathered per pixel (folded so shading needs few ops)
_SHADE = ("xc", "yc", "c", "ox", "oy", "ts", "tcs", "tsn", "toffu", "toffv", "m_r", "m_g", "m_b", "o_r", "o_g", "o_b",
          "amb", "shx", "shy", "shq")
_SHADE_M = _SHADE.index("m_r")
_SHADE_O = _SHADE.index("o_r")
MAX_TEXELS_PER_PIXEL = 1.5
# view-dependent highlights, evaluated only on the pixels of specular surfaces
_SPECULAR = ("xc", "yc", "spec", "spx", "spy", "spinv", "spshift")


def _shading_tables(rows: np.ndarray, tile_origins: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """K x len(COL) surface rows -> (len(_SHADE) x K, len(_SPECULAR) x K) constants.
    colour = (texture * (1 - flat) + flat_colour * flat) * gain + bias = texture * m + o."""
    c = {n: rows[:, COL[n]] for n in _COLUMNS}
    gain = np.stack([c["gain_r"], c["gain_g"], c["gain_b"]])
    bias = np.stack([c["bias_r"], c["bias_g"], c["bias_b"]])
    fc = np.stack([c["fc_r"], c["fc_g"], c["fc_b"]])
    m = gain * (1.0 - c["flat"])
    o = gain * fc * c["flat"] + bias
    origin = tile_origins[c["tile"].astype(np.int64)]
    out = {
        "xc": c["xc"], "yc": c["yc"], "c": c["c"], "ox": origin[:, 0], "oy": origin[:, 1],
        "ts": c["ts"], "tcs": c["tcos"], "tsn": c["tsin"], "toffu": c["toffu"], "toffv": c["toffv"],
        "m_r": m[0], "m_g": m[1], "m_b": m[2], "o_r": o[0], "o_g": o[1], "o_b": o[2],
        "amb": c["amb"], "shx": c["shx"], "shy": c["shy"], "shq": c["shq"] / (c["R"] * c["R"]),
        "spec": c["spec"], "spx": c["spx"], "spy": c["spy"], "spinv": 1.0 / (2.0 * c["spsig"] ** 2),
        "spshift": c["spshift"],
    }
    return np.stack([out[n] for n in _SHADE]), np.stack([out[n] for n in _SPECULAR])


def _soften_edges(col: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Real pixels at an object boundary integrate both surfaces; rendering point
    samples gives hard, aliased edges instead. Blend the pixels on either side of a
    surface boundary with their 3x3 mean (the ground truth stays sharp)."""
    edge = torch.zeros_like(ids, dtype=torch.bool)
    dx = ids[:, 1:] != ids[:, :-1]
    dy = ids[1:] != ids[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    p = F.pad(col[None], (1, 1, 1, 1), mode="replicate")[0]  # separable 3x3 box sum (faster than avg_pool2d)
    rows = p[:, :, :-2] + p[:, :, 1:-1] + p[:, :, 2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    return torch.where(edge[None], col * 0.5 + box * (0.5 / 9.0), col)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a 3 x H x W image (OpenCV on the CPU: several times faster)."""
    if img.device.type == "cpu":
        out = torch.empty_like(img)
        src, dst = img.contiguous().numpy(), out.numpy()
        for c in range(src.shape[0]):
            cv2.GaussianBlur(src[c], (0, 0), sigma, dst=dst[c], borderType=cv2.BORDER_REPLICATE)
        return out
    return _gaussian_blur(img[None], np.array([sigma]))[0]


def _gaussian_blur(img: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (0 = unchanged)."""
    B, C, H, W = img.shape
    radius = max(1, int(math.ceil(2.5 * float(sigmas.max()))))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.zeros((B, 2 * radius + 1))
    for i, s in enumerate(sigmas):
        if s < 0.05:
            k[i, radius] = 1.0
        else:
            k[i] = np.exp(-x * x / (2 * s * s))
            k[i] /= k[i].sum()
    kt = torch.tensor(np.repeat(k, C, axis=0), dtype=img.dtype, device=img.device)  # (B*C) x K
    x4 = F.pad(img.reshape(1, B * C, H, W), (radius, radius, radius, radius), mode="replicate")
    x4 = F.conv2d(x4, kt[:, None, None, :], groups=B * C)
    x4 = F.conv2d(x4, kt[:, None, :, None], groups=B * C)
    return x4.reshape(B, C, H, W)
