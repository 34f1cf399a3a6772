"""Masked image modeling pieces: patch masks, reconstruction targets and loss, EMA teacher.

Why each piece:
- ``random_masks``: MaDis hides the same fraction of patches in each view,
  independently per view and per sample; an exact count per row (not a Bernoulli
  draw) keeps every sample's visible-token count equal so both views of the whole
  batch go through the encoder as one tensor.
- ``patch_targets`` / ``masked_reconstruction_loss``: MAE-style per-patch
  normalised pixel targets; the loss only counts hidden patches (visible ones
  would be trivially copied).
- ``EmaTeacher``: the teacher is an exponential moving average of the student,
  ``theta_t <- m * theta_t + (1 - m) * theta_s`` after every optimizer step. It never
  receives gradients; its pseudo labels are computed under ``torch.no_grad``.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from madis_core.models.patches import patchify


def num_masked(num_patches: int, ratio: float) -> int:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(round(ratio * num_patches))


def random_masks(batch: int, num_patches: int, ratio: float, generator: Optional[torch.Generator] = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """B x N bool, True = masked; exactly ``round(ratio * N)`` masked patches in every row.

    Drawn on the CPU from ``generator`` (so the same seed gives the same masks on
    any device), then moved to ``device``.
    """
    k = num_masked(num_patches, ratio)
    noise = torch.rand(batch, num_patches, generator=generator)
    order = noise.argsort(dim=1)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask.to(device)


def step_generator(seed: int, rank: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator determined by (seed, rank, step): resumed runs redraw identical masks."""
    g = torch.Generator()
    g.manual_seed(((int(seed) * 1_000_003 + int(rank) * 10_007 + int(step)) * 4 + int(stream)) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def patch_targets(img: torch.Tensor, norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """B x 3 x H x W (already model-normalised) -> B x N x 768 targets, each patch normalised by its mean/std."""
    t = patchify(img.float())
    if norm_pix:
        mean = t.mean(dim=-1, keepdim=True)
        var = t.var(dim=-1, keepdim=True, unbiased=True)
        t = (t - mean) / (var + eps).sqrt()
    return t


def masked_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE per patch, averaged over the masked patches only (``mask`` B x N, True = masked)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match patches {tuple(pred.shape[:2])}")
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp(min=1.0)


class EmaTeacher:
    """EMA copy of (part of) a student network.

    ``prefixes``: parameter-name prefixes that are averaged (e.g. the encoder, as in
    the MaDis code); ``None`` averages every parameter and buffer. The teacher is a
    full deep copy in eval mode with ``requires_grad=False`` everywhere; parameters
    outside ``prefixes`` stay at the student's initial values and are not used by
    callers that only run the teacher's encoder.

    Momentum schedule: ``momentum`` constant, or with ``warmup_steps > 0`` a cosine
    ramp from ``start_momentum`` at step 0 to ``momentum`` at ``warmup_steps``.
    """

    def __init__(self, student: nn.Module, momentum: float = 0.9999, prefixes: Optional[Sequence[str]] = None,
                 warmup_steps: int = 0, start_momentum: float = 0.99):
        for name, m in (("momentum", momentum), ("start_momentum", start_momentum)):
            if not 0.0 <= m <= 1.0:
                raise ValueError(f"EMA {name} must be in [0, 1], got {m}")
        self.momentum = float(momentum)
        self.start_momentum = float(start_momentum)
        self.warmup_steps = int(warmup_steps)
        self.prefixes = tuple(prefixes) if prefixes is not None else None
        self.module = copy.deepcopy(student).eval()
        self.module.requires_grad_(False)
        self._names = [n for n, _ in student.named_parameters() if self._selected(n)]
        if not self._names:
            raise ValueError(f"no student parameter matches the EMA prefixes {self.prefixes}")

    def _selected(self, name: str) -> bool:
        return self.prefixes is None or name.startswith(self.prefixes)

    def momentum_at(self, step: int) -> float:
        if self.warmup_steps <= 0 or step >= self.warmup_steps:
            return self.momentum
        t = step / self.warmup_steps
        return self.momentum - (self.momentum - self.start_momentum) * 0.5 * (1.0 + math.cos(math.pi * t))

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> float:
        """theta_t <- m * theta_t + (1 - m) * theta_s for the selected parameters; returns m."""
        m = self.momentum_at(step)
        s_params = dict(student.named_parameters())
        t_params = dict(self.module.named_parameters())
        teacher = [t_params[n] for n in self._names]
        source = [s_params[n].detach().to(t_params[n].dtype) for n in self._names]
        torch._foreach_mul_(teacher, m)
        torch._foreach_add_(teacher, source, alpha=1.0 - m)
        if self.prefixes is None:
            for (_, tb), (_, sb) in zip(self.module.named_buffers(), student.named_buffers()):
                tb.copy_(sb)
        return m

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)

    def to(self, device) -> "EmaTeacher":
        self.module.to(device)
        return self

    def parameters(self) -> Iterable[torch.Tensor]:
        return self.module.parameters()
