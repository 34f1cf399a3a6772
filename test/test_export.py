"""ONNX/TorchScript export of the student and the onnxruntime backend."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from madis_core.checkpoint import save_weights
from madis_core.estimator import StereoEstimator, list_backends
from madis_core.export import export_onnx, export_torchscript
from madis_core.models import ModelMeta, build_model, register_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained_like_student(tmp_path_factory):
    """A student with non-trivial BatchNorm statistics and weights, saved as safetensors."""
    torch.manual_seed(0)
    net = build_model("student")
    with torch.no_grad():
        for p in net.parameters():  # untrained heads start at zero; make every path matter
            p.add_(0.05 * torch.randn_like(p))
        net.train()
        for _ in range(2):
            net(torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96))
    net.eval()
    path = save_weights(net, tmp_path_factory.mktemp("w") / "student.safetensors")
    return net, path


def _pair(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    left = torch.rand(1, 3, h, w, generator=g)
    return left, torch.roll(left, -5, -1)


def test_onnx_export_matches_pytorch_at_other_sizes(trained_like_student, tmp_path):
    net, _ = trained_like_student
    res = export_onnx(net, tmp_path / "student.onnx", 64, 128, dynamic=True)
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-3
    proto = onnx.load(str(res.path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["model_name"] == "student" and meta["size_divisor"] == "16" and float(meta["max_disparity"]) == 192
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    for h, w in ((96, 160), (48, 240)):  # dynamic axes: other sizes than the export size
        left, right = _pair(h, w, h)
        disp, conf = sess.run(["disparity", "confidence"], {"left": left.numpy(), "right": right.numpy()})
        with torch.no_grad():
            ref = net(left, right)
        assert disp.shape == (1, 1, h, w)
        assert np.abs(disp - ref["disparity"].numpy()).max() <= 1e-3
        assert np.abs(conf - ref["confidence"].numpy()).max() <= 1e-4
        assert float(ref["disparity"].std()) > 0.1  # a non-trivial output was compared


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_round_trip(trained_like_student, tmp_path):
    net, _ = trained_like_student
    res = export_torchscript(net, tmp_path / "student.ts", 64, 96)
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-3
    loaded = torch.jit.load(str(res.path))
    left, right = _pair(80, 112, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(left, right)[0], net(left, right)["disparity"], atol=1e-3, rtol=0)


def test_export_rejects_bad_sizes(trained_like_student, tmp_path):
    net, _ = trained_like_student
    with pytest.raises(ValueError, match="size_divisor"):
        export_onnx(net, tmp_path / "x.onnx", 60, 128)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(net, tmp_path / "x.onnx", 64, 128, opset=13)


def test_onnxruntime_backend_matches_torch_backend(trained_like_student, tmp_path, monkeypatch):
    """Weights file -> cached ONNX export -> same disparity as the torch backend (odd image size, padding)."""
    monkeypatch.setenv("MADIS_CACHE", str(tmp_path / "cache"))
    _, weights = trained_like_student
    assert "onnxruntime" in list_backends()
    est_torch = StereoEstimator.from_pretrained(str(weights), device="cpu")
    est_onnx = StereoEstimator.from_pretrained(str(weights), device="cpu", runtime="onnxruntime", threads=1)
    assert est_onnx.name == "student" and est_onnx.device == "cpu" and est_onnx.meta.max_disparity == 192
    cached = list((tmp_path / "cache" / "onnx").glob("student-*.onnx"))
    assert len(cached) == 1
    rng = np.random.default_rng(1)
    left = rng.integers(0, 255, (70, 150, 3), dtype=np.uint8)
    right = np.roll(left, -4, axis=1)
    a, b = est_torch.predict(left, right), est_onnx.predict(left, right)
    assert b.disparity.shape == (70, 150) and b.disparity.dtype == np.float32
    assert np.nanmax(np.abs(a.disparity - b.disparity)) <= 1e-3
    assert np.nanmax(np.abs(a.confidence - b.confidence)) <= 1e-4
    # the .onnx file loads directly, and a second estimator reuses the cache
    direct = StereoEstimator.from_pretrained(str(cached[0]), device="cpu", runtime="onnxruntime")
    np.testing.assert_allclose(direct.predict(left, right).disparity, b.disparity, atol=1e-5)
    StereoEstimator.from_pretrained(str(weights), device="cpu", runtime="onnxruntime")
    assert list((tmp_path / "cache" / "onnx").glob("student-*.onnx")) == cached


def test_onnxruntime_backend_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        StereoEstimator.from_pretrained(str(tmp_path / "missing.onnx"), runtime="onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        from madis_core.backends.onnx_backend import select_providers

        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            select_providers("cuda", "fp32")
        assert select_providers("auto", "fp32") == ["CPUExecutionProvider"]


def test_madis_export_command(tmp_path, capsys):
    from madis_core.cli import main

    out = tmp_path / "lite.ts"
    assert main(["export", "--model", "student-lite", "--format", "torchscript", "--random-init",
                 "--height", "64", "--width", "96", "--output", str(out)]) == 0
    assert out.is_file() and "max |diff| vs PyTorch" in capsys.readouterr().out
    assert main(["export", "--model", "no-such-model", "--format", "onnx", "--output", str(tmp_path / "x.onnx")]) == 1


class ShapeBakingStereo(torch.nn.Module):
    """A toy model whose trace bakes the input width in (like MaDis' RoPE tables), registered
    like every exportable model (its metadata travels in the ONNX file)."""

    def forward(self, left, right):
        w = int(left.shape[-1])  # a Python int: the ONNX trace keeps this size as a constant
        ramp = torch.arange(w, dtype=left.dtype) / w
        disp = (left - right).abs().mean(1, keepdim=True) * 10 + ramp
        return {"disparity": disp, "confidence": torch.sigmoid(disp)}


register_model("test-shape-baking", family="test", meta=ModelMeta(family="test", size_divisor=16, max_disparity=64.0,
                                                                   has_confidence=True))(ShapeBakingStereo)


def test_fixed_size_exports_for_models_without_dynamic_shapes(tmp_path):
    """A model that cannot take other sizes refuses a dynamic export; a fixed-size export
    runs in the onnxruntime backend at that size and says so clearly at any other."""
    net = build_model("test-shape-baking").eval()
    with pytest.raises(RuntimeError, match="does not export with dynamic shapes"):
        export_onnx(net, tmp_path / "dyn.onnx", 64, 128, dynamic=True)
    assert not (tmp_path / "dyn.onnx").exists()
    res = export_onnx(net, tmp_path / "fixed.onnx", 64, 128)
    est = StereoEstimator.from_pretrained(str(res.path), device="cpu", runtime="onnxruntime")
    rng = np.random.default_rng(2)
    left = rng.integers(0, 255, (60, 120, 3), dtype=np.uint8)  # padded to 64x128 by the backend
    right = np.roll(left, -3, axis=1)
    out = est.predict(left, right)
    to_t = lambda a: torch.nn.functional.pad(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255,
                                             (0, 8, 0, 4), mode="replicate")
    with torch.no_grad():
        ref = net(to_t(left), to_t(right))["disparity"][0, 0, :60, :120].numpy()
    assert out.disparity.shape == (60, 120) and np.abs(out.disparity - ref).max() <= 1e-4
    with pytest.raises(ValueError, match="exported for 64x128"):
        est.predict(left[:, :100], right[:, :100])
