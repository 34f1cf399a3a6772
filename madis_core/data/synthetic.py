"""Procedural synthetic stereo world with exact ground truth (torch; CPU or GPU).

Why it looks the way it does (design/data.md): many objects (10-30) with real
occlusions beat few; a wide per-sample disparity range matters; real-photo textures
beat noise; both views must be rendered from one scene so occluded regions carry
texture and the ground truth is exact; view-specific photometric changes break the
"identical statistics" shortcut.

The scene is a set of surfaces. Each surface has, in *left-image* coordinates,

* a disparity function ``d(x, y) = c + gx*(x-xc) + gy*(y-yc) + kk*((x-xc)^2 + (y-yc)^2)``
  (slanted and curved, ``dd/dx < 1`` so it never folds over in the right view),
* a footprint: a rotated superellipse, optionally wobbled, with a hole, or
  perforated (fences), or a thin bar; background planes cover everything,
* a texture that is a function of the left coordinates and the disparity only (so
  the same surface point has the same colour in both views).

The left view evaluates each surface at its pixels; the right view at ``x_r`` solves
``x_l - d(x_l, y) = x_r`` in closed form (a quadratic), which gives exact footprints
and exact occlusions in both views. A z-buffer keeps the largest disparity: sharp
depth edges, no interpolated "flying pixels". The occlusion mask (left pixels whose
surface point is hidden in the right view or falls outside it) is computed exactly
by evaluating the candidate occluders at the continuous right-view position.

Then each view gets its own camera: blur (stronger on one view half the time),
contrast/brightness/colour gains, a gamma-like tone curve, sensor noise, and optionally
a small vertical shift/rotation of the right view (``rectification_error_prob``; the
ground truth stays that of the ideal rectification). Pixels on object boundaries mix
their neighbours' colours as a lens would, while the ground truth stays sharp.

All randomness of a batch is drawn up front from ``(seed, batch index)``; on the CPU
the samples are then rendered on worker threads (one torch thread each), so the output
does not depend on the thread count.

    gen = SyntheticStereoGenerator(256, 512, max_disparity=192, seed=0)
    batch = gen.generate(8)          # dict of B x C x H x W tensors
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from madis_core.data.synthetic_camera import apply_camera, camera_params
from madis_core.data.synthetic_surfaces import (_GEOM, _SHADE, _SHADE_M, _SHADE_O, _SPECULAR, COL,
                                                MAX_TEXELS_PER_PIXEL, _features, _shading_tables,
                                                _shape_mask, _soften_edges, _solve_right)
from madis_core.data.textures import TextureAtlas
from madis_core.data.threads import single_threaded_pool

DEFAULT_OPTIONS: Dict[str, Any] = {
    "num_objects": (10, 30),          # foreground objects per sample (inclusive range)
    "min_range_fraction": 0.26,       # each sample's max disparity ~ U(frac, 1) * max_disparity
    "thin_prob": 0.12,                # share of thin bars (poles, wires)
    "curved_prob": 0.5,               # share of curved (quadratic) surfaces
    "max_slant": 0.35,                # |dd/dx|, |dd/dy| of slanted surfaces
    "wobble_prob": 0.4,               # irregular outlines
    "hole_prob": 0.1,                 # rings
    "perforated_prob": 0.08,          # fences / grids of holes
    "ground_prob": 0.5,               # a ground plane in the background
    "side_wall_prob": 0.3,            # a strongly slanted side wall in the background
    "natural_texture_prob": 0.65,     # natural-image texture vs procedural
    "textureless_prob": 0.1,          # (almost) uniform surfaces
    "specular_prob": 0.1,             # view-dependent highlights (break brightness constancy)
    "photometric": True,              # per-view brightness/contrast/gamma/colour/noise/blur differences
    "noise_max": 0.02,                # max std of the per-view sensor noise
    "blur_max": 1.0,                  # max sigma of the one-view blur (applied half the time)
    "rectification_error_prob": 0.0,  # share of right views with a vertical shift / small rotation
    "max_vertical_shift": 2.0,        # px
    "max_rotation_deg": 0.1,
    "texture_tile": 256,
    "natural_tiles": 48,
    "procedural_tiles": 16,
    "edge_antialias": True,           # mixed colours on pixels at object boundaries (as a lens gives)
    "render_threads": 0,              # CPU worker threads for rendering (0: torch.get_num_threads())
}


@dataclass
class _Scene:
    geometry: torch.Tensor  # len(_GEOM) x K, float32 on device (footprints, disparity)
    rows: np.ndarray  # same, float64 numpy (bounding boxes, per-surface scalars)
    appearance: torch.Tensor  # len(_SHADE) x K shading constants on device
    specular: Optional[torch.Tensor]  # len(_SPECULAR) x K, or None when no surface is specular


class SyntheticStereoGenerator:
    """Infinite, seeded stream of synthetic stereo pairs (see module docstring).

    ``generate(batch_size)`` returns a dict of tensors on ``device``:
    ``left``/``right`` (B x 3 x H x W float in [0, 1]), ``disparity`` (B x 1 x H x W,
    left view, px), ``disparity_right`` (right view), ``valid`` (all True: the
    disparity is defined everywhere), ``occlusion`` (left pixels not visible in the
    right view, including those that leave the frame).

    Calls draw successive batches of one seeded sequence; ``generate(n, seed=s)``
    instead returns the batch that is a pure function of ``(self.seed, s)``.
    """

    def __init__(self, height: int = 256, width: int = 512, max_disparity: float = 192, seed: int = 0,
                 device: str | torch.device = "cpu", **options: Any):
        unknown = set(options) - set(DEFAULT_OPTIONS)
        if unknown:
            raise TypeError(f"SyntheticStereoGenerator: unknown options {sorted(unknown)}; "
                            f"known: {sorted(DEFAULT_OPTIONS)}")
        if height < 16 or width < 16:
            raise ValueError(f"image size must be at least 16x16, got {height}x{width}")
        if not 1 <= max_disparity < width:
            raise ValueError(f"max_disparity must be in [1, width), got {max_disparity} for width {width}")
        self.height, self.width = int(height), int(width)
        self.max_disparity = float(max_disparity)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.options = {**DEFAULT_OPTIONS, **options}
        lo, hi = self.options["num_objects"]
        if not 0 <= lo <= hi:
            raise ValueError(f"num_objects must be a range (lo, hi) with 0 <= lo <= hi, got {self.options['num_objects']}")
        self.atlas = TextureAtlas(self.options["texture_tile"], self.options["natural_tiles"],
                                  self.options["procedural_tiles"], self.device)
        self._calls = 0
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_size = 0
        self._xs = torch.arange(self.width, dtype=torch.float32, device=self.device)
        self._ys = torch.arange(self.height, dtype=torch.float32, device=self.device)

    # --- state (resumable streams) ----------------------------------------------------
    def state_dict(self) -> Dict[str, int]:
        return {"seed": self.seed, "calls": self._calls}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.seed = int(state["seed"])
        self._calls = int(state["calls"])

    # --- public API -------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch_size: int, seed: Optional[int] = None) -> Dict[str, torch.Tensor]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed is None:
            seed = self._calls
            self._calls += 1
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(seed) & 0xFFFFFFFF, 0x5EED]))
        # camera effects draw from their own stream: turning them on or off keeps the scenes
        cam_rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(seed) & 0xFFFFFFFF, 0xCA3E]))
        B, H, W = batch_size, self.height, self.width
        out = {k: torch.empty(B, 3 if k in ("left", "right") else 1, H, W, device=self.device,
                              dtype=torch.bool if k in ("valid", "occlusion") else torch.float32)
               for k in ("left", "right", "disparity", "disparity_right", "valid", "occlusion")}
        # all randomness is drawn here, in order, so the batch does not depend on scheduling
        scenes = [(self._sample_scene(rng), camera_params(self.options, cam_rng)) for _ in range(B)]
        pool = self._render_pool(B)
        if pool is None:
            self.atlas.refresh(self.seed, int(seed))
            for i in range(B):
                self._render(*scenes[i], out, i)
        else:
            # samples are independent: render them on worker threads, one torch thread each.
            # The calling thread runs no torch op meanwhile: with GNU OpenMP its idle team
            # threads would otherwise spin and eat a core's worth of the render time.
            pool.submit(self.atlas.refresh, self.seed, int(seed)).result()
            list(pool.map(lambda i: self._render(*scenes[i], out, i), range(B)))
        return out

    def _render(self, scene: _Scene, cam: Dict[str, Any], out: Dict[str, torch.Tensor], i: int) -> None:
        """Render both views of one scene, with their camera effects, into row ``i``."""
        id_l, xl_l, d_l = self._render_left(scene)
        id_r, xl_r, d_r = self._render_right(scene)
        out["disparity"][i, 0] = d_l
        out["disparity_right"][i, 0] = d_r
        out["occlusion"][i, 0] = self._occlusion(scene, id_l, d_l, id_r)
        left = self._shade(scene, id_l, xl_l, d_l, right_view=False)
        right = self._shade(scene, id_r, xl_r, d_r, right_view=True)
        if self.options["edge_antialias"]:
            left, right = _soften_edges(left, id_l), _soften_edges(right, id_r)
        gen = None
        if "noise_seed" in cam:
            gen = torch.Generator(self.device).manual_seed(cam["noise_seed"])
        out["left"][i] = apply_camera(left, 0, cam, gen)
        out["right"][i] = apply_camera(right, 1, cam, gen)
        out["valid"][i].fill_(True)

    def _render_pool(self, batch_size: int) -> Optional[ThreadPoolExecutor]:
        """Worker threads for rendering on the CPU. Most rendering ops work on small
        image crops that torch does not parallelise, so one sample per thread (each
        with a single torch thread, see ``madis_core.data.threads``) uses the cores far
        better. ``render_threads`` 0 = as many as the caller's torch thread count."""
        n = int(self.options["render_threads"]) or torch.get_num_threads()
        n = min(n, batch_size)
        if self.device.type != "cpu" or n <= 1:
            return None
        if self._pool is None or self._pool_size != n:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = single_threaded_pool(n, "madis-render")
            self._pool_size = n
        return self._pool

    def __del__(self):  # pragma: no cover - best effort
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    # --- scene sampling (numpy, scalar parameters) -----------------------------------
    def _sample_scene(self, rng: np.random.Generator) -> _Scene:
        o, H, W = self.options, self.height, self.width
        dmax = self.max_disparity * rng.uniform(o["min_range_fraction"], 1.0)
        rows = []
        # background: a far wall, optionally a ground plane and a side wall (infinite planes)
        wall = rng.uniform(0.5, max(1.0, 0.3 * dmax))
        spread = 0.15 * dmax
        rows.append(self._plane(rng, wall, rng.uniform(-1, 1) * min(0.3, spread / W),
                                rng.uniform(-1, 1) * min(0.3, spread / H), dmax, floor=0.5))
        if rng.random() < o["ground_prob"]:
            horizon = rng.uniform(0.15, 0.7) * H
            bottom = rng.uniform(0.3, 0.9) * dmax
            gy = max(bottom - wall, 0.0) / max(H - horizon, 1.0)
            rows.append(self._plane(rng, wall + gy * (H / 2 - horizon), rng.uniform(-0.05, 0.05), gy, dmax, floor=None))
        if rng.random() < o["side_wall_prob"]:
            gx = rng.uniform(0.15, 0.45) * rng.choice([-1.0, 1.0])
            rows.append(self._plane(rng, rng.uniform(0.2, 0.6) * dmax, gx, rng.uniform(-0.05, 0.05), dmax, floor=None))
        n_obj = int(rng.integers(o["num_objects"][0], o["num_objects"][1] + 1))
        for _ in range(n_obj):
            rows.append(self._object(rng, dmax))
        table = np.stack(rows)
        shade, spec = _shading_tables(table, self.atlas.origins_np)
        has_spec = bool(table[:, COL["spec"]].max() > 0)
        to = lambda a: torch.from_numpy(a.astype(np.float32)).to(self.device)  # noqa: E731
        geometry = table[:, [COL[n] for n in _GEOM]].T
        return _Scene(to(geometry), table, to(shade), to(spec) if has_spec else None)

    def _appearance(self, rng: np.random.Generator, row: np.ndarray, radius: float) -> None:
        o, atlas = self.options, self.atlas
        natural = rng.random() < o["natural_texture_prob"] or atlas.n_procedural == 0
        row[COL["tile"]] = rng.integers(atlas.n_natural) if natural else atlas.n_natural + rng.integers(atlas.n_procedural)
        row[COL["ts"]] = 2.0 ** rng.uniform(-1.2, 0.4)  # texels per pixel (magnified .. mildly minified)
        th = rng.uniform(0, 2 * math.pi) if rng.random() < 0.5 else rng.normal(0, 0.1)
        row[COL["tcos"]], row[COL["tsin"]] = math.cos(th), math.sin(th)
        row[COL["toffu"]], row[COL["toffv"]] = rng.uniform(0, 2 * atlas.tile, 2)
        if natural:
            gains = rng.uniform(0.6, 1.25) * rng.uniform(0.75, 1.25, 3)
        else:
            gains = rng.uniform(0.85, 1.15, 3)
        row[[COL["gain_r"], COL["gain_g"], COL["gain_b"]]] = gains
        row[[COL["bias_r"], COL["bias_g"], COL["bias_b"]]] = rng.uniform(-0.08, 0.08) + rng.uniform(-0.03, 0.03, 3)
        row[COL["flat"]] = rng.uniform(0.85, 1.0) if rng.random() < o["textureless_prob"] else rng.uniform(0.0, 0.15)
        row[[COL["fc_r"], COL["fc_g"], COL["fc_b"]]] = rng.uniform(0.05, 0.95, 3)
        row[COL["amb"]] = rng.uniform(0.55, 1.1)
        g = rng.uniform(0, 0.35) / radius
        phi = rng.uniform(0, 2 * math.pi)
        row[COL["shx"]], row[COL["shy"]] = g * math.cos(phi), g * math.sin(phi)
        row[COL["R"]] = radius
        if rng.random() < o["specular_prob"]:
            row[COL["spec"]] = rng.uniform(0.2, 0.7)
            row[COL["spx"]], row[COL["spy"]] = rng.uniform(-0.5, 0.5, 2) * radius
            row[COL["spsig"]] = rng.uniform(0.15, 0.5) * radius
            row[COL["spshift"]] = rng.uniform(-0.3, 0.3) * radius
        else:
            row[COL["spsig"]] = 1.0

    def _plane(self, rng, c: float, gx: float, gy: float, dmax: float, floor: Optional[float]) -> np.ndarray:
        """An infinite background plane, disparity ``c`` at the image centre, slopes
        (gx, gy) scaled down until it stays <= dmax (and >= ``floor`` if given) over
        the whole extended domain the right view sees (x up to W + dmax). Planes
        without a floor may go below the far wall; the z-buffer hides those parts."""
        H, W = self.height, self.width
        row = np.zeros(len(COL))
        row[COL["xc"]], row[COL["yc"]] = W / 2, H / 2
        row[COL["cos"]], row[COL["a"]], row[COL["b"]], row[COL["p"]] = 1.0, 1.0, 1.0, 2.0
        row[COL["pthr"]], row[COL["inf"]] = 2.0, 1.0
        c = float(np.clip(c, floor if floor is not None else 0.5, dmax))
        span = abs(gx) * (W / 2 + dmax) + abs(gy) * H / 2
        room = dmax - c if floor is None else min(dmax - c, c - floor)
        if span > room:
            f = max(room, 0.0) / span
            gx, gy = gx * f, gy * f
        row[COL["c"]], row[COL["gx"]], row[COL["gy"]] = c, gx, gy
        self._appearance(rng, row, float(W))
        return row

    def _object(self, rng: np.random.Generator, dmax: float) -> np.ndarray:
        o, H, W = self.options, self.height, self.width
        row = np.zeros(len(COL))
        c = rng.uniform(0.08, 1.0) * dmax
        thin = rng.random() < o["thin_prob"]
        if thin:
            width = rng.uniform(1.5, 5.0)
            a, b, p = rng.uniform(0.08, 0.45) * W, width / 2, 8.0
            radius = a
        else:
            rmin, rmax = max(5.0, 0.015 * W), 0.35 * math.sqrt(H * W)
            radius = math.exp(rng.uniform(math.log(rmin), math.log(rmax)))
            a, b = radius, radius * math.exp(rng.uniform(math.log(0.3), 0.0))
            p = float(rng.choice([1.0, 2.0, 4.0, 8.0], p=[0.15, 0.45, 0.2, 0.2]))
            if rng.random() < o["wobble_prob"]:
                row[COL["wamp"]] = rng.uniform(0.05, 0.25)
                row[COL["wfu"]] = rng.uniform(0.5, 3.0) * math.pi / a
                row[COL["wfv"]] = rng.uniform(0.5, 3.0) * math.pi / b
                row[COL["wpu"]], row[COL["wpv"]] = rng.uniform(0, 2 * math.pi, 2)
            if rng.random() < o["hole_prob"] and b > 8:
                row[COL["hole"]] = rng.uniform(0.3, 0.7)
        row[COL["pthr"]] = 2.0
        if not thin and rng.random() < o["perforated_prob"] and b > 15:
            row[COL["pfreq"]] = 2 * math.pi / rng.uniform(12.0, 40.0)
            row[COL["pthr"]] = rng.uniform(0.3, 0.8)
        theta = rng.uniform(0, math.pi)
        cs, sn = math.cos(theta), math.sin(theta)
        margin = 1.0 + row[COL["wamp"]]
        hx = margin * (abs(a * cs) + abs(b * sn))
        hy = margin * (abs(a * sn) + abs(b * cs))
        # slant and curvature, limited so dd/dx < 0.6 (no fold-over) and d stays in [0.5, dmax]
        ms = o["max_slant"] * (0.3 if thin else 1.0)
        gx, gy = rng.uniform(-ms, ms, 2)
        kk = 0.0
        if not thin and rng.random() < o["curved_prob"]:
            kk = rng.uniform(-0.3, 0.3) * radius / (radius * radius)
        slope = abs(gx) + 2 * abs(kk) * hx
        if slope > 0.6:
            gx, kk = gx * 0.6 / slope, kk * 0.6 / slope
        delta = abs(gx) * hx + abs(gy) * hy + abs(kk) * (hx * hx + hy * hy)
        room = min(c - 0.5, dmax - c)
        if delta > room:
            f = max(room, 0.0) / delta
            gx, gy, kk, delta = gx * f, gy * f, kk * f, delta * f
        row[COL["xc"]] = rng.uniform(-0.1 * W, W + 0.5 * c)
        row[COL["yc"]] = rng.uniform(-0.1 * H, 1.1 * H)
        row[COL["cos"]], row[COL["sin"]] = cs, sn
        row[COL["a"]], row[COL["b"]], row[COL["p"]] = a, b, p
        row[COL["c"]], row[COL["gx"]], row[COL["gy"]], row[COL["kk"]] = c, gx, gy, kk
        row[COL["delta"]] = delta
        self._appearance(rng, row, radius)
        if kk != 0.0:
            row[COL["shq"]] = -math.copysign(rng.uniform(0.0, 0.3), kk)
        return row

    # --- rendering --------------------------------------------------------------------
    def _bbox(self, row: np.ndarray, right: bool) -> Optional[Tuple[int, int, int, int]]:
        H, W = self.height, self.width
        if row[COL["inf"]] > 0:
            return 0, H, 0, W
        a, b, cs, sn = row[COL["a"]], row[COL["b"]], row[COL["cos"]], row[COL["sin"]]
        m = 1.0 + row[COL["wamp"]]
        hx = m * (abs(a * cs) + abs(b * sn))
        hy = m * (abs(a * sn) + abs(b * cs))
        xc, yc = row[COL["xc"]], row[COL["yc"]]
        x0, x1 = xc - hx, xc + hx
        if right:
            dlo, dhi = row[COL["c"]] - row[COL["delta"]], row[COL["c"]] + row[COL["delta"]]
            x0, x1 = x0 - dhi - 1, x1 - dlo + 1
        ix0, ix1 = max(0, int(math.floor(x0))), min(W, int(math.ceil(x1)) + 1)
        iy0, iy1 = max(0, int(math.floor(yc - hy))), min(H, int(math.ceil(yc + hy)) + 1)
        if ix0 >= ix1 or iy0 >= iy1:
            return None
        return iy0, iy1, ix0, ix1

    @staticmethod
    def _params(scene: _Scene, k: int) -> Dict[str, float]:
        row = scene.rows[k]
        return {name: float(row[COL[name]]) for name in _GEOM}

    def _render_left(self, scene: _Scene):
        H, W = self.height, self.width
        zbuf = torch.full((H, W), -1e9, device=self.device)
        ids = torch.zeros((H, W), dtype=torch.long, device=self.device)
        for k in range(len(scene.rows)):
            box = self._bbox(scene.rows[k], right=False)
            if box is None:
                continue
            y0, y1, x0, x1 = box
            P = self._params(scene, k)
            dx = (self._xs[x0:x1] - P["xc"])[None, :]
            dy = (self._ys[y0:y1] - P["yc"])[:, None]
            col = P["gx"] * dx
            row = P["c"] + P["gy"] * dy
            if P["kk"] != 0.0:
                col = col + P["kk"] * dx * dx
                row = row + P["kk"] * dy * dy
            d = row + col
            zb = zbuf[y0:y1, x0:x1]
            upd = d > zb
            if P["inf"] == 0:
                u = dx * P["cos"] + dy * P["sin"]
                v = dy * P["cos"] - dx * P["sin"]
                upd &= _shape_mask(u, v, P, _features(scene.rows[k]))
            zb.copy_(torch.where(upd, d, zb))
            ids[y0:y1, x0:x1].masked_fill_(upd, k)
        xl = self._xs[None, :].expand(H, W)
        return ids, xl, zbuf

    def _render_right(self, scene: _Scene):
        H, W = self.height, self.width
        zbuf = torch.full((H, W), -1e9, device=self.device)
        ids = torch.zeros((H, W), dtype=torch.long, device=self.device)
        xl_buf = torch.zeros((H, W), device=self.device)
        for k in range(len(scene.rows)):
            box = self._bbox(scene.rows[k], right=True)
            if box is None:
                continue
            y0, y1, x0, x1 = box
            P = self._params(scene, k)
            xr = self._xs[x0:x1][None, :]
            dy = (self._ys[y0:y1] - P["yc"])[:, None]
            xl, ok = _solve_right(xr, dy, P)
            d = xl - xr
            zb = zbuf[y0:y1, x0:x1]
            upd = d > zb
            if ok is not None:
                upd &= ok
            if P["inf"] == 0:
                dx = xl - P["xc"]
                u = dx * P["cos"] + dy * P["sin"]
                v = dy * P["cos"] - dx * P["sin"]
                upd &= _shape_mask(u, v, P, _features(scene.rows[k]))
            zb.copy_(torch.where(upd, d, zb))
            ids[y0:y1, x0:x1].masked_fill_(upd, k)
            xb = xl_buf[y0:y1, x0:x1]
            xb.copy_(torch.where(upd, xl, xb))
        return ids, xl_buf, zbuf

    def _occlusion(self, scene: _Scene, id_l, d_l, id_r) -> torch.Tensor:
        """Left pixels whose surface point is hidden in the right view or leaves it.

        A left pixel lands at x_r = x - d in the right view, between the right pixels
        floor(x_r) and floor(x_r) + 1. Where both show the pixel's own surface it is
        visible; otherwise the surfaces shown there are the candidate occluders, and
        each is tested exactly at the continuous x_r."""
        H, W = self.height, self.width
        xr = self._xs[None, :] - d_l
        occ = xr < 0
        f = xr.floor().clamp_(0, W - 1).long()
        # one gather: surface id at floor(x_r) and whether the next right pixel differs
        packed = id_r * 2
        packed[:, :-1] += id_r[:, 1:] != id_r[:, :-1]
        packed[:, -1] += 1
        packed = packed.gather(1, f)
        id_f = packed >> 1
        amb = ~occ & ((id_f != id_l) | (packed & 1).bool())
        if not bool(amb.any()):
            return occ
        yy, xx = amb.nonzero(as_tuple=True)
        xr_a, d_a, own = xr[yy, xx], d_l[yy, xx], id_l[yy, xx]
        fa = f[yy, xx]
        hidden = torch.zeros_like(d_a, dtype=torch.bool)
        for cand in (id_r[yy, fa], id_r[yy, (fa + 1).clamp_(max=W - 1)]):
            rows = scene.geometry.index_select(1, cand)  # len(_GEOM) x N, contiguous rows
            P = {name: rows[i] for i, name in enumerate(_GEOM)}
            dy = yy.float() - P["yc"]
            xl, ok = _solve_right(xr_a, dy, P)
            ok = torch.ones_like(hidden) if ok is None else ok
            dx = xl - P["xc"]
            u = dx * P["cos"] + dy * P["sin"]
            v = dy * P["cos"] - dx * P["sin"]
            inside = _shape_mask(u, v, P) | (P["inf"] > 0)
            hidden |= (cand != own) & ok & inside & ((xl - xr_a) > d_a + 1e-3)
        occ[yy, xx] = hidden
        return occ

    def _shade(self, scene: _Scene, ids, xl, d, right_view: bool) -> torch.Tensor:
        """Colour of each pixel from its surface, left-x and disparity (3 x H x W).
        Everything is a function of the surface point (left x, y, d), so a point has
        the same colour in both views, except the view-dependent specular term."""
        A = scene.appearance  # P x K
        g = A.gather(1, ids.reshape(1, -1).expand(A.shape[0], -1)).view(A.shape[0], *ids.shape)  # P x H x W
        S = {n: g[i] for i, n in enumerate(_SHADE)}
        dx = xl - S["xc"]
        dy = self._ys[:, None] - S["yc"]
        # projective texture scale: texel spacing follows depth (1/d) across slanted surfaces;
        # at most MAX_TEXELS_PER_PIXEL so textures are not minified into aliasing moire
        r = (S["c"] / d.clamp(min=1e-3)).clamp_(0.5, 2.0).mul_(S["ts"]).clamp_(max=MAX_TEXELS_PER_PIXEL)
        rdx, rdy = r * dx, r * dy
        tu = torch.addcmul(torch.addcmul(S["toffu"], S["tcs"], rdx), S["tsn"], rdy)
        tv = torch.addcmul(torch.addcmul(S["toffv"], S["tcs"], rdy), S["tsn"], rdx, value=-1.0)
        tex = self.atlas.sample(S["ox"][None], S["oy"][None], tu[None], tv[None])[0]  # 3 x H x W
        shade = torch.addcmul(torch.addcmul(S["amb"], S["shx"], dx), S["shy"], dy)
        shade.addcmul_(S["shq"], dx * dx + dy * dy).clamp_(0.05, 2.0)
        col = torch.addcmul(g[_SHADE_O:_SHADE_O + 3], tex, g[_SHADE_M:_SHADE_M + 3]).mul_(shade)
        if scene.specular is not None:
            spec_obj = scene.specular[_SPECULAR.index("spec")] > 0
            yy, xx = spec_obj[ids].nonzero(as_tuple=True)
            if yy.numel():
                P = {n: scene.specular[i][ids[yy, xx]] for i, n in enumerate(_SPECULAR)}
                sx = xl[yy, xx] - P["xc"] - P["spx"] - (P["spshift"] if right_view else 0.0)
                sy = yy.float() - P["yc"] - P["spy"]
                col[:, yy, xx] += P["spec"] * torch.exp(-(sx * sx + sy * sy) * P["spinv"])
        return col

    # --- camera effects (per view) -----------------------------------------------------
