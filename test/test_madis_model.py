"""The MaDis matching transformer (madis-*): warm start, masking, reconstruction, training step."""
from __future__ import annotations

import pytest
import torch

from madis_core.checkpoint import read_weights, shipped_weights
from madis_core.models import build_model, get_entry, list_models
from madis_core.models.epipolar_transformer import EpipolarBlock, RoPE1D
from madis_core.models.madis import MadisMatchStereo
from madis_core.training.mim import random_masks

torch.set_num_threads(1)


def pair(b=1, h=64, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    left = torch.rand(b, 3, h, w, generator=g)
    return left, torch.roll(left, -6, dims=3)


def warm_tiny(**overrides) -> MadisMatchStereo:
    """madis-tiny with the shipped student's tensors loaded into its CNN parts."""
    torch.manual_seed(0)
    m = build_model("madis-tiny", **overrides)
    _, _, state = read_weights(shipped_weights("student"))
    own = m.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    assert len(fits) == len(state), "every student tensor has a place in madis-tiny"
    m.load_state_dict(fits, strict=False)
    return m


def test_family_is_registered_with_sizes():
    names = {n for n in list_models() if get_entry(n).family == "madis"}
    assert {"madis-tiny", "madis-small", "madis-base"} <= names
    sizes = [sum(p.numel() for p in build_model(n).parameters()) for n in ("madis-tiny", "madis-small", "madis-base")]
    assert sizes == sorted(sizes) and sizes[0] > 200_000


def test_warm_start_reproduces_the_student_exactly():
    """Zero-initialised token projection and confidence head: step 0 is the student."""
    m = warm_tiny().eval()
    student = build_model("student")
    student.load_state_dict(read_weights(shipped_weights("student"))[2])
    student.eval()
    left, right = pair(1, 96, 160)
    with torch.no_grad():
        a, b = student(left, right), m(left, right)
    torch.testing.assert_close(b["disparity"], a["disparity"])
    torch.testing.assert_close(b["confidence"], torch.full_like(b["confidence"], 0.5))


def test_any_size_and_outputs():
    m = warm_tiny().eval()
    left, right = pair(2, 70, 150)  # not multiples of 16: padded and cropped back
    with torch.no_grad():
        out = m(left, right)
    assert out["disparity"].shape == (2, 1, 70, 150) and out["conf_logit"].shape == (2, 1, 70, 150)
    assert float(out["confidence"].min()) > 0 and float(out["confidence"].max()) < 1
    assert "cost_volume" not in out
    with torch.no_grad():
        extra = m(left, right, extras=True)
    assert extra["cost_volume"].shape[:3] == (2, 4, 24) and len(extra["disparity_list"]) == 3
    assert extra["features"]["f8"].shape[1] == 48 and extra["tokens"].shape[-1] == 64


@pytest.mark.parametrize("level", ["tokens", "stem"])
def test_masks_hide_patches_and_reconstruction_has_patch_layout(level):
    m = warm_tiny(mask_level=level).eval()
    # one mask parameter, the chosen level's: DDP fails on parameters that never get a gradient
    assert hasattr(m, "mask_embed") == (level == "stem") and hasattr(m, "mask_token") == (level == "tokens")
    left, right = pair(2, 64, 128)
    n = (64 // 16) * (128 // 16)
    none = torch.zeros(2, n, dtype=torch.bool)
    with torch.no_grad():
        plain = m(left, right)
        unmasked = m(left, right, mask_left=none, mask_right=none, reconstruct=True)
        g = torch.Generator().manual_seed(0)
        masked = m(left, right, mask_left=random_masks(2, n, 0.4, g), mask_right=random_masks(2, n, 0.4, g),
                   reconstruct=True)
    torch.testing.assert_close(unmasked["disparity"], plain["disparity"])
    assert not torch.allclose(masked["recon_left"], unmasked["recon_left"])  # hidden from the transformer
    if level == "stem":  # hidden from the matching too
        assert not torch.allclose(masked["disparity"], plain["disparity"])
    else:  # the correlation still sees every pixel: with the zero token projection nothing else changes
        torch.testing.assert_close(masked["disparity"], plain["disparity"])
    assert masked["recon_left"].shape == (2, n, 16 * 16 * 3) == masked["recon_right"].shape
    with pytest.raises(ValueError, match="multiples of 16"):
        m(left[..., :60], right[..., :60], mask_left=none, mask_right=none)
    with pytest.raises(ValueError, match="both views"):
        m(left, right, mask_left=none)


def test_frozen_batchnorm_stays_on_running_statistics():
    m = build_model("madis-tiny").train()
    bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns) and m.features.training
    before = bns[0].running_mean.clone()
    out = m(*pair(2, 64, 128))
    out["disparity"].mean().backward()
    assert torch.equal(bns[0].running_mean, before)
    assert m.features.stem.conv.weight.grad is not None  # the convolutions still learn
    assert all(bn.training for bn in build_model("madis-base").train().modules() if isinstance(bn, torch.nn.BatchNorm2d))


def test_rope_scores_depend_on_offsets_only():
    torch.manual_seed(0)
    rope = RoPE1D(100.0)
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8)  # the same query at every position
    k = torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8)
    s = rope(q.contiguous()) @ rope(k.contiguous()).transpose(-1, -2)
    for off in range(-3, 4):
        diag = torch.diagonal(s[0, 0], offset=off)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), rtol=1e-4, atol=1e-4)


