"""Texture atlas for the synthetic stereo generator.

Networks trained on procedural noise alone learn textures that real images do not
have (design/data.md); real-photo patches transfer better. The atlas therefore mixes
crops of the natural images scikit-image ships (random crops, scales, rotations,
area-downsampled so they are not aliased) with procedural tiles regenerated on every
call: fractal value noise, stripes, checkerboards and grids (repetitive texture is a
classic failure case of stereo matching).

The Motorcycle stereo pair is never used as a texture: it is the project's only real
test image.

Layout: one ``1 x 3 x (rows * tile) x (cols * tile)`` float tensor; tile ``i`` lives at
row ``i // cols``, column ``i % cols``. Natural tiles come first, procedural tiles
after them (``TextureAtlas.procedural_slice``).
"""
from __future__ import annotations

import functools
import logging
import math
from typing import List, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: scikit-image sample images used as texture sources (bundled, no download needed).
#: Mostly smooth images (colorwheel, retina, hubble_deep_field, clock) are left out:
#: textureless surfaces come from the generator's own ``textureless_prob``.
NATURAL_IMAGES: Tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel",
    "immunohistochemistry", "moon", "page", "rocket", "text", "cell", "chelsea",
)
#: crops whose mean gradient magnitude is below this are redrawn (a few times)
MIN_TILE_DETAIL = 0.02
#: images that must never become training texture (held-out real test data)
EXCLUDED_IMAGES = ("stereo_motorcycle", "motorcycle_left", "motorcycle_right")

ATLAS_COLUMNS = 8
#: procedural tiles are redrawn in this many staggered groups (one group per batch)
REFRESH_GROUPS = 4


def _load_natural_images() -> List[np.ndarray]:
    """Float32 RGB images in [0, 1] of every bundled sample image that loads offline."""
    import skimage.data

    images = []
    for name in NATURAL_IMAGES:
        assert name not in EXCLUDED_IMAGES
        try:
            img = np.asarray(getattr(skimage.data, name)())
        except Exception as exc:  # a missing optional image must not break training
            log.debug("texture source %s unavailable: %s", name, exc)
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3].astype(np.float32) / 255.0
        images.append(np.ascontiguousarray(img))
    if not images:
        raise RuntimeError("no scikit-image sample image could be loaded for the texture atlas")
    return images


