"""Image <-> patch rearrangement shared by the masked-image-modelling models and losses."""
from __future__ import annotations

import torch


def patchify(img: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """B x C x H x W -> B x N x (patch*patch*C), patches row-major, pixels (py, px, c)."""
    b, c, h, w = img.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {patch}")
    x = img.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: torch.Tensor, grid_h: int, grid_w: int, patch: int = 16) -> torch.Tensor:
    """Inverse of ``patchify``: B x N x (patch*patch*C) -> B x C x H x W."""
    b, n, d = patches.shape
    c = d // (patch * patch)
    x = patches.reshape(b, grid_h, grid_w, patch, patch, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, grid_h * patch, grid_w * patch)
