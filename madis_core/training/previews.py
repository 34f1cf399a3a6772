"""Small helpers that turn training tensors into uint8 RGB images for TensorBoard."""
from __future__ import annotations

import numpy as np
import torch


def image_panel(img: torch.Tensor) -> np.ndarray:
    """3 x H x W float in [0, 1] -> H x W x 3 uint8."""
    arr = img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (arr * 255.0 + 0.5).astype(np.uint8)


def disparity_panel(disp: np.ndarray, vmax: float) -> np.ndarray:
    """H x W disparity (NaN = unknown) -> H x W x 3 uint8 with the project's colour map."""
    from madis_core.io import colorize_disparity

    return colorize_disparity(np.asarray(disp, dtype=np.float32), max_disparity=vmax)
