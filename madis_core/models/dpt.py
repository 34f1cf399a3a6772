"""DPT head: turns patch tokens from four transformer depths into a full-resolution map.

Why: a ViT only sees 16x16 patches; disparity needs pixel precision. DPT
(Ranftl et al. 2021, as used by CroCo-Stereo and MaDis) reassembles tokens from
four depths into a feature pyramid at 1/4, 1/8, 1/16 and 1/32 of the input,
fuses it coarse-to-fine with RefineNet-style residual blocks, and upsamples to the
input resolution. Output channels are raw (the caller maps them to disparity and
confidence).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualConvUnit(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """RefineNet fusion: refine the skip, add it to the coarser path, refine, upsample."""

    def __init__(self, dim: int, has_skip: bool = True):
        super().__init__()
        self.skip_unit = ResidualConvUnit(dim) if has_skip else None
        self.unit = ResidualConvUnit(dim)
        self.out_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None, out_size: Tuple[int, int]) -> torch.Tensor:
        if skip is not None:
            if self.skip_unit is None:
                raise ValueError("this fusion block was built without a skip input")
            path = path + self.skip_unit(skip)
        path = self.unit(path)
        path = F.interpolate(path, size=out_size, mode="bilinear", align_corners=True)
        return self.out_conv(path)


class DPTHead(nn.Module):
    """Four token maps (B x N x C on a grid_h x grid_w patch grid) -> B x out_channels x H x W."""

    def __init__(self, in_dim: int, layer_dims: Sequence[int] = (96, 192, 384, 768), feature_dim: int = 256,
                 out_channels: int = 2, patch_size: int = 16):
        super().__init__()
        if len(layer_dims) != 4:
            raise ValueError(f"DPT needs 4 layer dims, got {list(layer_dims)}")
        if patch_size != 16:
            raise ValueError("the DPT reassembly scales (1/4 .. 1/32) assume 16x16 patches")
        d0, d1, d2, d3 = layer_dims
        # Reassemble: project tokens, then resample to 1/4, 1/8, 1/16, 1/32 of the input.
        self.reassemble = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_dim, d0, 1), nn.ConvTranspose2d(d0, d0, 4, stride=4)),
            nn.Sequential(nn.Conv2d(in_dim, d1, 1), nn.ConvTranspose2d(d1, d1, 2, stride=2)),
            nn.Sequential(nn.Conv2d(in_dim, d2, 1)),
            nn.Sequential(nn.Conv2d(in_dim, d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),
        ])
        self.layer_rn = nn.ModuleList([nn.Conv2d(d, feature_dim, 3, padding=1, bias=False) for d in layer_dims])
        self.fusion = nn.ModuleList([FusionBlock(feature_dim, has_skip=i < 3) for i in range(4)])
        hidden = max(feature_dim // 2, 8)
        self.conv_half = nn.Conv2d(feature_dim, hidden, 3, padding=1)
        self.out = nn.Sequential(nn.Conv2d(hidden, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, out_channels, 1))

    def forward(self, tokens: List[torch.Tensor], grid_h: int, grid_w: int) -> torch.Tensor:
        if len(tokens) != 4:
            raise ValueError(f"DPT head expects tokens from 4 depths, got {len(tokens)}")
        b = tokens[0].shape[0]
        feats = []
        for t, reassemble, rn in zip(tokens, self.reassemble, self.layer_rn):
            x = t.transpose(1, 2).reshape(b, t.shape[-1], grid_h, grid_w)
            feats.append(rn(reassemble(x)))
        h, w = grid_h * 16, grid_w * 16
        path = self.fusion[3](feats[3], None, feats[2].shape[-2:])
        path = self.fusion[2](path, feats[2], feats[1].shape[-2:])
        path = self.fusion[1](path, feats[1], feats[0].shape[-2:])
        path = self.fusion[0](path, feats[0], (h // 2, w // 2))
        x = self.conv_half(path)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
        return self.out(x)
