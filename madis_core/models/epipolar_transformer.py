"""Axial and epipolar attention blocks for the MaDis matching transformer.

A binocular transformer has to let each token see (a) its own view, for context, and
(b) the other view, for matching. On a rectified pair every match lies on the same
image row, so cross-view attention only needs the row (the epipolar line); that is
what makes 1280x720 fit in memory: attention over ``w`` tokens per row instead of
``h * w`` tokens per image (GMStereo/UniMatch and STTR use the same observation).

One ``EpipolarBlock`` on a ``2B x h x w x C`` token map (left views first, then the
right views of the same pairs):

1. self-attention along each row of the token's own view;
2. self-attention along each column of its own view (with 1., every token reaches the
   whole view in two hops: axial attention);
3. cross-attention along the row to the *other* view (left rows read right rows and
   the mirror pass in the same batch), the matching step;
4. an MLP.

Pre-norm residuals. Positions enter through 1D rotary embeddings (RoPE) on queries and
keys, so every score depends only on the offset between two tokens; in the row
cross-attention that offset is the disparity itself (in tokens), which is what the
matching needs, and nothing depends on the image size.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class RoPE1D(nn.Module):
    """Rotary position embedding along one axis for ``N x heads x L x D`` tensors (positions 0..L-1)."""

    def __init__(self, base: float = 100.0):
        super().__init__()
        if base <= 0:
            raise ValueError(f"RoPE base frequency must be positive, got {base}")
        self.base = float(base)
        self._tables: Dict[Tuple[int, int, str, torch.dtype], Tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, length: int, dim: int, device: torch.device, dtype: torch.dtype):
        key = (length, dim, str(device), dtype)
        table = self._tables.get(key)
        if table is None:  # cos/sin per call costs more than the attention itself on a CPU
            inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
            angle = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
            angle = torch.cat((angle, angle), dim=-1)
            table = (angle.cos().to(dtype), angle.sin().to(dtype))
            if len(self._tables) > 64:
                self._tables.clear()
            self._tables[key] = table
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {x.shape[-1]}")
        cos, sin = self._table(x.shape[-2], x.shape[-1], x.device, x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Multi-head attention of ``x`` (N x L x C) over ``y`` (N x M x C) with 1D RoPE on q and k."""

    def __init__(self, dim: int, heads: int, rope: RoPE1D):
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must split into {heads} heads of even size")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, length, c = x.shape
        hd = c // self.heads
        q = self.q(x).reshape(n, length, self.heads, hd).transpose(1, 2)
        k, v = self.kv(y).reshape(n, y.shape[1], 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v)
        return self.proj(out.transpose(1, 2).reshape(n, length, c))


class EpipolarBlock(nn.Module):
    """Row self-attention, column self-attention, row cross-attention to the other view, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, rope_base: float = 100.0):
        super().__init__()
        rope = RoPE1D(rope_base)
        self.norm_row, self.row = nn.LayerNorm(dim), Attention(dim, heads, rope)
        self.norm_col, self.col = nn.LayerNorm(dim), Attention(dim, heads, rope)
        self.norm_cross, self.cross = nn.LayerNorm(dim), Attention(dim, heads, rope)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``2B x h x w x C``, the B left views first, then their right views."""
        n, h, w, c = x.shape
        if n % 2:
            raise ValueError(f"the token batch must hold left and right views (2B), got {n}")
        y = self.norm_row(x).reshape(n * h, w, c)
        x = x + self.row(y, y).reshape(n, h, w, c)
        y = self.norm_col(x).transpose(1, 2).reshape(n * w, h, c)
        x = x + self.col(y, y).reshape(n, w, h, c).transpose(1, 2)
        y = self.norm_cross(x)
        b = n // 2
        other = torch.cat((y[b:], y[:b]))  # each view's rows read the other view's same rows
        x = x + self.cross(y.reshape(n * h, w, c), other.reshape(n * h, w, c)).reshape(n, h, w, c)
        return x + self.mlp(self.norm_mlp(x))
