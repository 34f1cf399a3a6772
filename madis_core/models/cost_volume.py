"""Cost volumes and disparity regression for CNN stereo networks.

Everything here is vectorised over disparities (one batched matrix product per image
row instead of a Python loop over shifts) and uses only ops the ONNX exporter maps at
opset 17 (MatMul, Slice, Reshape, Pad, Softmax, ...), so the student exports with
dynamic image sizes. ``groupwise_correlation_naive`` is the loop reference for tests.

Layout conventions:
- feature maps ``B x C x H x W``;
- a group-wise correlation volume ``B x G x D x H x W`` where bin ``d`` compares left
  pixel ``x`` with right pixel ``x - d`` (zero where ``x - d < 0``);
- bin logits / probabilities ``B x D x H x W``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_groups(features: torch.Tensor, num_groups: int, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise each group of channels of a ``B x C x H x W`` map, so group
    correlations are cosines in [-1, 1].

    Cosine volumes do not depend on the feature magnitude, which tracks image contrast
    and texture statistics; that is what lets a model trained on synthetic data
    transfer to real images (data.md: GraftNet, FCStereo)."""
    b, c, h, w = features.shape
    if c % num_groups:
        raise ValueError(f"{c} feature channels cannot be split into {num_groups} groups")
    g = features.reshape(b, num_groups, c // num_groups, h, w)
    # Same as F.normalize(g, dim=2) (x / max(|x|, eps)) but with a plain sum of squares:
    # torch's vector_norm is an order of magnitude slower on CPU for short reductions.
    g = g * torch.rsqrt((g * g).sum(2, keepdim=True).clamp_min(eps * eps))
    return g.reshape(b, c, h, w)


def groupwise_correlation(left: torch.Tensor, right: torch.Tensor, num_groups: int, num_bins: int,
                          normalize: bool = True) -> torch.Tensor:
    """Group-wise correlation volume ``B x G x D x H x W`` (GwcNet), vectorised.

    ``volume[b, g, d, y, x] = sum_c left[b, g*Cg + c, y, x] * right[b, g*Cg + c, y, x - d]``
    with each group L2-normalised first when ``normalize`` (cosines), or divided by
    ``Cg`` otherwise (GwcNet's mean). Columns with ``x - d < 0`` are zero.

    Implementation (no loop over disparities, ONNX-exportable with dynamic sizes): per
    image row and group, one matrix product of the left features with the right
    features flipped along x and padded with D zero columns gives every left/right dot
    product; in that matrix, flattened, the D wanted values of row x start at
    ``(W - 1) + x * (W + D - 1)``, so re-reading the flat row with a row stride of
    ``W + D - 1`` (a slice and a reshape, the "skewing" trick of relative attention)
    lines them up as ``[x, d]``, with the zero padding landing exactly on ``x - d < 0``.
    BLAS does the channel reduction, and nothing of size ``D x C x H x W`` is ever
    materialised: 2-4x faster on CPU than shifting the right map D times.

    The returned tensor is a permuted view of a ``B x G x H x W x D`` buffer; see
    ``volume_as_channels`` for the channels-last ``B x (G*D) x H x W`` layout.
    """
    if left.shape != right.shape:
        raise ValueError(f"left and right features differ in shape: {tuple(left.shape)} vs {tuple(right.shape)}")
    if left.dim() != 4:
        raise ValueError(f"features must be B x C x H x W, got {tuple(left.shape)}")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    b, c, h, w = left.shape
    if c % num_groups:
        raise ValueError(f"{c} feature channels cannot be split into {num_groups} groups")
    cg = c // num_groups
    d = num_bins
    lw = left.permute(0, 2, 3, 1).reshape(b, h, w, num_groups, cg)
    rw = right.permute(0, 2, 3, 1).reshape(b, h, w, num_groups, cg)
    if normalize:
        lw = lw * torch.rsqrt((lw * lw).sum(-1, keepdim=True).clamp_min(1e-12))
        rw = rw * torch.rsqrt((rw * rw).sum(-1, keepdim=True).clamp_min(1e-12))
    else:
        lw = lw * (1.0 / cg)
    # right flipped along x, D zero columns after the flip (= before x = 0)
    rf = F.pad(rw.flip(2), (0, 0, 0, 0, 0, d))
    rows = torch.matmul(lw.permute(0, 3, 1, 2, 4), rf.permute(0, 3, 1, 4, 2))  # B G H W (W+D)
    flat = rows.reshape(b, num_groups, h, w * (w + d))
    band = flat[..., w - 1: w - 1 + w * (w + d - 1)].reshape(b, num_groups, h, w, w + d - 1)[..., :d]
    return band.permute(0, 1, 4, 2, 3)


def volume_as_channels(volume: torch.Tensor) -> torch.Tensor:
    """``B x G x D x H x W`` -> ``B x (G*D) x H x W`` (channel ``g*D + d``) in channels-last
    memory, the layout the 2D aggregation's convolutions run fastest on (one copy)."""
    b, g, d, h, w = volume.shape
    return volume.permute(0, 3, 4, 1, 2).reshape(b, h, w, g * d).permute(0, 3, 1, 2)


def groupwise_correlation_naive(left: torch.Tensor, right: torch.Tensor, num_groups: int, num_bins: int,
                                normalize: bool = True) -> torch.Tensor:
    """Reference implementation with a Python loop over disparities (tests only)."""
    b, c, h, w = left.shape
    cg = c // num_groups
    if normalize:
        left = normalize_groups(left, num_groups)
        right = normalize_groups(right, num_groups)
    vol = left.new_zeros(b, num_groups, num_bins, h, w)
    for d in range(num_bins):
        if d >= w:
            break
        prod = (left[..., d:] * right[..., : w - d]).reshape(b, num_groups, cg, h, w - d)
        vol[:, :, d, :, d:] = prod.sum(2) if normalize else prod.mean(2)
    return vol


def soft_argmin(logits: torch.Tensor, bin_size: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the bin axis (dim 1) and the expected disparity.

    Returns ``(disparity B x 1 x H x W in units of bin_size, probabilities B x D x H x W)``.
    Bin ``k`` stands for disparity ``k * bin_size``.
    """
    prob = torch.softmax(logits, dim=1)
    values = torch.arange(logits.shape[1], device=logits.device, dtype=prob.dtype) * bin_size
    disp = (prob * values.view(1, -1, 1, 1)).sum(1, keepdim=True)
    return disp, prob


def peak_confidence(prob: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Probability mass within ``radius`` bins of the most likely bin, ``B x 1 x H x W``.

    A sharp unimodal distribution gives ~1; a flat or multi-modal one (textureless,
    occluded, repetitive) gives a low value. Computed as the maximum over bins of a
    (2r+1)-bin window sum (the mass around the mode for a unimodal distribution)
    which needs no data-dependent indexing."""
    d = prob.shape[1]
    padded = F.pad(prob, (0, 0, 0, 0, radius, radius))
    window = padded[:, 0:d]
    for k in range(1, 2 * radius + 1):  # 2r+1 slices, independent of the number of bins
        window = window + padded[:, k:k + d]
    return window.amax(1, keepdim=True).clamp(0.0, 1.0)


def convex_upsample(values: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
    """RAFT convex upsampling: each fine pixel is a softmax-weighted combination of the
    3x3 coarse neighbourhood of its parent pixel, so upsampled edges stay sharp.

    ``values`` B x C x h x w, ``mask`` B x (9 * factor^2) x h x w (logits, channel
    ``n * factor^2 + k`` weighs neighbour ``n`` for sub-pixel ``k``) ->
    B x C x (h*factor) x (w*factor). Values are not rescaled (scale disparities first).

    The softmax over the 9 neighbours is written out (exp, sum over the leading axis)
    with the logits clamped to +-30 instead of subtracting the maximum: same result in
    float32, and 2-4x faster on CPU than torch.softmax over a middle axis.
    """
    b, c, h, w = values.shape
    f2 = factor * factor
    if mask.shape[1] != 9 * f2 or mask.shape[-2:] != values.shape[-2:]:
        raise ValueError(f"mask must be B x {9 * f2} x {h} x {w} for factor {factor}, got {tuple(mask.shape)}")
    e = torch.exp(mask.clamp(-30.0, 30.0)).reshape(b, 1, 9, f2, h * w)
    patches = F.unfold(values, kernel_size=3, padding=1).reshape(b, c, 9, 1, h * w)
    fine = (e * patches).sum(2) / e.sum(2)  # B x C x f^2 x hw
    return F.pixel_shuffle(fine.reshape(b, c * f2, h, w), factor)
