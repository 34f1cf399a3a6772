"""The two cameras of the synthetic world (``madis_core.data.synthetic``): per-sample photometric
differences between the views (blur, contrast, brightness, colour gains, tone curve, sensor
noise) and an optional rectification error of the right view, drawn up front and applied to
each rendered view.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from madis_core.data.synthetic_surfaces import _blur


def camera_params(o: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
    """Per-sample differences between the two cameras for options ``o`` (drawn in order, in the
    main thread, so a batch does not depend on how its rendering is scheduled)."""
    p: Dict[str, Any] = {}
    if o["photometric"]:
        # a mild blur on each view, plus a stronger one on one view half the time
        base = rng.uniform(0.0, 0.5, 2) * (rng.random(2) < 0.5)
        extra = np.zeros(2)
        if rng.random() < 0.5:
            extra[rng.integers(2)] = rng.uniform(0.3, max(0.3, o["blur_max"]))
        p["blur"] = np.hypot(base, extra)
        p["contrast"] = rng.uniform(0.8, 1.2, 2)
        p["bright"] = rng.uniform(-0.08, 0.08, 2)
        p["gains"] = rng.uniform(0.92, 1.08, (2, 3))
        p["tone"] = rng.uniform(-0.25, 0.25, 2)  # y = x + k x (1 - x): gamma ~0.8..1.25, cheaper than pow
        p["noise"] = rng.uniform(0.0, o["noise_max"], 2)
        p["noise_seed"] = int(rng.integers(2**62))
    if o["rectification_error_prob"] > 0 and rng.random() < o["rectification_error_prob"]:
        p["rectification"] = (math.radians(rng.uniform(-o["max_rotation_deg"], o["max_rotation_deg"])),
                              rng.uniform(-o["max_vertical_shift"], o["max_vertical_shift"]))
    return p


def apply_camera(img: torch.Tensor, view: int, p: Dict[str, Any], gen: Optional[torch.Generator]) -> torch.Tensor:
    """Apply one camera's blur, contrast/brightness/colour gains, tone curve, noise
    and (right view) rectification error to a 3 x H x W image."""
    dev = img.device
    if "blur" in p:
        if p["blur"][view] > 0.05:
            img = _blur(img, float(p["blur"][view]))
        c, gains = float(p["contrast"][view]), p["gains"][view]
        mean = float(img.mean())
        # ((x - mean) * contrast + mean + bright) * gain  ==  x * scale + offset
        scale = torch.tensor(c * gains, dtype=img.dtype, device=dev).view(3, 1, 1)
        offset = torch.tensor(((1 - c) * mean + p["bright"][view]) * gains, dtype=img.dtype, device=dev).view(3, 1, 1)
        img = torch.addcmul(offset, img, scale).clamp_(0, 1)
        tone = float(p["tone"][view])
        img.mul_(img.mul(-tone).add_(1.0 + tone))
        # zero-mean sensor noise with the drawn std, one field for the three channels
        # (luminance noise): uniform (+-sqrt(3) sigma), a third of the cost of
        # per-channel Gaussian noise and alike at these levels
        amp = float(p["noise"][view]) * 2 * math.sqrt(3.0)
        img.add_(torch.rand((1, *img.shape[1:]), generator=gen, device=dev).sub_(0.5).mul_(amp))
    if view == 1 and "rectification" in p:
        ang, dy = p["rectification"]
        _, H, W = img.shape
        theta = torch.tensor([[[math.cos(ang), -math.sin(ang) * H / W, 0.0],
                               [math.sin(ang) * W / H, math.cos(ang), 2.0 * dy / H]]], dtype=img.dtype, device=dev)
        grid = F.affine_grid(theta, (1, 3, H, W), align_corners=False)
        img = F.grid_sample(img[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return img.clamp_(0, 1)
