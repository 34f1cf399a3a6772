"""The procedural synthetic stereo generator: exact ground truth (warping, occlusion,
right-view disparity), determinism, ranges, and the fixed synthetic test set."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from madis_core.data import SyntheticStereoGenerator, build_dataset
from madis_core.data.datasets import SYNTHETIC_TEST_SHAPE, SYNTHETIC_TEST_SIZE, _synthetic_samples

torch.set_num_threads(1)  # 2 shared cores: no intra-op threads fighting the render worker threads
H, W, DMAX = 96, 192, 64


def _warp(right: torch.Tensor, disp: torch.Tensor, mode="bilinear") -> torch.Tensor:
    """Sample ``right`` at (x - disp, y): the left view reconstructed from the right."""
    B, _, h, w = disp.shape
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(B, h, w) - disp[:, 0]
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1).expand(B, h, w)
    grid = torch.stack([(xs + 0.5) / w * 2 - 1, (ys + 0.5) / h * 2 - 1], dim=-1)
    return F.grid_sample(right, grid, mode=mode, padding_mode="border", align_corners=False)


@pytest.fixture(scope="module")
def clean_batch():
    """No photometric view differences and no specular highlights: the two views of a
    surface point must have identical colour."""
    gen = SyntheticStereoGenerator(H, W, DMAX, seed=11, photometric=False, specular_prob=0.0)
    return gen.generate(6)


def test_output_contract(clean_batch):
    b = clean_batch
    for k in ("left", "right"):
        assert b[k].shape == (6, 3, H, W) and b[k].dtype == torch.float32
        assert 0 <= float(b[k].min()) and float(b[k].max()) <= 1
    for k in ("disparity", "disparity_right", "valid", "occlusion"):
        assert b[k].shape == (6, 1, H, W)
    assert b["valid"].dtype == torch.bool and b["occlusion"].dtype == torch.bool and b["valid"].all()
    d = b["disparity"]
    assert float(d.min()) >= 0 and float(d.max()) <= DMAX
    assert torch.isfinite(d).all() and torch.isfinite(b["disparity_right"]).all()


def test_warping_right_with_left_ground_truth_reproduces_left(clean_batch):
    b = clean_batch
    warped = _warp(b["right"], b["disparity"])
    err = (warped - b["left"]).abs().mean(1, keepdim=True)
    noc = ~b["occlusion"]
    assert float(err[noc].mean()) < 0.01
    # the check has teeth: occluded pixels, or a 2-px disparity error, do not match
    assert float(err[b["occlusion"]].mean()) > 0.05
    err_shift = (_warp(b["right"], b["disparity"] + 2.0) - b["left"]).abs().mean(1, keepdim=True)
    assert float(err_shift[noc].mean()) > 3 * float(err[noc].mean())


def test_occlusion_mask_agrees_with_left_right_consistency(clean_batch):
    b = clean_batch
    d, dr = b["disparity"], b["disparity_right"]
    xr = torch.arange(W).view(1, 1, 1, W) - d
    d_back = _warp(dr, d, mode="nearest")
    consistent = ((d_back - d).abs() <= 1.0) & (xr >= 0)
    agree = float((consistent == ~b["occlusion"]).float().mean())
    occ_frac = float(b["occlusion"].float().mean())
    assert agree > 0.98, agree
    assert 0.02 < occ_frac < 0.5  # there are occlusions, and not everything is occluded
    # right-view ground truth: visible left pixels see their own disparity at x - d
    noc = ~b["occlusion"]
    assert float((d_back - d).abs()[noc].median()) < 0.05


def test_occluded_regions_are_textured_and_scene_is_rich(clean_batch):
    b = clean_batch
    occ = b["occlusion"][:, 0]
    left = b["left"].mean(1)
    assert float(left[occ].mean()) > 0.03 and float(left[occ].std()) > 0.02  # never black
    # many depth layers: count distinct disparity levels of fronto-parallel parts
    edges = (b["disparity"][..., 1:] - b["disparity"][..., :-1]).abs() > 1.0  # sharp depth edges
    assert float(edges.float().mean()) > 0.003
    # sharp edges, no flying pixels: every pixel's disparity is close to a horizontal neighbour's
    d = b["disparity"][..., 1:-1]
    near = torch.minimum((d - b["disparity"][..., :-2]).abs(), (d - b["disparity"][..., 2:]).abs())
    assert float((near > 1.0).float().mean()) < 0.002


def test_same_seed_same_samples_and_pure_batches():
    a = SyntheticStereoGenerator(64, 128, 40, seed=3).generate(2)
    g = SyntheticStereoGenerator(64, 128, 40, seed=3)
    b = g.generate(2)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = g.generate(2)  # the next batch of the sequence differs
    assert not torch.equal(b["left"], c["left"])
    other = SyntheticStereoGenerator(64, 128, 40, seed=4).generate(2)
    assert not torch.equal(a["disparity"], other["disparity"])
    # generate(seed=k) is a pure function of (generator seed, k), whatever came before
    fresh = SyntheticStereoGenerator(64, 128, 40, seed=3).generate(2, seed=1)
    assert torch.equal(fresh["left"], c["left"]) and torch.equal(fresh["disparity"], c["disparity"])
    # resume from state
    state = g.state_dict()
    nxt = g.generate(1)
    g2 = SyntheticStereoGenerator(64, 128, 40, seed=99)
    g2.load_state_dict(state)
    assert torch.equal(g2.generate(1)["right"], nxt["right"])


def test_threaded_rendering_matches_sequential():
    kw = dict(seed=12, rectification_error_prob=0.5)  # camera effects included
    seq = SyntheticStereoGenerator(64, 128, 40, render_threads=1, **kw).generate(3)
    par = SyntheticStereoGenerator(64, 128, 40, render_threads=2, **kw).generate(3)
    for k in seq:
        assert torch.equal(seq[k], par[k]), k


def test_wide_disparity_range_per_sample():
    gen = SyntheticStereoGenerator(64, 256, 96, seed=5, photometric=False)
    b = gen.generate(8)
    maxima = b["disparity"].amax(dim=(1, 2, 3))
    assert float(maxima.max()) > 0.6 * 96 and float(maxima.max()) <= 96
    assert float(maxima.min()) < float(maxima.max()) - 10  # each sample draws its own range
    assert float(b["disparity"].min()) < 0.15 * 96
    # slanted ground planes and side walls stay inside [0, max_disparity] in both views
    walls = SyntheticStereoGenerator(48, 128, 60, seed=6, photometric=False, ground_prob=1.0, side_wall_prob=1.0,
                                     num_objects=(0, 2)).generate(6)
    for k in ("disparity", "disparity_right"):
        assert 0 < float(walls[k].min()) and float(walls[k].max()) <= 60


def test_photometric_and_rectification_options_change_only_appearance():
    base = SyntheticStereoGenerator(64, 128, 40, seed=8, photometric=False).generate(2)
    photo = SyntheticStereoGenerator(64, 128, 40, seed=8, photometric=True).generate(2)
    assert torch.equal(base["disparity"], photo["disparity"])
    assert not torch.allclose(base["left"], photo["left"], atol=1e-3)
    rect = SyntheticStereoGenerator(64, 128, 40, seed=8, photometric=False, rectification_error_prob=1.0,
                                    max_vertical_shift=2.0).generate(2)
    assert torch.equal(rect["left"], base["left"]) and torch.equal(rect["disparity"], base["disparity"])
    assert float((rect["right"] - base["right"]).abs().mean()) > 1e-3


def test_bad_options_are_clear_errors():
    with pytest.raises(TypeError, match="unknown options"):
        SyntheticStereoGenerator(64, 128, 40, colour=True)
    with pytest.raises(ValueError, match="max_disparity"):
        SyntheticStereoGenerator(64, 128, 200)
    with pytest.raises(ValueError, match="num_objects"):
        SyntheticStereoGenerator(64, 128, 40, num_objects=(5, 2))


def test_synthetic_test_set_is_fixed_and_prefix_consistent():
    small = build_dataset("synthetic-test:2")
    assert len(small) == 2
    s = small[0]
    assert s["left"].shape == (*SYNTHETIC_TEST_SHAPE, 3) and s["left"].dtype == np.uint8
    assert s["disparity"].dtype == np.float32 and s["valid"].all() and s["noc"].dtype == bool
    assert 0 < np.nanmax(s["disparity"]) <= 192
    three = build_dataset("synthetic-test:3")
    np.testing.assert_array_equal(three[1]["right"], small[1]["right"])
    np.testing.assert_array_equal(three[1]["disparity"], small[1]["disparity"])
    _synthetic_samples.cache_clear()  # regenerated from scratch: identical
    again = build_dataset("synthetic-test:2")
    np.testing.assert_array_equal(again[0]["left"], s["left"])
    np.testing.assert_array_equal(again[1]["noc"], small[1]["noc"])
    assert SYNTHETIC_TEST_SIZE == 16


def test_render_threads_leave_the_callers_torch_threads_alone():
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        SyntheticStereoGenerator(32, 64, 16, seed=1, render_threads=2, num_objects=(1, 2)).generate(2)
        assert torch.get_num_threads() == 2
        seen = []
        t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert seen == [2]  # threads started later still get the process setting
    finally:
        torch.set_num_threads(before)
