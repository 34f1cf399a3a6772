"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``.

A callable object (not a lambda) so ``LambdaLR.state_dict()`` saves its settings
in the checkpoint and a resumed run can check it continues the same schedule.
"""
from __future__ import annotations

import math

import torch


class WarmupCosine:
    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = max(0, int(warmup_steps))
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        """Multiplier of the base lr used for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, lr: float,
                    min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    ratio = float(min_lr) / float(lr) if lr > 0 else 0.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps, ratio))


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict, total_steps: int) -> bool:
    """Restore ``scheduler`` from a checkpoint, keeping the run's *current* length.

    LambdaLR saves callable-object lambdas with their attributes, so a plain
    ``load_state_dict`` would bring back the old ``total_steps`` and resuming with a
    larger ``train.steps`` would sit at ``min_lr`` for the whole extension. With the
    same length this is exactly ``load_state_dict``; with a new one the cosine is
    re-laid over ``total_steps`` (a warm restart from the resumed step). Returns True
    when the length changed.
    """
    scheduler.load_state_dict(state)
    changed = False
    for fn in scheduler.lr_lambdas:
        if isinstance(fn, WarmupCosine) and fn.total_steps != int(total_steps):
            fn.total_steps = int(total_steps)
            changed = True
    return changed
