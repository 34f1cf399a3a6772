"""A camera and world the models never trained on, for measuring inductive adaptation.

The project's synthetic generator renders the scenes (so ground truth is exact), with
its own per-view photometric randomisation switched off; then one fixed "other
camera" is applied to both views, unlike anything in the training stream:

- world: fewer objects, mostly procedural textures (``SHIFTED_SCENE``), a narrower
  baseline (disparities up to ``max_disparity`` = 64 px at 512 px width, where
  training saw up to 192);
- two unlike cameras (``SHIFTED_CAMERAS``): the right one softer (blur 1.3 px against
  0.8), with another white balance (gains 0.8/0.9/1.1) and gamma 0.8; both with
  vignetting (corners at 65 % and 45 % brightness) and signal-dependent noise (shot +
  read). Training only ever saw milder, symmetric per-view differences.

Chosen so that the pairs still carry what self-supervision needs: the photometric
error of the true disparity is clearly lower than that of the student's wrong
ones (``python benchmarks/adaptation.py --check-domain``: 0.191 against 0.216 for the
student on 8 pairs). A first
version (heavy noise, gamma 0.6 on both views, weak textures) did not: there the
loss at the ground truth was 0.2496 against 0.2510 at the student's prediction, so no
self-supervised method could learn from it, and adaptation made it worse.

Pairs are a pure function of (seed, index): ``shifted_samples(n, seed)`` gives sample
dicts with ground truth for evaluation; ``unlabeled(samples)`` strips them to
``UnlabeledPair`` s for adaptation. Adapt on one seed, evaluate on another.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from madis_core.adaptation.losses import gaussian_blur
from madis_core.adaptation.sources import UnlabeledPair

SHIFTED_SIZE = (256, 512)
SHIFTED_SCENE = dict(num_objects=(5, 15), natural_texture_prob=0.5, textureless_prob=0.02, specular_prob=0.0,
                     thin_prob=0.05, min_range_fraction=0.5, photometric=False, rectification_error_prob=0.0)
#: the two cameras of the rig: focus (blur sigma, px), vignetting (corner fall-off), white balance (RGB gains),
#: gamma, shot and read noise
SHIFTED_CAMERAS = (dict(blur=0.8, vignetting=0.35, gains=(1.0, 1.0, 1.0), gamma=1.0, shot=0.04, read=0.01),
                   dict(blur=1.3, vignetting=0.55, gains=(0.8, 0.9, 1.1), gamma=0.8, shot=0.04, read=0.01))
ADAPT_SEED = 101    # pairs to adapt on
EVAL_SEED = 202     # held-out pairs to evaluate on
CEILING_SEED = 303  # labelled pairs for the supervised ceiling (benchmarks/adaptation.py --ceiling)


def vignette(h: int, w: int, strength: float) -> torch.Tensor:
    """1 x H x W gain: 1 at the centre, ``1 - strength`` in the corners (cos^4 falloff)."""
    ys = torch.linspace(-1, 1, h).view(h, 1)
    xs = torch.linspace(-1, 1, w).view(1, w) * (w / h)
    r2 = (xs ** 2 + ys ** 2) / (1 + (w / h) ** 2)
    cos4 = 1.0 / (1.0 + r2 * ((1.0 / (1.0 - strength)) ** 0.5 - 1.0)) ** 2
    return cos4[None]


def apply_camera(img: torch.Tensor, gen: torch.Generator, blur: float, vignetting: float, gains, gamma: float,
                 shot: float, read: float) -> torch.Tensor:
    """One view (3 x H x W, linear in [0, 1]) through one camera of ``SHIFTED_CAMERAS``."""
    _, h, w = img.shape
    if blur > 0:
        img = gaussian_blur(img[None], blur)[0]
    img = img * vignette(h, w, vignetting) * torch.tensor(gains, dtype=img.dtype).view(3, 1, 1)
    noise = torch.randn(img.shape, generator=gen) * torch.sqrt(shot ** 2 * img.clamp(min=0) + read ** 2)
    return (img + noise).clamp(0, 1).pow(gamma)


def through_cameras(batch: Dict[str, torch.Tensor], gen: torch.Generator,
                    cameras: Sequence = SHIFTED_CAMERAS) -> Dict[str, torch.Tensor]:
    """Every pair of a generator batch (in place) through the rig: ``cameras`` = (left, right),
    each ``apply_camera``'s arguments as a dict or as (key, value) pairs."""
    for i in range(batch["left"].shape[0]):
        for camera, key in zip(cameras, ("left", "right")):
            batch[key][i] = apply_camera(batch[key][i], gen, **dict(camera))
    return batch


def shifted_generator(seed: int, height: int = SHIFTED_SIZE[0], width: int = SHIFTED_SIZE[1],
                      max_disparity: float = 64.0):
    """The shifted world's scenes (before the cameras): the project's generator with ``SHIFTED_SCENE``."""
    from madis_core.data.synthetic import SyntheticStereoGenerator

    return SyntheticStereoGenerator(height, width, max_disparity, seed=seed, device="cpu", **SHIFTED_SCENE)


#: an ideal camera (no blur, vignetting, colour cast, gamma or noise): ``shifted_samples(cameras=(IDEAL, IDEAL))``
#: renders the same scenes as the rig would see them through perfect optics
IDEAL_CAMERA = dict(blur=0.0, vignetting=0.0, gains=(1.0, 1.0, 1.0), gamma=1.0, shot=0.0, read=0.0)


@functools.lru_cache(maxsize=4)
def _shifted(n: int, seed: int, height: int, width: int, max_disparity: float,
             cameras: Tuple[Tuple[Tuple[str, object], ...], ...]) -> Tuple[Dict, ...]:
    from madis_core.data.datasets import tensor_batch_to_samples

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical pairs whatever the caller's thread count
    try:
        gen = shifted_generator(seed, height, width, max_disparity)
        out = []
        for i in range(n):
            batch = through_cameras(gen.generate(1, seed=i), torch.Generator().manual_seed(seed * 100_003 + i), cameras)
            out += tensor_batch_to_samples(batch, [f"shifted-{seed}-{i:03d}"])
    finally:
        torch.set_num_threads(threads)
    return tuple(out)


def shifted_samples(n: int, seed: int = EVAL_SEED, height: int = SHIFTED_SIZE[0], width: int = SHIFTED_SIZE[1],
                    max_disparity: float = 64.0, cameras: Sequence[Dict] = SHIFTED_CAMERAS) -> List[Dict]:
    """``n`` pairs of the shifted domain as sample dicts (with ground truth, for evaluation);
    ``cameras``: the (left, right) camera models (``apply_camera``'s arguments)."""
    frozen = tuple(tuple(sorted(c.items())) for c in cameras)
    return [dict(s) for s in _shifted(int(n), int(seed), int(height), int(width), float(max_disparity), frozen)]


def unlabeled(samples: Sequence[Dict]) -> List[UnlabeledPair]:
    """Images only: what adaptation may see of ``samples``."""
    return [UnlabeledPair(s["left"], s["right"], s["name"]) for s in samples]
