"""Training augmentation for stereo batches (torch tensors; CPU or GPU; seeded).

The recipe of strong public trainers (design/data.md): random crop; independent x/y
scaling (disparity scales with x); colour jitter, per view 20 % of the time so the
two views stop sharing exact statistics; vertical flip of both views (keeps the
epipolar geometry, unlike a horizontal flip); "eraser" boxes on the right view
(simulated occlusions that force the network to infer from context); a small
vertical shift / rotation of the right view (imperfect rectification).

Every function takes a ``numpy.random.Generator`` so a batch is a pure function of
the seed that made the generator. Tensors: images B x 3 x H x W float in [0, 1],
disparity B x 1 x H x W (px), valid B x 1 x H x W bool.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_DEFAULTS: Dict[str, Any] = {
    # spatial (dataset samples; synthetic pairs are generated at the crop size)
    "scale_prob": 0.8, "scale_log2": (-0.2, 0.4), "stretch_prob": 0.8, "stretch_log2": 0.2,
    # photometric
    "color_prob": 1.0, "asymmetric_prob": 0.2, "brightness": 0.4, "contrast": 0.4,
    "saturation": (0.0, 1.4), "hue": 0.16,
    # right-view occlusion patches
    "eraser_prob": 0.5, "eraser_boxes": (1, 2), "eraser_size": (50, 100),
    # geometry of both / the right view
    "vflip_prob": 0.1, "yjitter_prob": 0.5, "yjitter_max": 2.0, "yrot_deg": 0.1,
}


def augment_options(options: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """Defaults merged with ``options``; ``False``/``{"enabled": False}`` -> None (off)."""
    if options is False:
        return None
    options = dict(options or {})
    if not options.pop("enabled", True):
        return None
    unknown = set(options) - set(AUGMENT_DEFAULTS)
    if unknown:
        raise ValueError(f"augment: unknown options {sorted(unknown)}; known: {sorted(AUGMENT_DEFAULTS)}")
    return {**AUGMENT_DEFAULTS, **options}


# --- spatial ------------------------------------------------------------------------------
def random_scale_crop(sample: Dict[str, torch.Tensor], crop: Tuple[int, int], rng: np.random.Generator,
                      opts: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Scale one sample (tensors 1 x C x H x W) by (sx, sy) and cut a random crop.
    Images: bilinear (antialiased when shrinking); disparity and valid: nearest (sharp
    depth edges, sparse ground truth stays sparse); disparity multiplied by sx."""
    ch, cw = crop
    _, _, h, w = sample["left"].shape
    sx = sy = 1.0
    if opts and rng.random() < opts["scale_prob"]:
        s = 2.0 ** rng.uniform(*opts["scale_log2"])
        sx = sy = s
        if rng.random() < opts["stretch_prob"]:
            sx *= 2.0 ** rng.uniform(-opts["stretch_log2"], opts["stretch_log2"])
            sy *= 2.0 ** rng.uniform(-opts["stretch_log2"], opts["stretch_log2"])
    sx, sy = max(sx, cw / w), max(sy, ch / h)  # never smaller than the crop
    out = dict(sample)
    if (sx, sy) != (1.0, 1.0):
        nh, nw = max(ch, int(round(h * sy))), max(cw, int(round(w * sx)))
        sx = nw / w  # the exact factor the resize applies
        shrink = nh < h or nw < w
        for k in ("left", "right"):
            out[k] = F.interpolate(sample[k], size=(nh, nw), mode="bilinear", align_corners=False,
                                   antialias=shrink).clamp_(0, 1)
        out["disparity"] = F.interpolate(sample["disparity"], size=(nh, nw), mode="nearest") * sx
        out["valid"] = F.interpolate(sample["valid"].float(), size=(nh, nw), mode="nearest") > 0.5
        h, w = nh, nw
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    for k in ("left", "right", "disparity", "valid"):
        out[k] = out[k][..., y0:y0 + ch, x0:x0 + cw]
    return out


# --- photometric --------------------------------------------------------------------------
def _color_matrix(rng: np.random.Generator, opts: Mapping[str, Any]) -> Tuple[np.ndarray, float]:
    """3x3 linear colour transform (brightness, saturation, hue rotation) and a contrast factor."""
    b = rng.uniform(1 - opts["brightness"], 1 + opts["brightness"])
    s = rng.uniform(*opts["saturation"])
    hue = rng.uniform(-opts["hue"], opts["hue"]) * 2 * math.pi
    c = rng.uniform(1 - opts["contrast"], 1 + opts["contrast"])
    gray = np.array([0.299, 0.587, 0.114])
    sat = s * np.eye(3) + (1 - s) * np.ones((3, 1)) * gray[None, :]
    # hue: rotate the chroma plane (YIQ)
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    rot = np.array([[1, 0, 0], [0, math.cos(hue), -math.sin(hue)], [0, math.sin(hue), math.cos(hue)]])
    m = b * (np.linalg.inv(yiq) @ rot @ yiq) @ sat
    return m, c


