"""Disparity losses of MaDis-Stereo.

Bounded Laplacian negative log-likelihood (CroCo-Stereo / MaDis): the network
predicts a disparity ``d`` and a confidence logit ``c``; the Laplacian log-scale
``s = -6 * (sigmoid(c / 3) - 0.5)`` lies in (-3, 3) so that neither a huge nor a
vanishing scale can run away, and

    loss = |d - d_gt| * exp(-s) + s

averaged over the valid pixels. (methods.md writes ``s = 6 (sigmoid(c/3) - 0.5)``
with ``c`` an uncertainty logit; here ``c`` is a confidence logit, i.e. the sign is
flipped, so that ``confidence = sigmoid(c/3) = (3 - s) / 6``.)
"""
from __future__ import annotations

from typing import Optional

import torch


def laplacian_log_scale(conf_logit: torch.Tensor) -> torch.Tensor:
    return -6.0 * (torch.sigmoid(conf_logit / 3.0) - 0.5)


def bounded_laplacian_loss(disparity: torch.Tensor, conf_logit: torch.Tensor, target: torch.Tensor,
                           valid: Optional[torch.Tensor] = None, weights: Optional[torch.Tensor] = None
                           ) -> torch.Tensor:
    """Mean bounded Laplacian NLL over ``valid`` pixels (all finite targets if None).

    All tensors are B x 1 x H x W. ``weights`` (>= 0, no gradient) make it a weighted
    mean, e.g. a teacher's confidence on its pseudo labels. Returns 0 (with a graph)
    when no pixel is valid, so a batch without ground truth does not produce NaN.
    """
    if disparity.shape != target.shape or conf_logit.shape != target.shape:
        raise ValueError(f"shapes differ: disparity {tuple(disparity.shape)}, conf {tuple(conf_logit.shape)}, "
                         f"target {tuple(target.shape)}")
    mask = torch.isfinite(target)
    if valid is not None:
        mask = mask & valid.bool()
    s = laplacian_log_scale(conf_logit.float())
    err = (disparity.float() - torch.where(mask, target.float(), torch.zeros_like(target, dtype=torch.float32))).abs()
    per_pixel = err * torch.exp(-s) + s
    w = mask.float() if weights is None else mask * weights.detach().float()
    return (per_pixel * w).sum() / w.sum().clamp(min=1e-6 if weights is not None else 1.0)