def _random_crop(img: np.ndarray, tile: int, rng: np.random.Generator) -> np.ndarray:
    """A tile x tile window of ``img`` at a random scale, position and (half the time) rotation."""
    h, w = img.shape[:2]
    smax = min(h, w)
    # source window of side s (>= 0.75 tile: tiles are never magnified by more than 4/3)
    s = float(np.exp(rng.uniform(np.log(min(tile * 0.75, smax)), np.log(smax))))
    angle = rng.uniform(-180, 180) if rng.random() < 0.5 else 0.0
    cx = rng.uniform(s / 2, w - s / 2) if w > s else w / 2
    cy = rng.uniform(s / 2, h - s / 2) if h > s else h / 2
    scale = tile / s
    src, f = img, 1
    if scale < 0.5:  # area-downsample first so the warp does not alias
        f = max(1, int(1 / scale / 1.5))
        src = cv2.resize(img, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    m = cv2.getRotationMatrix2D((cx / f, cy / f), angle, scale * f)
    m[0, 2] += tile / 2 - cx / f
    m[1, 2] += tile / 2 - cy / f
    return cv2.warpAffine(src, m, (tile, tile), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)


@functools.lru_cache(maxsize=4)
def natural_tiles(count: int, tile: int, seed: int = 0) -> np.ndarray:
    """``count`` tiles (count x tile x tile x 3, float32) cut from the sample images at
    random scales and rotations. Deterministic for a given seed; cached per process."""
    rng = np.random.default_rng(seed)
    images = _load_natural_images()
    tiles = np.empty((count, tile, tile, 3), dtype=np.float32)
    for i in range(count):
        img = images[i % len(images)] if i < len(images) else images[rng.integers(len(images))]
        for _ in range(6):  # prefer crops with some detail
            tiles[i] = _random_crop(img, tile, rng)
            gy, gx = np.gradient(tiles[i].mean(axis=2))
            if np.mean(np.hypot(gx, gy)) >= MIN_TILE_DETAIL:
                break
    return tiles


def _value_noise(gen: torch.Generator, n: int, tile: int, device: torch.device) -> torch.Tensor:
    """Fractal (multi-octave) value noise, n x 1 x tile x tile in [0, 1]. Octaves are
    accumulated up a pyramid (each level upsampled once), so the cost is ~one
    full-size bicubic upsampling whatever the number of octaves."""
    base = int(torch.randint(2, 6, (1,), generator=gen))
    octaves = int(torch.randint(5, 9, (1,), generator=gen))
    persistence = 0.45 + 0.35 * float(torch.rand(1, generator=gen))
    size = base
    out = torch.rand(n, 1, size, size, generator=gen)
    amp = 1.0
    for _ in range(1, octaves):
        amp *= persistence
        size = min(size * 2, tile)
        out = F.interpolate(out, size=(size, size), mode="bicubic", align_corners=False)
        out += amp * torch.rand(n, 1, size, size, generator=gen)
    out = F.interpolate(out.to(device), size=(tile, tile), mode="bicubic", align_corners=False)
    lo = out.amin(dim=(2, 3), keepdim=True)
    hi = out.amax(dim=(2, 3), keepdim=True)
    return (out - lo) / (hi - lo + 1e-6)


def _periodic(gen: torch.Generator, n: int, tile: int, device: torch.device) -> torch.Tensor:
    """Stripes, checkerboards and grids with random period and orientation, n x 1 x t x t."""
    ys, xs = torch.meshgrid(torch.arange(tile, device=device, dtype=torch.float32),
                            torch.arange(tile, device=device, dtype=torch.float32), indexing="ij")
    r = torch.rand(n, 6, generator=gen).to(device)
    theta = r[:, 0] * math.pi
    period = 5.0 + r[:, 1] * 27.0
    kind = (r[:, 2] * 3).long()  # 0 stripes, 1 checker, 2 grid
    sharp = 1.0 + r[:, 3] * 20.0  # soft sinusoid .. hard edges
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u = (xs * c + ys * s) * (2 * math.pi / period[:, None, None])
    v = (-xs * s + ys * c) * (2 * math.pi / period[:, None, None])
    su, sv = torch.sin(u), torch.sin(v)
    val = torch.where(kind[:, None, None] == 0, su,
                      torch.where(kind[:, None, None] == 1, su * sv, torch.maximum(su, sv)))
    val = torch.tanh(val * sharp[:, None, None]) * 0.5 + 0.5
    return val[:, None]


def procedural_tiles(gen: torch.Generator, n: int, tile: int, device: torch.device) -> torch.Tensor:
    """n x 3 x tile x tile procedural colour textures (half noise, half periodic)."""
    n_noise = n - n // 2
    pattern = torch.cat([_value_noise(gen, n_noise, tile, device), _periodic(gen, n // 2, tile, device)], 0)
    # map the scalar pattern between two random colours, plus a little independent noise per channel
    c0 = torch.rand(n, 3, 1, 1, generator=gen).to(device)
    # second colour 0.3..0.7 away per channel (cyclically), so patterns never vanish
    c1 = torch.remainder(c0 + 0.3 + 0.4 * torch.rand(n, 3, 1, 1, generator=gen).to(device), 1.0)
    detail = _value_noise(gen, n, tile, device) - 0.5
    out = c0 + (c1 - c0) * pattern + 0.15 * detail
    return out.clamp_(0, 1)


class TextureAtlas:
    """Natural tiles (fixed per process) + procedural tiles (redrawn by ``refresh``)."""

    def __init__(self, tile: int = 256, n_natural: int = 48, n_procedural: int = 16,
                 device: str | torch.device = "cpu", seed: int = 0):
        if tile < 16:
            raise ValueError(f"texture tile size must be >= 16, got {tile}")
        if n_natural < 1 or n_procedural < 0:
            raise ValueError("texture atlas needs at least one natural tile and a non-negative procedural count")
        self.tile = tile
        self.n_natural = n_natural
        self.n_procedural = n_procedural
        self.count = n_natural + n_procedural
        self.cols = ATLAS_COLUMNS
        self.rows = (self.count + self.cols - 1) // self.cols
        self.device = torch.device(device)
        nat = torch.from_numpy(natural_tiles(n_natural, tile, seed)).permute(0, 3, 1, 2)
        self.atlas = torch.zeros(1, 3, self.rows * tile, self.cols * tile, device=self.device)
        self._write_tiles(0, nat.to(self.device))
        self._group_keys: dict = {}
        origins = [((i % self.cols) * tile, (i // self.cols) * tile) for i in range(self.count)]
        self.origins_np = np.array(origins, dtype=np.float64)  # count x 2 (x0, y0) in atlas pixels

    def _write_tiles(self, start: int, tiles: torch.Tensor) -> None:
        t = self.tile
        for j in range(tiles.shape[0]):
            i = start + j
            r, c = divmod(i, self.cols)
            self.atlas[0, :, r * t:(r + 1) * t, c * t:(c + 1) * t] = tiles[j]

    def refresh(self, seed: int, index: int) -> None:
        """Procedural tiles for batch ``index`` of the stream ``seed``.

        The tiles form ``REFRESH_GROUPS`` groups; group q is redrawn at the batches
        ``m`` with ``(m + q) % REFRESH_GROUPS == 0`` from a generator seeded by
        ``(seed, m)``. Consecutive batches therefore redraw one group each (cheap),
        and the atlas of batch ``index`` is a pure function of ``(seed, index)`` (so a
        resumed or randomly accessed stream sees the same textures)."""
        n = self.n_procedural
        if n == 0:
            return
        groups = min(REFRESH_GROUPS, n)
        for q in range(groups):
            m = index - ((index + q) % groups)
            key = (seed, m)
            if self._group_keys.get(q) == key:
                continue
            slots = list(range(q, n, groups))
            ss = np.random.SeedSequence([seed & 0xFFFFFFFF, (m + 2**31) & 0xFFFFFFFF, 0x7E47])
            gen = torch.Generator().manual_seed(int(ss.generate_state(1, np.uint64)[0] >> 1))
            tiles = procedural_tiles(gen, len(slots), self.tile, self.device)
            for j, slot in enumerate(slots):
                self._write_tiles(self.n_natural + slot, tiles[j:j + 1])
            self._group_keys[q] = key

    def sample(self, origin_x: torch.Tensor, origin_y: torch.Tensor, tu: torch.Tensor, tv: torch.Tensor) -> torch.Tensor:
        """Bilinear texture lookup. ``origin_x/y``: atlas position of each pixel's tile
        (``origins`` of its tile index); ``tu``/``tv``: tile-local texel coordinates, any
        real value (mirrored-repeated, so the texture is seamless). All B x H x W.
        Returns B x 3 x H x W."""
        t = float(self.tile)
        aw, ah = self.atlas.shape[-1], self.atlas.shape[-2]
        # mirrored repeat onto the texel centres [0.5, t - 0.5]: no bleeding between tiles
        # t - |(x mod 2t) - t| is a triangle wave; clamped to the centres, scaled to atlas units below
        tu = torch.remainder(tu, 2 * t).sub_(t).abs_().clamp_(0.5, t - 0.5)  # = t - mirrored
        tv = torch.remainder(tv, 2 * t).sub_(t).abs_().clamp_(0.5, t - 0.5)
        grid = torch.stack([torch.add(origin_x * (2.0 / aw) + (2.0 * t / aw - 1.0), tu, alpha=-2.0 / aw),
                            torch.add(origin_y * (2.0 / ah) + (2.0 * t / ah - 1.0), tv, alpha=-2.0 / ah)], dim=-1)
        b, h, w = tu.shape
        out = F.grid_sample(self.atlas, grid.reshape(1, b * h, w, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)
        return out.reshape(3, b, h, w).permute(1, 0, 2, 3)
