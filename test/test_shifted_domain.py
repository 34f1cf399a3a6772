"""The shifted domain of the adaptation benchmark (issue 17): pairs are a pure function of
(seed, index), the rig's cameras are really applied, and what adaptation may see of them
carries no ground truth. Small sizes, real generator."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from madis_core.adaptation.shifted_domain import (IDEAL_CAMERA, SHIFTED_CAMERAS, shifted_generator,
                                                  shifted_samples, through_cameras, unlabeled)

SIZE = dict(height=64, width=128, max_disparity=16.0)


def test_pairs_are_a_pure_function_of_seed_and_index():
    a, b = shifted_samples(2, seed=5, **SIZE), shifted_samples(3, seed=5, **SIZE)
    for key in ("left", "right", "disparity"):
        np.testing.assert_array_equal(a[1][key], b[1][key])  # a prefix of a longer set, bit for bit
    other = shifted_samples(2, seed=6, **SIZE)
    assert not np.array_equal(a[0]["left"], other[0]["left"])


def test_the_rig_changes_the_views_but_not_the_scene():
    rig = shifted_samples(1, seed=5, **SIZE)[0]
    ideal = shifted_samples(1, seed=5, cameras=(IDEAL_CAMERA, IDEAL_CAMERA), **SIZE)[0]
    np.testing.assert_array_equal(rig["disparity"], ideal["disparity"])
    diff = np.abs(rig["right"].astype(float) - ideal["right"].astype(float)).mean()
    assert diff > 5, f"the right camera (gains, gamma, vignetting, noise) changed the view by only {diff:.1f} levels"
    # vignetting: the rig's corners are darker than its centre, relative to the ideal camera's view
    ratio = (rig["left"].astype(float) + 1) / (ideal["left"].astype(float) + 1)
    assert ratio[:8, :8].mean() < ratio[28:36, 56:72].mean()


def test_through_cameras_is_seeded_and_in_place():
    gen = shifted_generator(7, 64, 128, 16.0)
    batch = gen.generate(2, seed=0)
    clean = batch["left"].clone()
    out = through_cameras({k: v.clone() for k, v in batch.items()}, torch.Generator().manual_seed(1))
    again = through_cameras({k: v.clone() for k, v in batch.items()}, torch.Generator().manual_seed(1))
    assert torch.equal(out["left"], again["left"]) and torch.equal(out["right"], again["right"])
    assert not torch.equal(out["left"], clean)
    assert out["left"].shape == clean.shape
    assert through_cameras(batch, torch.Generator().manual_seed(1)) is batch


def test_what_adaptation_sees_is_images_only():
    pairs = unlabeled(shifted_samples(2, seed=5, **SIZE))
    fields = {f.name for f in dataclasses.fields(pairs[0])}
    assert fields == {"left", "right", "name"}
    assert pairs[0].left.shape == (64, 128, 3)
