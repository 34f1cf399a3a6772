"""Augmentation (geometry stays consistent with the ground truth, photometric changes
are per view when asked) and the training stream (mixing, determinism, resume, ranks)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from madis_core.data import build_train_loader
from madis_core.data.augment import (AUGMENT_DEFAULTS, augment_batch, augment_options, color_jitter, eraser,
                                     random_scale_crop, right_vertical_jitter, vertical_flip)

torch.set_num_threads(1)  # 2 shared cores: keep the tests light



def _rng(seed=0):
    return np.random.default_rng(seed)


def _shifted_pair(h=48, w=96, d=6.0, seed=0):
    """A smooth random texture seen with a constant disparity d: right(x) = left(x + d)."""
    g = torch.Generator().manual_seed(seed)
    tex = F.interpolate(torch.rand(1, 3, h // 4, (w + 16) // 4, generator=g), size=(h, w + 16), mode="bicubic",
                        align_corners=False).clamp(0, 1)
    left = tex[..., 8:8 + w]
    xs = torch.arange(w, dtype=torch.float32) + 8 + d
    grid_x = (xs + 0.5) / (w + 16) * 2 - 1
    grid = torch.stack([grid_x.view(1, 1, w).expand(1, h, w),
                        ((torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1).view(1, h, 1).expand(1, h, w)], -1)
    right = F.grid_sample(tex, grid, mode="bilinear", align_corners=False)
    disp = torch.full((1, 1, h, w), d)
    return {"left": left, "right": right, "disparity": disp, "valid": torch.ones(1, 1, h, w, dtype=torch.bool)}


def _warp_error(s):
    """Mean |left - right(x - d)| over pixels whose match stays inside the image."""
    _, _, h, w = s["left"].shape
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w) - s["disparity"][:, 0]
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1).expand_as(xs)
    grid = torch.stack([(xs + 0.5) / w * 2 - 1, (ys + 0.5) / h * 2 - 1], -1)
    warped = F.grid_sample(s["right"], grid, mode="bilinear", align_corners=False)
    inside = (xs >= 1)[:, None] & s["valid"]
    return float((warped - s["left"]).abs().mean(1, keepdim=True)[inside].mean())


def test_scale_crop_scales_disparity_with_x_and_keeps_correspondence():
    s = _shifted_pair()
    assert _warp_error(s) < 0.01
    opts = {**AUGMENT_DEFAULTS, "scale_prob": 1.0, "scale_log2": (0.5, 0.5), "stretch_prob": 1.0, "stretch_log2": 0.2}
    out = random_scale_crop(s, (40, 80), _rng(3), opts)
    assert out["left"].shape == (1, 3, 40, 80) and out["disparity"].shape == (1, 1, 40, 80)
    sx = float(out["disparity"][0, 0, 0, 0]) / 6.0
    assert 2 ** 0.3 - 0.02 < sx < 2 ** 0.7 + 0.02 and sx != pytest.approx(2 ** 0.5)  # x stretched independently
    assert torch.allclose(out["disparity"], torch.full_like(out["disparity"], 6.0 * sx))
    assert _warp_error(out) < 0.02
    # the scaled ground truth is not just any number: the unscaled one no longer matches
    wrong = dict(out, disparity=torch.full_like(out["disparity"], 6.0))
    assert _warp_error(wrong) > 2 * _warp_error(out)


def test_scale_crop_upscales_small_images_and_keeps_sparse_masks_nearest():
    s = _shifted_pair(h=24, w=40)
    s["valid"][..., ::2, ::3] = False
    s["disparity"][~s["valid"]] = 0
    out = random_scale_crop(s, (32, 64), _rng(1), None)  # no augmentation: only the forced upscale
    assert out["left"].shape[-2:] == (32, 64)
    vals = out["disparity"][out["valid"]]
    assert torch.allclose(vals, torch.full_like(vals, 6.0 * 64 / 40))
    assert bool((out["disparity"][~out["valid"]] == 0).all()) and 0.1 < float(out["valid"].float().mean()) < 0.95


def test_vertical_flip_flips_everything_together():
    s = _shifted_pair()
    s["disparity"] = s["disparity"] + torch.arange(48, dtype=torch.float32).view(1, 1, 48, 1) * 0.01
    out = vertical_flip(s, _rng(), {"vflip_prob": 1.0})
    for k in ("left", "right", "disparity", "valid"):
        assert torch.equal(out[k], s[k].flip(-2))
    assert vertical_flip(s, _rng(), {"vflip_prob": 0.0}) is s


def test_eraser_fills_right_boxes_with_mean_colour_only():
    s = _shifted_pair()
    right = s["right"].repeat(4, 1, 1, 1)
    out = eraser(right, _rng(2), {**AUGMENT_DEFAULTS, "eraser_prob": 1.0, "eraser_size": (10, 20)})
    changed = (out != right).any(1)
    for i in range(4):
        assert changed[i].any()
        vals = out[i][:, changed[i]]
        mean = right[i].mean(dim=(1, 2))
        assert torch.allclose(vals, mean[:, None].expand_as(vals), atol=1e-6)
    assert torch.equal(eraser(right, _rng(2), {**AUGMENT_DEFAULTS, "eraser_prob": 0.0}), right)


def test_colour_jitter_symmetric_or_per_view():
    img = _shifted_pair()["left"].repeat(6, 1, 1, 1)
    sym = {**AUGMENT_DEFAULTS, "asymmetric_prob": 0.0}
    l, r = color_jitter(img, img.clone(), _rng(4), sym)
    assert torch.allclose(l, r) and not torch.allclose(l, img, atol=1e-3)
    assert 0 <= float(l.min()) and float(l.max()) <= 1
    asym = {**AUGMENT_DEFAULTS, "asymmetric_prob": 1.0}
    l, r = color_jitter(img, img.clone(), _rng(4), asym)
    per_sample_diff = (l - r).abs().mean(dim=(1, 2, 3))
    assert bool((per_sample_diff > 1e-3).all())
    grey = {**AUGMENT_DEFAULTS, "saturation": (0.0, 0.0), "asymmetric_prob": 0.0}
    l, _ = color_jitter(img, img, _rng(5), grey)
    assert float((l[:, 0] - l[:, 1]).abs().max()) < 1e-5  # saturation 0: grey


def test_right_vertical_jitter_moves_rows_by_at_most_the_maximum():
    h, w = 40, 64
    ramp = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(5, 3, h, w) / h
    opts = {**AUGMENT_DEFAULTS, "yjitter_prob": 1.0, "yjitter_max": 2.0, "yrot_deg": 0.0}
    out = right_vertical_jitter(ramp.clone(), _rng(6), opts)
    shift = ((out - ramp)[:, :, 5:-5] * h).mean(dim=(1, 2, 3))  # rows moved, in px
    assert bool((shift.abs() <= 2.0 + 1e-3).all()) and float(shift.abs().max()) > 0.2
    assert torch.equal(right_vertical_jitter(ramp, _rng(6), {**opts, "yjitter_prob": 0.0}), ramp)


def test_augment_batch_is_seeded_and_options_validated():
    b = {k: v.repeat(3, 1, 1, 1) for k, v in _shifted_pair().items()}
    opts = augment_options({"vflip_prob": 0.5, "eraser_prob": 1.0})
    a1 = augment_batch(b, _rng(9), opts)
    a2 = augment_batch(b, _rng(9), opts)
    a3 = augment_batch(b, _rng(10), opts)
    for k in a1:
        assert torch.equal(a1[k], a2[k])
    assert not torch.equal(a1["right"], a3["right"])
    for i in range(3):  # geometry: the ground truth is only ever flipped with the images
        assert torch.equal(a3["disparity"][i], b["disparity"][i]) or torch.equal(a3["disparity"][i], b["disparity"][i].flip(-2))
    assert augment_options(False) is None and augment_options({"enabled": False}) is None
    with pytest.raises(ValueError, match="unknown options"):
        augment_options({"flip": 0.5})


# --- training stream ---------------------------------------------------------------------------------
def _folder(tmp_path, n=3, h=40, w=72):
    rng = np.random.default_rng(0)
    for d in ("left", "right", "disp"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "left" / f"{i}.png"), img)
        cv2.imwrite(str(tmp_path / "right" / f"{i}.png"), img)
        disp = np.full((h, w), 4.0, np.float32)
        disp[:5] = np.nan  # no ground truth in the top rows
        np.save(tmp_path / "disp" / f"{i}.npy", disp)
    return tmp_path


CROP = (32, 64)


def test_stream_batches_contract_mixing_and_determinism(tmp_path):
    cfg = {"sources": [{"type": "synthetic", "weight": 1.0, "max_disparity": 24},
                       {"type": "folder", "root": str(_folder(tmp_path)), "weight": 1.0}],
           "augment": {"eraser_prob": 0.0}}
    s = build_train_loader(cfg, batch_size=6, crop=CROP, seed=1)
    b = next(s)
    assert b["left"].shape == (6, 3, *CROP) and b["right"].shape == (6, 3, *CROP)
    assert b["disparity"].shape == (6, 1, *CROP) and b["valid"].dtype == torch.bool
    assert 0 <= float(b["left"].min()) and float(b["left"].max()) <= 1
    assert bool((b["disparity"][~b["valid"]] == 0).all()) and bool((b["disparity"][b["valid"]] > 0).all())
    # both sources appear over a few batches (folder samples have constant scaled disparity)
    batches = [b] + [next(s) for _ in range(3)]
    is_folder = [bool((x["disparity"][i][x["valid"][i]].std() < 1e-4)) for x in batches for i in range(6)]
    assert any(is_folder) and not all(is_folder)
    # batch k is a pure function of (seed, rank, k): a new stream reproduces it, resume works
    s2 = build_train_loader(cfg, batch_size=6, crop=CROP, seed=1)
    for k in ("left", "right", "disparity", "valid"):
        assert torch.equal(s2.batch(2)[k], batches[2][k])
    state = s.state_dict()
    assert state["batches"] == 4
    nxt = next(s)
    s3 = build_train_loader(cfg, batch_size=6, crop=CROP, seed=1)
    s3.load_state_dict(state)
    assert torch.equal(next(s3)["right"], nxt["right"])
    # ranks and seeds differ
    r1 = build_train_loader(cfg, batch_size=6, crop=CROP, seed=1, rank=1, world_size=2).batch(0)
    assert not torch.equal(r1["left"], batches[0]["left"])


def test_stream_prefetch_gives_the_same_batches():
    cfg = {"sources": [{"type": "synthetic", "max_disparity": 24, "num_objects": [3, 6]}], "prefetch": 2,
           "max_disparity": 16}
    pre = build_train_loader(cfg, batch_size=2, crop=CROP, seed=5)
    plain = build_train_loader({**cfg, "prefetch": 0}, batch_size=2, crop=CROP, seed=5)
    try:
        for _ in range(3):
            a, b = next(pre), next(plain)
            assert torch.equal(a["left"], b["left"]) and torch.equal(a["disparity"], b["disparity"])
            assert float(a["disparity"].max()) < 16  # max_disparity invalidates larger ground truth
    finally:
        pre.close()


def test_stream_config_errors():
    with pytest.raises(ValueError, match="unknown type"):
        build_train_loader({"sources": [{"type": "imagenet"}]}, 2, CROP, 0)
    with pytest.raises(ValueError, match="smaller than the crop width"):
        build_train_loader({"sources": [{"type": "synthetic", "max_disparity": 192}]}, 2, CROP, 0)
    with pytest.raises(ValueError, match="needs a 'root'"):
        build_train_loader({"sources": [{"type": "kitti2015"}]}, 2, CROP, 0)
    with pytest.raises(ValueError, match="unknown options"):
        build_train_loader({"sources": [{"type": "synthetic", "max_disparity": 24, "texture": 1}]}, 2, CROP, 0)
    with pytest.raises(ValueError, match="rank"):
        build_train_loader({}, 2, CROP, 0, rank=2, world_size=2)
