"""Losses of stereo knowledge distillation (methods.md section 2) and their weighting.

Every distillation term is a divergence: exactly zero when the student reproduces the
teacher and positive otherwise (cross-entropy is written as KL divergence, which has
the same gradient for the student but no teacher-entropy offset).

- ``feature_distillation_loss``: 1 - cosine similarity along channels, per pixel;
- ``cost_volume_distillation_loss``: 1 - cosine similarity along the group axis of
  ``B x G x D x H x W`` volumes;
- ``distribution_distillation_loss``: KL(teacher || student) over disparity bins;
- ``laplacian_bin_distribution``: the bin distribution of a teacher that regresses a
  disparity and a Laplacian scale (MaDis) instead of producing bins;
- ``pixel_distillation_loss``: smooth L1 to the teacher's disparity;
- ``ground_truth_loss``: ``log(|d - gt| + 0.5) - log(0.5)`` (the paper's loss shifted
  to be 0 at a perfect prediction) or smooth L1, over several outputs with weights;
- ``FeatureAdapter``/``make_adapter``: 1x1 convolutions on the student side, created
  only when channel counts or resolutions differ;
- ``LossWeighting``: fixed weights, the paper's step decay, or learned uncertainty
  weighting (Kendall et al.).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSS_NAMES = ("gt", "feature", "volume", "distribution", "pixel")


def masked_mean(x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (broadcast); 0 with a graph when the mask is empty."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype).expand_as(x)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def _check_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: student {tuple(a.shape)} and teacher {tuple(b.shape)} differ; "
                         "adapt the student (make_adapter) or resize the teacher first")


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor, dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """``1 - cos(student, teacher)`` along ``dim`` (kept as size 1)."""
    s = student.float()
    t = teacher.float()
    dot = (s * t).sum(dim, keepdim=True)
    norm = torch.sqrt((s * s).sum(dim, keepdim=True).clamp_min(eps * eps)) * \
        torch.sqrt((t * t).sum(dim, keepdim=True).clamp_min(eps * eps))
    return (1.0 - dot / norm).clamp_min(0.0)


def feature_distillation_loss(student: torch.Tensor, teacher: torch.Tensor,
                              mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over pixels of 1 - cosine similarity along channels (``B x C x H x W`` maps)."""
    _check_same(student, teacher, "feature distillation")
    return masked_mean(cosine_distance(student, teacher.detach(), dim=1), mask)


def cost_volume_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over (bin, pixel) of 1 - cosine similarity along the group axis (``B x G x D x H x W``).

    With a single group the cosine of two scalars is only their sign agreement; the
    volume is then compared along the bin axis instead (its matching profile)."""
    _check_same(student, teacher, "cost-volume distillation")
    dim = 1 if student.shape[1] > 1 else 2
    return cosine_distance(student, teacher.detach(), dim=dim).mean()


def distribution_distillation_loss(student_logits: torch.Tensor, teacher_prob: torch.Tensor,
                                   mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(teacher || student) over the bin axis (dim 1), averaged over pixels.

    Equals the paper's cross-entropy between the teacher softmax and the student
    log-softmax minus the teacher's entropy (a constant), so it is 0 at a match."""
    _check_same(student_logits, teacher_prob, "distribution distillation")
    p = teacher_prob.detach().float()
    log_q = F.log_softmax(student_logits.float(), dim=1)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(1, keepdim=True)
    return masked_mean(kl.clamp_min(0.0), mask)


