"""Self-supervised stereo losses: no ground truth anywhere in this module.

- ``photometric_error``: the right view warped into the left by a disparity, compared
  with the left by SSIM + L1 (Monodepth's 0.85 / 0.15 mix, 3x3 SSIM windows).
- ``lr_consistency_mask``: pixels whose left disparity agrees with the right view's
  disparity at the matched position (occluded pixels disagree), and that map inside
  the right image.
- ``fill_from_background``: a teacher's disparity at its occluded pixels replaced by
  the background disparity next to them on the row (what an occluded pixel shows).
- ``smoothness_loss``: edge-aware first-order smoothness of the mean-normalised
  disparity, down-weighted across image edges (disparity may jump where colour does).
- ``pseudo_label_loss``: a prediction against a teacher's disparity, weighted per
  pixel (by the teacher's confidence): the bounded Laplacian NLL when the model
  predicts a confidence logit (MaDis), else L1 (the CNN students).
- ``drift_penalty``: squared distance of the parameters from the starting weights
  (L2-SP), the guard against forgetting what synthetic training taught.

All images are ``B x 3 x H x W`` floats in [0, 1], disparities ``B x 1 x H x W`` in
pixels of that resolution (positive: the left pixel x matches the right pixel x - d).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from madis_core.training.losses import laplacian_log_scale


def warp_to_left(right: torch.Tensor, disparity: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample ``right`` at ``x - d`` for every left pixel (bilinear, border values).

    Returns the warped image and a ``B x 1 x H x W`` bool map of the pixels whose
    match lies inside the right image (the others carry no photometric information)."""
    b, _, h, w = right.shape
    xs = torch.arange(w, device=right.device, dtype=right.dtype).view(1, 1, w)
    ys = torch.arange(h, device=right.device, dtype=right.dtype).view(1, h, 1)
    xr = xs - disparity[:, 0]
    grid = torch.stack([xr * (2.0 / max(w - 1, 1)) - 1.0, (ys * (2.0 / max(h - 1, 1)) - 1.0).expand(b, h, w)], -1)
    warped = F.grid_sample(right, grid.to(right.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    inside = ((xr >= 0) & (xr <= w - 1)).unsqueeze(1)
    return warped, inside


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``B x C x H x W`` image (replicated borders); ``sigma`` 0: unchanged."""
    if sigma <= 0:
        return img
    r = int(math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=img.dtype, device=img.device)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    c = img.shape[1]
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    y = F.pad(img, (r, r, r, r), mode="replicate")
    return F.conv2d(F.conv2d(y, k, groups=c), k.transpose(2, 3), groups=c)


def ssim_dissimilarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(1 - SSIM) / 2 per pixel and channel over 3x3 windows (reflect-padded), in [0, 1]."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    x = F.pad(x, (1, 1, 1, 1), mode="reflect")
    y = F.pad(y, (1, 1, 1, 1), mode="reflect")
    mx, my = F.avg_pool2d(x, 3, 1), F.avg_pool2d(y, 3, 1)
    sx = F.avg_pool2d(x * x, 3, 1) - mx * mx
    sy = F.avg_pool2d(y * y, 3, 1) - my * my
    sxy = F.avg_pool2d(x * y, 3, 1) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sx + sy + c2)
    return ((1 - num / den) / 2).clamp(0, 1)


def photometric_error(left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor, alpha: float = 0.85,
                      kind: str = "ssim") -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel ``alpha * SSIM + (1 - alpha) * L1`` (``kind="ssim"``) or the soft census
    distance (``"census"``) between the left view and the right view warped by
    ``disparity`` (``B x 1 x H x W``), and the in-image mask."""
    warped, inside = warp_to_left(right, disparity)
    if kind == "census":
        return census_error(left, warped), inside
    l1 = (warped - left).abs().mean(1, keepdim=True)
    ssim = ssim_dissimilarity(warped, left).mean(1, keepdim=True)
    return alpha * ssim + (1 - alpha) * l1, inside


def _ternary(img: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Soft ternary census signature of the grey image: for each of the (2r+1)^2 offsets,
    (neighbour - centre) / sqrt(0.81 + (neighbour - centre)^2) (values in 0..255 scale)."""
    gray = img.mean(1, keepdim=True) * 255.0
    k = 2 * radius + 1
    patches = F.unfold(F.pad(gray, (radius,) * 4, mode="replicate"), k).view(img.shape[0], k * k, *img.shape[-2:])
    diff = patches - gray
    return diff / torch.sqrt(0.81 + diff * diff)


def census_error(left: torch.Tensor, warped: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Soft census (ternary) distance per pixel in [0, 1): compares the *ordering* of grey
    values in a 7x7 window, so it ignores gain, offset, gamma and white-balance
    differences between the cameras (Meister et al., UnFlow, 2018)."""
    d = _ternary(left, radius) - _ternary(warped, radius)
    d2 = d * d
    return (d2 / (0.1 + d2)).mean(1, keepdim=True)


def identity_error(left: torch.Tensor, right: torch.Tensor, alpha: float = 0.85) -> torch.Tensor:
    """The same error for the unwarped right view (auto-masking: pixels where no
    disparity explains the views better than none, e.g. textureless sky, are skipped)."""
    l1 = (right - left).abs().mean(1, keepdim=True)
    return alpha * ssim_dissimilarity(right, left).mean(1, keepdim=True) + (1 - alpha) * l1


def flip_pair(left: torch.Tensor, right: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The mirrored pair whose *left* disparity is the right view's disparity, flipped:
    ``d_right = flip(model(*flip_pair(left, right)))``."""
    return right.flip(-1), left.flip(-1)


def lr_consistency_mask(disp_left: torch.Tensor, disp_right: torch.Tensor, tolerance: float = 1.0) -> torch.Tensor:
    """Left pixels whose disparity agrees (within ``tolerance`` px, or 5 %) with the right
    view's disparity at ``x - d``; occluded pixels and those leaving the image fail."""
    warped, inside = warp_to_left(disp_right, disp_left)
    tol = torch.clamp(0.05 * disp_left, min=tolerance)
    return inside & ((warped - disp_left).abs() <= tol)


def fill_from_background(disparity: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Replace the pixels outside ``keep`` by the smaller of the nearest kept disparities
    to their left and right on the same row (background, since an occluded pixel lies
    behind the surface that hides it); rows without a kept pixel stay as they are."""
    w = disparity.shape[-1]
    idx = torch.arange(w, device=disparity.device).expand_as(disparity)
    left_idx = torch.where(keep, idx, torch.full_like(idx, -1)).cummax(-1).values
    right_idx = torch.where(keep, idx, torch.full_like(idx, w)).flip(-1).cummin(-1).values.flip(-1)
    big = torch.finfo(disparity.dtype).max
    from_left = torch.where(left_idx >= 0, disparity.gather(-1, left_idx.clamp(min=0)), torch.full_like(disparity, big))
    from_right = torch.where(right_idx < w, disparity.gather(-1, right_idx.clamp(max=w - 1)),
                             torch.full_like(disparity, big))
    background = torch.minimum(from_left, from_right)
    return torch.where(keep | (background == big), disparity, background)


def occlusion_mask(disp_left: torch.Tensor, disp_right: torch.Tensor, consistent: torch.Tensor,
                   margin: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which left-right-inconsistent pixels are *occluded* rather than just wrong.

    An inconsistent pixel is taken as occluded when, given the background disparity
    next to it (``fill_from_background``), its match in the right view lies on a
    nearer surface (the right view's disparity there exceeds it by ``margin``) or
    outside the right image. Returns ``(occluded, background)``: the mask and the
    filled disparity. Telling the two apart matters on a camera the network does
    badly on: a third of its pixels can be inconsistent there, mostly visible but
    mismatched, and those need the photometric loss, not a background label."""
    background = fill_from_background(disp_left, consistent)
    right_there, inside = warp_to_left(disp_right, background)
    occluded = ~consistent & (~inside | (right_there > background + margin))
    return occluded, background


def smoothness_loss(disparity: torch.Tensor, image: torch.Tensor, edge_weight: float = 10.0) -> torch.Tensor:
    """Edge-aware smoothness: ``|d/dx d*| exp(-k |d/dx I|)`` + the same in y, with ``d*``
    the disparity divided by its per-image mean (scale-free, as in Monodepth)."""
    d = disparity / disparity.mean(dim=(2, 3), keepdim=True).clamp(min=1e-3)
    gray = image.mean(1, keepdim=True)
    dx = (d[..., :, 1:] - d[..., :, :-1]).abs() * torch.exp(-edge_weight * (gray[..., :, 1:] - gray[..., :, :-1]).abs())
    dy = (d[..., 1:, :] - d[..., :-1, :]).abs() * torch.exp(-edge_weight * (gray[..., 1:, :] - gray[..., :-1, :]).abs())
    return dx.mean() + dy.mean()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def pseudo_label_loss(out: Dict[str, torch.Tensor], target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A model output against a teacher's disparity, each pixel weighted by ``weights``
    (e.g. loss weight x teacher confidence; no gradient), averaged over all pixels.

    Per pixel: the bounded Laplacian NLL ``|d - t| exp(-s) + s`` when the model predicts
    a confidence logit (MaDis), otherwise ``|d - t|`` (the CNN students' confidence is a
    matching-peak statistic with no likelihood to train)."""
    err = (out["disparity"].float() - target.detach().float()).abs()
    if "conf_logit" in out:
        s = laplacian_log_scale(out["conf_logit"].float())
        err = err * torch.exp(-s) + s
    return (err * weights.detach().float()).mean()


def snapshot_parameters(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters: the anchor for ``drift_penalty``."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def drift_penalty(model: nn.Module, anchor: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of squared differences between the parameters and ``anchor`` (L2-SP)."""
    terms: Iterable[torch.Tensor] = ((p - anchor[n]).pow(2).sum() for n, p in model.named_parameters()
                                     if n in anchor and p.requires_grad)
    total = None
    for t in terms:
        total = t if total is None else total + t
    if total is None:
        raise ValueError("drift_penalty: no trainable parameter of the model is in the anchor")
    return total
