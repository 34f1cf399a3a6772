"""Metrics on hand-computed cases."""
import math

import numpy as np
import pytest

from madis_core.metrics import aggregate_metrics, compute_metrics


def test_hand_computed_case():
    gt = np.array([[10.0, 10.0, 10.0, 100.0, np.nan]])
    pred = np.array([[10.4, 11.5, np.nan, 104.0, 3.0]])
    m = compute_metrics(pred, gt)
    # valid gt: 4 pixels; errors 0.4, 1.5, hole, 4.0
    assert m["n"] == 4
    assert m["density"] == pytest.approx(75.0)
    assert m["epe"] == pytest.approx((0.4 + 1.5 + 4.0) / 3)
    assert m["bad_0.5"] == pytest.approx(75.0)  # 1.5, hole, 4.0
    assert m["bad_1"] == pytest.approx(75.0)
    assert m["bad_2"] == pytest.approx(50.0)  # hole, 4.0
    assert m["bad_3"] == pytest.approx(50.0)
    assert m["bad_4"] == pytest.approx(25.0)  # only the hole (4.0 is not > 4)
    # D1: > 3 px AND > 5 %: 4.0 vs 100 is 4 % -> not an outlier; the hole is
    assert m["d1"] == pytest.approx(25.0)


def test_valid_mask_and_nonpositive_predictions():
    gt = np.full((2, 2), 5.0)
    pred = np.array([[5.0, 0.0], [-1.0, 5.0]])
    valid = np.array([[True, True], [False, True]])
    m = compute_metrics(pred, gt, valid)
    assert m["n"] == 3 and m["density"] == pytest.approx(200 / 3)
    assert m["epe"] == 0.0 and m["bad_1"] == pytest.approx(100 / 3)


def test_no_valid_pixels_gives_nan():
    m = compute_metrics(np.ones((2, 2)), np.full((2, 2), np.nan))
    assert m["n"] == 0 and math.isnan(m["epe"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.ones((2, 2)), np.ones((2, 3)))


def test_aggregate_is_pixel_weighted():
    a = compute_metrics(np.array([[1.0, 1.0, 1.0]]), np.array([[1.0, 1.0, 5.0]]))  # 1 bad of 3
    b = compute_metrics(np.array([[2.0]]), np.array([[2.0]]))  # 0 bad of 1
    agg = aggregate_metrics([a, b])
    assert agg["n"] == 4 and agg["bad_2"] == pytest.approx(25.0)
    assert agg["epe"] == pytest.approx(4.0 / 4)
