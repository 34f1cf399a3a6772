"""2D rotary position embedding (RoPE) for patch tokens, in plain PyTorch (runs on CPU).

Why RoPE: MaDis/CroCo have no absolute position embedding; rotating queries and
keys by their patch coordinates makes every attention score depend on the
*relative* offset between two patches only, which is what stereo matching needs
(a shift of the whole scene must not change how patches match) and lets the model
run on image sizes it was not trained on.

Layout: the head dimension ``D`` is split in two halves; the first half is rotated
by the token's row ``y``, the second by its column ``x``. Inside each half the
usual 1D RoPE applies (rotate-half convention) with frequencies
``base ** (-2i / (D/2))``, base 100 as in CroCo v2.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RoPE2D(nn.Module):
    """Apply 2D RoPE to ``tokens`` (B x heads x N x D) at integer ``positions`` (B x N x 2, (y, x))."""

    def __init__(self, base: float = 100.0):
        super().__init__()
        if base <= 0:
            raise ValueError(f"RoPE base frequency must be positive, got {base}")
        self.base = float(base)
        self._tables: dict = {}

    def _table(self, d: int, max_pos: int, device: torch.device):
        """cos/sin of every integer position up to ``max_pos`` (cached; sin/cos per call is slow on CPU)."""
        key = (d, str(device))
        cached = self._tables.get(key)
        if cached is None or cached[0].shape[0] <= max_pos:
            n = max(64, 1 << int(max_pos).bit_length())
            inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
            angle = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq
            angle = torch.cat((angle, angle), dim=-1)  # n x d
            cached = (angle.cos(), angle.sin())
            self._tables[key] = cached
        return cached

    def _apply_1d(self, tokens: torch.Tensor, pos: torch.Tensor, max_pos: int) -> torch.Tensor:
        cos, sin = self._table(tokens.shape[-1], max_pos, tokens.device)
        cos, sin = cos[pos][:, None], sin[pos][:, None]  # B x 1 x N x d
        t = tokens.float()
        return (t * cos + _rotate_half(t) * sin).to(tokens.dtype)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 4:
            raise ValueError(f"tokens must be B x heads x N x D, got shape {tuple(tokens.shape)}")
        d = tokens.shape[-1]
        if d % 4:
            raise ValueError(f"2D RoPE needs a head dimension divisible by 4, got {d}")
        if positions.shape != (tokens.shape[0], tokens.shape[2], 2):
            raise ValueError(f"positions must be B x N x 2 = {(tokens.shape[0], tokens.shape[2], 2)}, "
                             f"got {tuple(positions.shape)}")
        ty, tx = tokens.chunk(2, dim=-1)
        if positions.numel() and int(positions.min()) < 0:
            raise ValueError("RoPE positions must be non-negative integers")
        max_pos = int(positions.max()) if positions.numel() else 0
        positions = positions.long()
        return torch.cat((self._apply_1d(ty, positions[..., 0], max_pos), self._apply_1d(tx, positions[..., 1], max_pos)),
                         dim=-1)


def patch_positions(batch: int, grid_h: int, grid_w: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Integer (y, x) coordinates of a ``grid_h x grid_w`` patch grid, row-major: B x N x 2."""
    ys, xs = torch.meshgrid(torch.arange(grid_h, device=device), torch.arange(grid_w, device=device), indexing="ij")
    pos = torch.stack((ys.reshape(-1), xs.reshape(-1)), dim=-1)
    return pos[None].expand(batch, -1, -1)