def test_cross_attention_reads_the_same_row_of_the_other_view():
    """With column attention switched off, a change to one right-view row reaches the
    left view only on that row: matching is epipolar."""
    torch.manual_seed(0)
    blk = EpipolarBlock(16, 2).eval()
    blk.col = _Zero()
    x = torch.randn(2, 5, 7, 16)  # B=1: left, right
    y = x.clone()
    y[1, 3] += 1.0
    with torch.no_grad():
        d = (blk(y) - blk(x))[0].abs().sum(dim=(1, 2))
    assert d[3] > 0 and float(d[[0, 1, 2, 4]].sum()) == 0.0


class _Zero(torch.nn.Module):
    def forward(self, x, y):
        return torch.zeros_like(x)


def test_madis_task_step_masks_reconstructs_and_keeps_the_teacher_frozen():
    from madis_core.training.config import with_defaults
    from madis_core.training.madis_task import MadisTask

    cfg = with_defaults({"task": "madis", "model": {"name": "madis-tiny"}, "train": {"crop": [64, 128]},
                         "ema": {"momentum": 0.5}})
    torch.manual_seed(0)
    task = MadisTask(cfg, torch.device("cpu"))
    assert task.ema_scope == "full"
    left, right = pair(2, 64, 128)
    batch = {"left": left, "right": right, "disparity": torch.full((2, 1, 64, 128), 6.0),
             "valid": torch.rand(2, 1, 64, 128) > 0.3}
    loss, logs = task.training_step(task.trainable_module(), batch, step=0)
    assert {"disp", "coarse", "rec_left", "rec_right", "pseudo", "epe"} <= set(logs)
    loss.backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert task.model.recon_head.weight.grad is not None and task.model.mask_token.grad is not None
    before = task.teacher.module.token_in.weight.clone()
    task.model.token_in.weight.data.add_(1.0)
    task.after_optimizer_step(0)
    torch.testing.assert_close(task.teacher.module.token_in.weight, before + 0.5)


def test_infer_upscales_small_disparity_pairs_and_rescales_the_answer():
    """Adaptive test-time upscaling: a 6 px pair runs again at 2x and comes back in input pixels;
    with no room to upscale (or inference_scale 1) infer() is the plain forward."""
    torch.manual_seed(0)
    base = torch.rand(1, 3, 96, 220)
    base = torch.nn.functional.avg_pool2d(base, 5, 1, 2)
    base = (base - base.mean()) * 3 + 0.5
    left, right = base[..., :192], base[..., 6:198]  # left(x) = right(x - 6): disparity 6 px
    m = warm_tiny().eval()
    plain = m(left, right)["disparity"]
    up = m.infer(left, right)
    assert up["disparity"].shape == plain.shape and not torch.allclose(up["disparity"], plain)
    inner = (slice(None), slice(None), slice(16, -16), slice(40, -16))
    assert abs(float(up["disparity"][inner].median()) - 6.0) < 1.0, float(up["disparity"][inner].median())
    for scale in (1.0, 1.05):
        m.inference_scale = scale
        torch.testing.assert_close(m.infer(left, right)["disparity"], plain)
