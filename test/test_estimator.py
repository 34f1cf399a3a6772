"""StereoEstimator: input checks, the SGBM backend, name resolution errors, `madis predict`."""
import json
import subprocess
import sys

import numpy as np
import pytest

from madis_core.checkpoint import CheckpointError
from madis_core.estimator import StereoEstimator
from madis_core.io import read_pfm, read_ply, write_image
from madis_core.metrics import compute_metrics


def textured_pair(h=96, w=160, disparity=12, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.random((h, w + disparity)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), 1.5)
    tex = ((tex - tex.min()) / (tex.max() - tex.min()) * 255).astype(np.uint8)
    left = tex[:, :w].copy()  # left(x) == right(x - disparity)
    right = tex[:, disparity:disparity + w].copy()
    return left, right


@pytest.fixture(scope="module")
def sgbm():
    return StereoEstimator.from_pretrained("sgbm", num_disparities=32)


def test_sgbm_recovers_constant_shift(sgbm):
    left, right = textured_pair()
    res = sgbm.predict(left, right)
    assert res.disparity.dtype == np.float32 and res.disparity.shape == left.shape
    m = compute_metrics(res.disparity[:, 40:-8], np.full((96, 112), 12.0))
    assert m["bad_1"] < 5.0 and m["density"] > 95.0


def test_rgb_and_uint16_inputs(sgbm):
    left, right = textured_pair()
    rgb = sgbm.predict(np.dstack([left] * 3), np.dstack([right] * 3)).disparity
    u16 = sgbm.predict(left.astype(np.uint16) * 257, right.astype(np.uint16) * 257).disparity
    grey = sgbm.predict(left, right).disparity
    np.testing.assert_array_equal(np.nan_to_num(rgb), np.nan_to_num(grey))
    np.testing.assert_array_equal(np.nan_to_num(u16), np.nan_to_num(grey))


@pytest.mark.parametrize("left,right,match", [
    (np.zeros((10, 10), np.uint8), np.zeros((10, 12), np.uint8), "sizes differ"),
    (np.zeros((0, 10), np.uint8), np.zeros((0, 10), np.uint8), "empty"),
    (np.zeros((10, 10), np.float32), np.zeros((10, 10), np.float32), "uint8 or uint16"),
    (np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 4), np.uint8), "HxW or HxWx3"),
    (np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.uint8), "formats differ"),
])
def test_bad_inputs_raise_clear_errors(sgbm, left, right, match):
    with pytest.raises(ValueError, match=match):
        sgbm.predict(left, right)


def test_non_array_input_raises(sgbm):
    with pytest.raises(TypeError, match="numpy array"):
        sgbm.predict([[1]], np.zeros((1, 1), np.uint8))


def test_unknown_name_and_bad_weights(tmp_path):
    with pytest.raises(ValueError, match="neither a registered model"):
        StereoEstimator.from_pretrained("no-such-model")
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        StereoEstimator.from_pretrained(str(bogus))
    with pytest.raises(FileNotFoundError):
        StereoEstimator.from_pretrained(str(tmp_path / "missing.safetensors"))


def test_sgbm_parameter_validation():
    with pytest.raises(ValueError, match="multiple of 16"):
        StereoEstimator.from_pretrained("sgbm", num_disparities=30)


def test_cuda_request_without_cuda_is_clear():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    from madis_core.backends.base import resolve_device

    assert resolve_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_predict_command_writes_all_files(tmp_path):
    left, right = textured_pair()
    write_image(tmp_path / "l.png", left)
    write_image(tmp_path / "r.png", right)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "madis_core.cli", "predict", str(tmp_path / "l.png"), str(tmp_path / "r.png"),
                           "--model", "sgbm", "--fx", "100", "--baseline", "0.5", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "sgbm"
    disp = read_pfm(out / "disparity.pfm")
    depth = read_pfm(out / "depth.pfm")
    ok = np.isfinite(depth) & np.isfinite(disp) & (disp > 0)
    np.testing.assert_allclose(depth[ok], 100 * 0.5 / disp[ok], rtol=1e-5)
    pts, cols = read_ply(out / "cloud.ply")
    assert len(pts) == summary["points"] == ok.sum() and cols.shape == pts.shape