def laplacian_bin_distribution(disparity: torch.Tensor, log_scale: Optional[torch.Tensor], num_bins: int,
                               bin_size: float, downsample: int = 1, min_scale: float = 0.5) -> torch.Tensor:
    """Bin distribution ``B x D x h x w`` of a regressed disparity with a Laplacian scale.

    ``p_k ~ exp(-|k * bin_size - d| / b)`` with ``b = max(exp(log_scale), min_scale * bin_size)``
    pixels (``log_scale`` is the MaDis/Laplacian ``s``; None uses the minimum). The
    floor keeps the target from collapsing onto the nearest bin, which would teach the
    soft-argmin a quantised disparity. Built at the teacher's resolution and then
    average-pooled by ``downsample``, so a coarse cell that straddles a depth edge gets
    a two-peaked target instead of a blend of both depths.
    """
    if disparity.dim() != 4 or disparity.shape[1] != 1:
        raise ValueError(f"disparity must be B x 1 x H x W, got {tuple(disparity.shape)}")
    d = disparity.detach().float()
    floor = min_scale * bin_size
    if log_scale is None:
        scale = torch.full_like(d, floor)
    else:
        scale = torch.exp(log_scale.detach().float()).clamp_min(floor)
    centres = torch.arange(num_bins, device=d.device, dtype=d.dtype).view(1, -1, 1, 1) * bin_size
    logits = -(centres - d).abs() / scale
    prob = torch.softmax(logits, dim=1)
    if downsample > 1:
        prob = F.avg_pool2d(prob, downsample, downsample, ceil_mode=True)
    return prob


