"""The CroCo-Stereo ViT (croco-vit-*), its RoPE, MIM pieces and EMA teacher (issue 4 unit tests)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from madis_core.models import build_model, count_parameters, get_entry, list_models
from madis_core.models.croco_vit import CrocoViTStereo, patchify, tile_offsets, unpatchify
from madis_core.models.rope import RoPE2D, patch_positions
from madis_core.training.losses import bounded_laplacian_loss
from madis_core.training.mim import (EmaTeacher, masked_reconstruction_loss, patch_targets, random_masks,
                                     step_generator)

torch.set_num_threads(1)  # robust timing when the 2 CI cores are shared


def tiny(**kw) -> CrocoViTStereo:
    torch.manual_seed(0)
    kw.setdefault("tile_size", (64, 128))
    return build_model("croco-vit-tiny", **kw).eval()


def pair(b=1, h=64, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g), torch.rand(b, 3, h, w, generator=g)


# ------------------------------------------------------------------------- RoPE
def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RoPE2D(100.0)
    q = torch.randn(1, 2, 6, 16, dtype=torch.float64)
    k = torch.randn(1, 2, 6, 16, dtype=torch.float64)
    pos_q = torch.randint(0, 20, (1, 6, 2))
    pos_k = torch.randint(0, 20, (1, 6, 2))
    scores = rope(q, pos_q) @ rope(k, pos_k).transpose(-1, -2)
    shift = torch.tensor([7, 11])
    shifted = rope(q, pos_q + shift) @ rope(k, pos_k + shift).transpose(-1, -2)
    torch.testing.assert_close(shifted, scores, rtol=1e-5, atol=1e-5)
    # the score of one query/key pair equals that of the same pair moved so the key sits at the origin
    s01 = rope(q[:, :, :1], pos_q[:, :1]) @ rope(k[:, :, :1], pos_k[:, :1]).transpose(-1, -2)
    s01_rel = rope(q[:, :, :1], pos_q[:, :1] - pos_k[:, :1] + 30) @ \
        rope(k[:, :, :1], torch.full_like(pos_k[:, :1], 30)).transpose(-1, -2)
    torch.testing.assert_close(s01, s01_rel, rtol=1e-5, atol=1e-5)
    # moving only the keys changes the scores (positions are really encoded), along x and along y
    for d in (torch.tensor([0, 3]), torch.tensor([3, 0])):
        moved = rope(q, pos_q) @ rope(k, pos_k + d).transpose(-1, -2)
        assert (moved - scores).abs().max() > 1e-3
    # rotation keeps norms
    torch.testing.assert_close(rope(q, pos_q).norm(dim=-1), q.norm(dim=-1))


def test_rope_rejects_bad_shapes():
    rope = RoPE2D()
    with pytest.raises(ValueError, match="divisible by 4"):
        rope(torch.zeros(1, 1, 4, 6), torch.zeros(1, 4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="positions"):
        rope(torch.zeros(1, 1, 4, 8), torch.zeros(1, 3, 2, dtype=torch.long))
    assert patch_positions(2, 2, 3).tolist()[1] == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


# ------------------------------------------------------------------------- registry and shapes
def test_named_configs_registered_with_expected_scale():
    names = [n for n in list_models() if get_entry(n).family == "croco-vit"]
    assert {"croco-vit-base", "croco-vit-small", "croco-vit-tiny"} <= set(names)
    with torch.device("meta"):
        base = build_model("croco-vit-base")
    assert len(base.enc_blocks) == 12 and len(base.dec_blocks) == 12
    assert base.patch_embed.out_channels == 768 and base.enc_blocks[0].attn.heads == 12
    assert base.hooks == [2, 5, 8, 11]
    assert 150e6 < count_parameters(base) < 300e6
    m = tiny()
    assert m.model_name == "croco-vit-tiny" and m.size_divisor == 16 and m.max_disparity > 0
    assert count_parameters(m) < 10e6


@pytest.mark.parametrize("h,w", [(37, 53), (17, 31), (64, 128)])
def test_forward_shapes_any_size(h, w):
    m = tiny()
    left, right = pair(2, h, w)
    with torch.no_grad():
        out = m(left, right)
    for k in ("disparity", "confidence", "conf_logit"):
        assert out[k].shape == (2, 1, h, w), k
    assert (out["disparity"] >= 0).all()
    assert ((out["confidence"] >= 0) & (out["confidence"] <= 1)).all()
    torch.testing.assert_close(out["confidence"], torch.sigmoid(out["conf_logit"] / 3))


def test_masked_patches_never_reach_the_encoder():
    m = tiny()
    left, right = pair(1)
    n = (64 // 16) * (128 // 16)
    g = torch.Generator().manual_seed(3)
    ml, mr = random_masks(1, n, 0.4, g), random_masks(1, n, 0.4, g)
    with torch.no_grad():
        out = m(left, right, mask_left=ml, mask_right=mr, reconstruct=True)
        assert out["recon_left"].shape == (1, n, 768) and out["recon_right"].shape == (1, n, 768)
        # scramble the pixels of every masked patch of both views: nothing may change
        pl, pr = patchify(left), patchify(right)
        pl[ml] = torch.rand_like(pl[ml])
        pr[mr] = torch.rand_like(pr[mr])
        out2 = m(unpatchify(pl, 4, 8), unpatchify(pr, 4, 8), mask_left=ml, mask_right=mr, reconstruct=True)
        for k in ("disparity", "recon_left", "recon_right"):
            torch.testing.assert_close(out2[k], out[k])
        # a visible patch does matter
        pl[~ml] = torch.rand_like(pl[~ml])
        out3 = m(unpatchify(pl, 4, 8), right, mask_left=ml, mask_right=mr, reconstruct=True)
        assert (out3["recon_left"] - out["recon_left"]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="same number"):
        bad = ml.clone()
        bad[0, (~bad[0]).nonzero()[0]] = True
        m(left, right, mask_left=bad, mask_right=mr)


# ------------------------------------------------------------------------- tiled inference
def test_tiled_inference_on_one_tile_equals_forward():
    m = tiny(tile_size=(64, 128))
    left, right = pair(2, 64, 128, seed=5)
    with torch.no_grad():
        ref = m(left, right)
    tiled = m.infer(left, right)
    torch.testing.assert_close(tiled["disparity"], ref["disparity"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tiled["confidence"], ref["confidence"], rtol=1e-5, atol=1e-5)


def test_tiled_inference_larger_and_smaller_inputs():
    m = tiny(tile_size=(32, 64), tile_overlap=0.5)
    left, right = pair(1, 50, 150, seed=1)
    out = m.infer(left, right)
    assert out["disparity"].shape == (1, 1, 50, 150) and torch.isfinite(out["disparity"]).all()
    assert (out["disparity"] >= 0).all()
    # overlapping tiles: every output pixel is a confidence-weighted mean of tile outputs at that pixel
    ys, xs = tile_offsets(50, 32, 0.5), tile_offsets(150, 64, 0.5)
    assert ys[0] == 0 and ys[-1] == 50 - 32 and xs[-1] == 150 - 64 and len(xs) >= 4
    y, x = 40, 100  # a pixel covered by several tiles
    ds, ws = [], []
    with torch.no_grad():
        for ty in ys:
            for tx in xs:
                if ty <= y < ty + 32 and tx <= x < tx + 64:
                    o = m(left[..., ty:ty + 32, tx:tx + 64], right[..., ty:ty + 32, tx:tx + 64])
                    ds.append(float(o["disparity"][0, 0, y - ty, x - tx]))
                    ws.append(float(torch.exp(6 * o["confidence"][0, 0, y - ty, x - tx] - 3)))
    assert len(ds) >= 2
    assert float(out["disparity"][0, 0, y, x]) == pytest.approx(np.dot(ds, ws) / np.sum(ws), rel=1e-4)
    # smaller than a tile: upscaled, result at the input size, disparity rescaled to input pixels
    small_l, small_r = pair(1, 20, 40)
    out = m.infer(small_l, small_r)
    assert out["disparity"].shape == (1, 1, 20, 40) and torch.isfinite(out["disparity"]).all()


def test_torch_backend_and_weights_roundtrip(tmp_path):
    from madis_core.checkpoint import load_model, save_weights
    from madis_core.estimator import StereoEstimator

    m = tiny(tile_size=(32, 64))
    path = save_weights(m, tmp_path / "madis.safetensors")
    m2 = load_model(path)
    assert m2.tile_size == (32, 64)
    est = StereoEstimator.from_pretrained(str(path), device="cpu")
    rng = np.random.default_rng(0)
    left = rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)
    right = rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)
    res = est.predict(left, right)
    assert res.disparity.shape == (45, 70) and res.confidence.shape == (45, 70)
    assert np.isfinite(res.disparity).all() and (res.disparity >= 0).all()
    # the reloaded network predicts exactly what the original one does through the same backend
    from madis_core.backends.torch_backend import TorchBackend

    ref = StereoEstimator(TorchBackend(m, device="cpu")).predict(left, right)
    np.testing.assert_allclose(res.disparity, ref.disparity, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.confidence, ref.confidence, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- MIM pieces
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.4, 0.75, 0.9])
def test_masks_keep_exact_ratio_independently(ratio):
    n = 37
    g = torch.Generator().manual_seed(0)
    ml, mr = random_masks(8, n, ratio, g), random_masks(8, n, ratio, g)
    assert ml.dtype == torch.bool and ml.shape == (8, n)
    assert (ml.sum(1) == round(ratio * n)).all() and (mr.sum(1) == round(ratio * n)).all()
    if 0 < ratio < 1:
        assert not torch.equal(ml, mr) and not torch.equal(ml[0], ml[1])
    # the same (seed, rank, step) redraws the same masks; another step draws other ones
    a = random_masks(2, n, 0.4, step_generator(1, 0, 5))
    assert torch.equal(a, random_masks(2, n, 0.4, step_generator(1, 0, 5)))
    assert not torch.equal(a, random_masks(2, n, 0.4, step_generator(1, 0, 6)))
    with pytest.raises(ValueError):
        random_masks(1, n, 1.0)


def test_reconstruction_loss_counts_masked_patches_only():
    torch.manual_seed(0)
    img = torch.randn(2, 3, 32, 48)
    target = patch_targets(img)
    assert target.shape == (2, 6, 768)
    torch.testing.assert_close(target.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(-1), torch.ones(2, 6), atol=1e-3, rtol=0)
    mask = random_masks(2, 6, 0.5, torch.Generator().manual_seed(1))
    pred = torch.randn(2, 6, 768)
    loss = masked_reconstruction_loss(pred, target, mask)
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    torch.testing.assert_close(loss, expected)
    pred2 = pred.clone()
    pred2[~mask] += 100.0  # visible patches: no effect
    torch.testing.assert_close(masked_reconstruction_loss(pred2, target, mask), loss)
    pred3 = pred.clone()
    pred3[mask] += 1.0
    assert masked_reconstruction_loss(pred3, target, mask) > loss + 0.5
    # gradient reaches masked patches only
    p = pred.clone().requires_grad_(True)
    masked_reconstruction_loss(p, target, mask).backward()
    assert (p.grad[~mask] == 0).all() and (p.grad[mask].abs().sum(-1) > 0).all()


def test_bounded_laplacian_matches_formula():
    torch.manual_seed(0)
    d, c, gt = torch.rand(1, 1, 4, 5) * 10, torch.randn(1, 1, 4, 5) * 4, torch.rand(1, 1, 4, 5) * 10
    valid = torch.rand(1, 1, 4, 5) > 0.3
    s = 6 * (0.5 - torch.sigmoid(c / 3))
    expected = ((d - gt).abs() * torch.exp(-s) + s)[valid].mean()
    torch.testing.assert_close(bounded_laplacian_loss(d, c, gt, valid), expected)
    assert float(s.abs().max()) < 3
    assert float(bounded_laplacian_loss(d, c, gt, torch.zeros_like(valid))) == 0.0


def test_ema_update_matches_formula_and_scope():
    torch.manual_seed(0)
    student = build_model("croco-vit-tiny")
    ema = EmaTeacher(student, momentum=0.9, prefixes=("patch_embed.", "enc_blocks."))
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    assert ema.update(student, step=0) == 0.9
    s = student.state_dict()
    for k, t in ema.module.state_dict().items():
        if k.startswith(("patch_embed.", "enc_blocks.")):
            torch.testing.assert_close(t, 0.9 * before[k] + 0.1 * s[k], rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(t, before[k]), k
    assert all(not p.requires_grad for p in ema.parameters())
    ramp = EmaTeacher(student, momentum=0.999, warmup_steps=10, start_momentum=0.9)
    assert ramp.momentum_at(0) == pytest.approx(0.9) and ramp.momentum_at(10) == pytest.approx(0.999)
    assert 0.9 < ramp.momentum_at(5) < 0.999 and ramp.momentum_at(3) < ramp.momentum_at(7)


@pytest.mark.parametrize("scope", ["encoder", "full"])
def test_teacher_gets_no_gradient(scope):
    from madis_core.training.config import with_defaults
    from madis_core.training.madis_task import MadisTask

    cfg = with_defaults({"model": {"name": "croco-vit-tiny"}, "train": {"crop": [32, 64]},
                         "ema": {"scope": scope, "momentum": 0.5}})
    torch.manual_seed(0)
    task = MadisTask(cfg, torch.device("cpu"))
    left, right = pair(2, 32, 64)
    batch = {"left": left, "right": right, "disparity": torch.rand(2, 1, 32, 64) * 8,
             "valid": torch.rand(2, 1, 32, 64) > 0.5}
    loss, logs = task.training_step(task.trainable_module(), batch, step=0)
    assert {"disp", "rec_left", "rec_right", "pseudo", "epe"} <= set(logs)
    assert not any(t.requires_grad for t in task.pseudo_label(left, right))
    loss.backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert all(not p.requires_grad for p in task.teacher.parameters())
    grads = [p.grad for p in task.model.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    enc_before = task.teacher.module.patch_embed.weight.clone()
    task.model.patch_embed.weight.data.add_(1.0)
    task.after_optimizer_step(0)
    torch.testing.assert_close(task.teacher.module.patch_embed.weight, enc_before + 0.5)
