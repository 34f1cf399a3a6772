"""Proxy labels from a classical matcher: OpenCV SGBM's confident disparities.

Why: a classical matcher has no training domain to leave. Where SGBM commits to a
match (its uniqueness test, left-right check and speckle filter pass) it is often
right on real images where a synthetic-trained network is not: on Motorcycle,
SGBM's filled pixels (78 %) have 6 % bad-2 pixels where the student has 11 %. Its
holes (occlusions, textureless areas, repetitions) are exactly where the network's
context does better, so the adapter uses SGBM as a label only where it has one and
the EMA teacher elsewhere (and only on pairs where SGBM mostly agrees with the
network: ``proxy_agreement``): the "proxy label" idea of Tonioni et al., *Unsupervised
adaptation for deep stereo* (ICCV 2017). No ground truth is involved.

``proxy_disparity(left, right, max_disparity)`` (3-way SGBM: as accurate here as the
8-direction mode and 5x faster) returns a ``1 x 1 x H x W`` float
tensor with NaN where SGBM has no confident match.
"""
from __future__ import annotations

import numpy as np
import torch

from madis_core.adaptation import losses as L


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W float in [0, 1] -> H x W x 3 uint8."""
    return (img[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def proxy_disparity(left: torch.Tensor, right: torch.Tensor, max_disparity: float = 192,
                    uniqueness: int = 15, block_size: int = 5, mode: str = "3way") -> torch.Tensor:
    """SGBM's disparity of the left view (NaN where it has none)."""
    from madis_core.backends.sgbm import SGBMBackend

    num = int(np.ceil(max(16.0, min(float(max_disparity), left.shape[-1] - 16)) / 16.0)) * 16
    sgbm = SGBMBackend(num_disparities=num, block_size=block_size, uniqueness_ratio=uniqueness, mode=mode)
    disp = sgbm.predict_checked(_to_uint8(left), _to_uint8(right)).disparity
    return torch.from_numpy(disp)[None, None].to(left.device)


def search_range(guess: torch.Tensor, max_disparity: float, margin: float = 1.25) -> float:
    """SGBM's search range from the network's own disparities of the pair: their 99.5th
    percentile with a margin, at most the network's range. A range much wider than the
    scene's only adds false matches (on Motorcycle, bad-2 of the proxy labels 11.7 %
    with 192 px, 11.2 % with 96 px)."""
    top = float(torch.quantile(guess.flatten().float()[::7], 0.995)) * margin + 8.0
    return float(min(max(top, 32.0), max_disparity))


def proxy_agreement(proxy: torch.Tensor, guess: torch.Tensor, tolerance: float = 2.0) -> float:
    """Share of SGBM's pixels where it agrees with the network within ``tolerance`` px.

    The adapter trusts a pair's proxy labels only when this is high. SGBM that
    contradicts a reasonable network on a third of its confident matches is failing on
    that camera (measured: Motorcycle 0.92 with SGBM 6 % wrong where the student is 11 %
    wrong; the benchmark's shifted domain 0.45-0.74 on 7 of 8 pairs, where SGBM is
    29-59 % wrong and the student 5-31 %)."""
    has = torch.isfinite(proxy)
    if not bool(has.any()):
        return 0.0
    return float(((proxy - guess).abs() <= tolerance)[has].float().mean())


def proxy_pair(left: torch.Tensor, right: torch.Tensor, max_disparity: float = 192, **kw) -> tuple:
    """Proxy labels for the pair and for its mirror (``losses.flip_pair``): the adapter
    trains on both, so both are computed once, before the first step."""
    return (proxy_disparity(left, right, max_disparity, **kw),
            proxy_disparity(*L.flip_pair(left, right), max_disparity, **kw))