def pixel_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mask: Optional[torch.Tensor] = None,
                            beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 between student and teacher disparities (pixels), averaged over ``mask``."""
    _check_same(student, teacher, "pixel distillation")
    err = F.smooth_l1_loss(student.float(), teacher.detach().float(), reduction="none", beta=beta)
    return masked_mean(err, mask)


def ground_truth_loss(disparities: Sequence[torch.Tensor], target: torch.Tensor, valid: torch.Tensor,
                      weights: Sequence[float] = (0.5, 0.7, 1.0), kind: str = "log") -> torch.Tensor:
    """Weighted sum over the student's outputs (coarse to fine) of a robust disparity error.

    ``kind="log"``: ``log(|d - gt| + 0.5) - log(0.5)`` (the distillation paper's loss,
    shifted to be 0 at a perfect prediction); ``"smooth_l1"``: smooth L1 (GwcNet).
    The last ``len(weights)`` outputs are used; 0 (with a graph) without valid pixels.
    """
    if kind not in ("log", "smooth_l1"):
        raise ValueError(f"ground-truth loss kind must be 'log' or 'smooth_l1', got {kind!r}")
    if not disparities:
        raise ValueError("ground_truth_loss needs at least one disparity output")
    outs = list(disparities)[-len(weights):]
    ws = list(weights)[-len(outs):]
    target = target.float()
    mask = valid.bool() & torch.isfinite(target)
    safe = torch.where(mask, target, torch.zeros_like(target))
    total = outs[0].new_zeros(())
    for w, d in zip(ws, outs):
        _check_same(d, target, "ground-truth loss")
        err = (d.float() - safe).abs()
        per_pixel = torch.log1p(2.0 * err) if kind == "log" else F.smooth_l1_loss(d.float(), safe, reduction="none")
        total = total + w * masked_mean(per_pixel, mask)
    return total


# ----------------------------------------------------------------------------- adapters
class FeatureAdapter(nn.Module):
    """1x1 convolution mapping student channels onto the teacher's (2D maps or, with
    ``volume=True``, the group axis of a 5D cost volume)."""

    def __init__(self, student_channels: int, teacher_channels: int, volume: bool = False):
        super().__init__()
        conv = nn.Conv3d if volume else nn.Conv2d
        self.proj = conv(student_channels, teacher_channels, 1)
        self.student_channels, self.teacher_channels = student_channels, teacher_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def make_adapter(student_channels: int, teacher_channels: int, student_stride: float, teacher_stride: float,
                 volume: bool = False) -> nn.Module:
    """``nn.Identity`` when channels and resolution (stride w.r.t. the input) agree,
    else a learned 1x1 ``FeatureAdapter`` (the teacher map is then resized to the
    student's resolution by ``match_resolution``)."""
    if student_channels == teacher_channels and math.isclose(student_stride, teacher_stride, rel_tol=1e-3):
        return nn.Identity()
    return FeatureAdapter(student_channels, teacher_channels, volume=volume)


def match_resolution(teacher: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Resize a teacher map (``B x C x h x w``) to the spatial size of ``like`` (bilinear)."""
    if teacher.shape[-2:] == like.shape[-2:]:
        return teacher
    return F.interpolate(teacher.float(), size=like.shape[-2:], mode="bilinear", align_corners=False)


def tokens_to_map(tokens: torch.Tensor, image_hw: Tuple[int, int], patch_sizes: Iterable[int] = (16, 8, 14, 32)
                  ) -> torch.Tensor:
    """Transformer tokens ``B x N x C`` -> map ``B x C x gh x gw`` for an image of ``image_hw``.

    The grid is the one of the first patch size whose ``ceil(H/p) * ceil(W/p)`` equals
    ``N`` (MaDis pads to a multiple of 16)."""
    b, n, c = tokens.shape
    h, w = image_hw
    for p in patch_sizes:
        gh, gw = -(-h // p), -(-w // p)
        if gh * gw == n:
            return tokens.transpose(1, 2).reshape(b, c, gh, gw)
    raise ValueError(f"cannot arrange {n} tokens on a patch grid for a {h}x{w} image (tried patch sizes "
                     f"{list(patch_sizes)})")


# ----------------------------------------------------------------------------- weighting
class LossWeighting(nn.Module):
    """Combines the loss terms into one scalar.

    ``mode="fixed"``: ``sum w_i L_i``. ``mode="step"``: the paper's adaptive schedule,
    the weights of ``decay_losses`` multiplied by ``factor`` at each milestone (in
    optimizer steps), a pure function of the step so ``--resume`` needs no state.
    ``mode="uncertainty"``: learned homoscedastic uncertainty weighting,
    ``sum w_i (exp(-s_i) L_i + s_i)`` with one learned ``s_i`` per term (its
    parameters live here, so put this module inside the optimised module).
    """

    def __init__(self, weights: Mapping[str, float], mode: str = "fixed", milestones: Sequence[int] = (),
                 factor: float = 0.1, decay_losses: Sequence[str] = ("feature", "distribution")):
        super().__init__()
        if mode not in ("fixed", "step", "uncertainty"):
            raise ValueError(f"loss weighting mode must be fixed, step or uncertainty, got {mode!r}")
        unknown = sorted(set(weights) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown loss names {unknown}; known: {list(LOSS_NAMES)}")
        unknown = sorted(set(decay_losses) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown loss names to decay {unknown}; known: {list(LOSS_NAMES)}")
        self.base = {k: float(v) for k, v in weights.items()}
        self.mode = mode
        self.milestones = sorted(int(m) for m in milestones)
        self.factor = float(factor)
        self.decay_losses = tuple(decay_losses)
        self.log_vars = nn.ParameterDict()
        if mode == "uncertainty":
            for k, v in self.base.items():
                if v > 0:
                    self.log_vars[k] = nn.Parameter(torch.zeros(()))

    def weight(self, name: str, step: int) -> float:
        w = self.base.get(name, 0.0)
        if self.mode == "step" and name in self.decay_losses:
            w *= self.factor ** sum(1 for m in self.milestones if step >= m)
        return w

    def forward(self, losses: Mapping[str, torch.Tensor], step: int) -> Tuple[torch.Tensor, Dict[str, float]]:
        total = None
        used: Dict[str, float] = {}
        for name, value in losses.items():
            w = self.weight(name, step)
            if w == 0.0:
                continue
            if self.mode == "uncertainty":
                s = self.log_vars[name]
                term = w * (torch.exp(-s) * value + s)
                used[name] = w * float(torch.exp(-s.detach()))
            else:
                term = w * value
                used[name] = w
            total = term if total is None else total + term
        if total is None:
            raise ValueError(f"every loss term has weight 0 (terms {sorted(losses)}, weights {self.base})")
        return total, used
