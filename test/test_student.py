"""The fast student: cost volume, soft-argmin, upsampling, registry contract, estimator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from madis_core.models import build_model, count_parameters, get_entry, list_models
from madis_core.models.cost_volume import (convex_upsample, groupwise_correlation, groupwise_correlation_naive,
                                           peak_confidence, soft_argmin)

torch.set_num_threads(1)


@pytest.mark.parametrize("groups,bins,normalize", [(1, 5, True), (4, 6, True), (2, 7, False), (4, 12, True)])
def test_cost_volume_matches_naive_loop(groups, bins, normalize):
    g = torch.Generator().manual_seed(groups * 100 + bins)
    left = torch.randn(2, 8, 5, 9, generator=g)
    right = torch.randn(2, 8, 5, 9, generator=g)
    fast = groupwise_correlation(left, right, groups, bins, normalize=normalize)
    ref = groupwise_correlation_naive(left, right, groups, bins, normalize=normalize)
    assert fast.shape == (2, groups, bins, 5, 9)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    # columns with x < d compare with nothing: exactly zero (also when bins > width)
    for d in range(bins):
        assert torch.all(fast[:, :, d, :, : min(d, 9)] == 0)


def test_cost_volume_finds_a_known_shift():
    """Right = left shifted by 3 px: the cosine volume peaks at bin 3 (value 1) where defined."""
    g = torch.Generator().manual_seed(0)
    left = torch.randn(1, 16, 4, 20, generator=g)
    right = torch.zeros_like(left)
    right[..., :-3] = left[..., 3:]  # left pixel x is right pixel x - 3
    vol = groupwise_correlation(left, right, 4, 8)
    assert torch.all(vol[..., 3:].argmax(2) == 3)
    torch.testing.assert_close(vol[:, :, 3, :, 3:], torch.ones(1, 4, 4, 17), atol=1e-5, rtol=0)


def test_cost_volume_rejects_bad_input():
    with pytest.raises(ValueError, match="groups"):
        groupwise_correlation(torch.zeros(1, 6, 2, 4), torch.zeros(1, 6, 2, 4), 4, 3)
    with pytest.raises(ValueError, match="differ"):
        groupwise_correlation(torch.zeros(1, 8, 2, 4), torch.zeros(1, 8, 2, 5), 4, 3)


def test_soft_argmin_of_one_hot_returns_the_bin():
    bins = 24
    for k in (0, 5, 23):
        logits = torch.full((1, bins, 3, 4), -1e4)
        logits[:, k] = 0.0
        disp, prob = soft_argmin(logits, bin_size=8.0)
        torch.testing.assert_close(disp, torch.full((1, 1, 3, 4), 8.0 * k))
        torch.testing.assert_close(peak_confidence(prob), torch.ones(1, 1, 3, 4))
    flat = soft_argmin(torch.zeros(1, bins, 2, 2))[1]
    torch.testing.assert_close(peak_confidence(flat), torch.full((1, 1, 2, 2), 3.0 / bins))


def test_convex_upsample_matches_softmax_reference_and_keeps_constants():
    g = torch.Generator().manual_seed(1)
    values = torch.rand(2, 1, 5, 6, generator=g)
    mask = torch.randn(2, 9 * 16, 5, 6, generator=g) * 3
    w = torch.softmax(mask.view(2, 1, 9, 16, 5, 6), 2)
    patches = F.unfold(values, 3, padding=1).view(2, 1, 9, 1, 5, 6)
    ref = F.pixel_shuffle((w * patches).sum(2).view(2, 16, 5, 6), 4)
    torch.testing.assert_close(convex_upsample(values, mask, 4), ref, atol=1e-5, rtol=1e-5)
    const = torch.full((1, 1, 4, 4), 7.0)
    inner = convex_upsample(const, torch.randn(1, 36, 4, 4, generator=g), 2)[..., 2:-2, 2:-2]
    torch.testing.assert_close(inner, torch.full_like(inner, 7.0))


def test_students_are_registered():
    names = list_models()
    for name in ("student", "student-lite"):
        assert name in names
        assert get_entry(name).family == "student"
    lite, full = build_model("student-lite"), build_model("student")
    assert count_parameters(lite) < count_parameters(full) < 500_000
    assert full.max_disparity == 192 and full.size_divisor == 16


@pytest.mark.parametrize("name", ["student", "student-lite"])
def test_forward_contract_train_and_eval(name):
    torch.manual_seed(0)
    net = build_model(name)
    left, right = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    out = net.train()(left, right)
    assert out["disparity"].shape == (2, 1, 64, 96)
    assert len(out["disparity_list"]) == 3 and out["disparity_list"][-1] is out["disparity"]
    assert all(d.shape == (2, 1, 64, 96) for d in out["disparity_list"])
    assert out["logits"].shape == (2, 24, 8, 12) and len(out["logits_list"]) == 2
    assert out["cost_volume"].shape[0] == 2 and out["cost_volume"].shape[2:] == (24, 8, 12)
    assert set(out["features"]) == set(net.feature_strides) == set(out["features_right"])
    for k, stride in net.feature_strides.items():
        assert out["features"][k].shape[-2:] == (64 // stride, 96 // stride)
    # every parameter is used in a training forward (DDP without find_unused_parameters)
    loss = sum(d.mean() for d in out["disparity_list"]) + out["confidence"].mean()
    loss.backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert not unused, unused
    with torch.no_grad():
        ev = net.eval()(left, right)
    assert set(ev) == {"disparity", "confidence"}
    assert torch.isfinite(ev["disparity"]).all() and (ev["disparity"] >= 0).all()
    assert ((ev["confidence"] >= 0) & (ev["confidence"] <= 1)).all()


def test_eval_fusion_and_channels_last_do_not_change_the_output():
    """Eval folds BatchNorm into the convs and runs NHWC: same numbers as the plain path."""
    torch.manual_seed(0)
    net = build_model("student")
    net.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            net(torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96))
    net.eval()
    plain = build_model("student", channels_last=False)
    plain.load_state_dict(net.state_dict())
    plain.eval()
    for m in plain.modules():  # unfused reference: conv then BatchNorm
        if type(m).__name__ == "ConvBN":
            m.forward = (lambda mod: (lambda x: (F.relu(mod.bn(mod.conv(x))) if mod.relu else mod.bn(mod.conv(x)))))(m)
    left, right = torch.rand(1, 3, 64, 128), torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        a, b = net(left, right), plain(left, right)
    torch.testing.assert_close(a["disparity"], b["disparity"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(a["confidence"], b["confidence"], atol=1e-4, rtol=1e-4)


def test_stem_folds_the_input_standardisation_exactly():
    """The patch stem (no padding) equals a conv on explicitly standardised views, in
    training (BatchNorm on batch statistics) and in eval (folded running statistics)."""
    from madis_core.models.student import NormalizedStem

    torch.manual_seed(0)
    stem = NormalizedStem(8, 4, 4, 0)
    left = torch.rand(2, 3, 32, 48) * 0.5 + 0.2
    right = torch.rand(2, 3, 32, 48)

    def standardise(x):
        sub = x[:, :, ::8, ::8]
        mean = sub.mean((2, 3), keepdim=True)
        var = ((sub * sub).mean((2, 3), keepdim=True) - mean ** 2).mean(1, keepdim=True)
        return (x - mean) * torch.rsqrt(var + 1e-4)

    explicit = stem.conv(torch.cat([standardise(left), standardise(right)]))
    torch.testing.assert_close(stem.train()(left, right), F.relu(stem.bn(explicit)), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        stem.bn.weight.uniform_(0.5, 2)
        stem.bn.bias.uniform_(-1, 1)
        stem.eval()
        torch.testing.assert_close(stem(left, right), F.relu(stem.bn(explicit)), atol=1e-4, rtol=1e-4)
        # a brightness/contrast change of one view barely changes its stem output (only via the eps)
        torch.testing.assert_close(stem(left * 1.7 + 0.1, right)[:2], stem(left, right)[:2], atol=2e-2, rtol=2e-2)


def test_folded_weights_follow_parameter_updates():
    """The eval-mode BatchNorm folding is cached; loading new weights must invalidate it."""
    torch.manual_seed(0)
    a, b = build_model("student-lite").eval(), build_model("student-lite").eval()
    left, right = torch.rand(1, 3, 32, 64), torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        a(left, right)  # fills the caches
        for p in b.parameters():
            p.add_(0.1 * torch.randn_like(p))
        a.load_state_dict(b.state_dict())
        torch.testing.assert_close(a(left, right)["disparity"], b(left, right)["disparity"])


def test_student_rejects_bad_input():
    net = build_model("student-lite").eval()
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        net(torch.rand(1, 3, 32, 64), torch.rand(1, 3, 32, 48))
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model("student", max_disparity=100)


def test_student_through_the_estimator_on_an_odd_size():
    from madis_core.estimator import StereoEstimator

    est = StereoEstimator.from_pretrained("student-lite", device="cpu", random_init=True)
    rng = np.random.default_rng(0)
    left = rng.integers(0, 255, (75, 130, 3), dtype=np.uint8)
    res = est.predict(left, np.roll(left, -4, axis=1))
    assert res.disparity.shape == (75, 130) and res.disparity.dtype == np.float32
    assert res.confidence is not None and res.confidence.shape == (75, 130)
    assert est.meta.max_disparity == 192