def color_jitter(left: torch.Tensor, right: torch.Tensor, rng: np.random.Generator,
                 opts: Mapping[str, Any]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Brightness, contrast, saturation, hue; the same for both views, or (with
    ``asymmetric_prob``) drawn separately for each view."""
    B = left.shape[0]
    mats = np.tile(np.eye(3), (2, B, 1, 1))
    con = np.ones((2, B))
    for i in range(B):
        if rng.random() >= opts["color_prob"]:
            continue
        mats[0, i], con[0, i] = _color_matrix(rng, opts)
        if rng.random() < opts["asymmetric_prob"]:
            mats[1, i], con[1, i] = _color_matrix(rng, opts)
        else:
            mats[1, i], con[1, i] = mats[0, i], con[0, i]
    out = []
    gray = torch.tensor([0.299, 0.587, 0.114], dtype=left.dtype, device=left.device)
    for v, img in enumerate((left, right)):
        b, _, h, w = img.shape
        m = torch.tensor(mats[v], dtype=img.dtype, device=img.device)
        x = torch.bmm(m, img.reshape(b, 3, h * w)).clamp_(0, 1)
        mean = (gray @ x).mean(dim=1)  # B: mean luminance
        c = torch.tensor(con[v], dtype=img.dtype, device=img.device)
        # (x - mean) * c + mean
        x.mul_(c.view(b, 1, 1)).add_(((1 - c) * mean).view(b, 1, 1)).clamp_(0, 1)
        out.append(x.view(b, 3, h, w))
    return out[0], out[1]


def eraser(right: torch.Tensor, rng: np.random.Generator, opts: Mapping[str, Any]) -> torch.Tensor:
    """Fill 1-2 random boxes of the right view with its mean colour (half the time)."""
    B, _, H, W = right.shape
    out = right.clone()
    lo, hi = opts["eraser_size"]
    for i in range(B):
        if rng.random() >= opts["eraser_prob"]:
            continue
        mean = right[i].mean(dim=(1, 2), keepdim=True)
        for _ in range(int(rng.integers(opts["eraser_boxes"][0], opts["eraser_boxes"][1] + 1))):
            bw = int(min(rng.uniform(lo, hi), W // 2))
            bh = int(min(rng.uniform(lo, hi), H // 2))
            x0, y0 = int(rng.integers(0, W - bw + 1)), int(rng.integers(0, H - bh + 1))
            out[i, :, y0:y0 + bh, x0:x0 + bw] = mean
    return out


# --- geometry -----------------------------------------------------------------------------
def vertical_flip(batch: Dict[str, torch.Tensor], rng: np.random.Generator, opts: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Flip both views (and the ground truth) upside down for some samples."""
    flip = torch.from_numpy(rng.random(batch["left"].shape[0]) < opts["vflip_prob"])
    if not bool(flip.any()):
        return batch
    out = dict(batch)
    idx = flip.nonzero().flatten().to(batch["left"].device)
    for k in ("left", "right", "disparity", "valid"):
        out[k] = batch[k].index_copy(0, idx, batch[k][idx].flip(-2))
    return out


def right_vertical_jitter(right: torch.Tensor, rng: np.random.Generator, opts: Mapping[str, Any]) -> torch.Tensor:
    """Shift the right view vertically by up to ``yjitter_max`` px and rotate it by up to
    ``yrot_deg`` (imperfect rectification); the left-view ground truth is unchanged."""
    B, _, H, W = right.shape
    rows, thetas = [], []
    for i in range(B):
        if rng.random() >= opts["yjitter_prob"]:
            continue
        dy = rng.uniform(-opts["yjitter_max"], opts["yjitter_max"])
        a = math.radians(rng.uniform(-opts["yrot_deg"], opts["yrot_deg"]))
        rows.append(i)
        thetas.append([[math.cos(a), -math.sin(a) * H / W, 0.0], [math.sin(a) * W / H, math.cos(a), 2.0 * dy / H]])
    if not rows:
        return right
    idx = torch.tensor(rows, device=right.device)
    theta = torch.tensor(thetas, dtype=right.dtype, device=right.device)
    grid = F.affine_grid(theta, (len(rows), 3, H, W), align_corners=False)
    moved = F.grid_sample(right[idx], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return right.index_copy(0, idx, moved)


def augment_batch(batch: Dict[str, torch.Tensor], rng: np.random.Generator, opts: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Photometric and geometric augmentation of a cropped batch (see module docstring)."""
    out = dict(batch)
    out["left"], out["right"] = color_jitter(batch["left"], batch["right"], rng, opts)
    out["right"] = eraser(out["right"], rng, opts)
    out["right"] = right_vertical_jitter(out["right"], rng, opts)
    return vertical_flip(out, rng, opts)
