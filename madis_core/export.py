"""``madis export``: a model as ONNX (opset >= 17) or TorchScript, verified after export.

    madis export --model student --format onnx --height 480 --width 640
    madis export --model runs/distill/model.safetensors --format onnx --dynamic --output student.onnx
    madis export --model student --format torchscript --random-init     # untrained, for pipeline tests

The exported graph takes ``left`` and ``right`` (``B x 3 x H x W`` float32 RGB in
[0, 1], H and W multiples of the model's ``size_divisor``) and returns ``disparity``
(and ``confidence`` when the model has one), ``B x 1 x H x W``. With ``--dynamic``
batch, height and width are free (any multiple of ``size_divisor``); otherwise they
are fixed to the export size, which TensorRT likes best. The ONNX file carries the
registry name, config, ``size_divisor`` and ``max_disparity`` as metadata, which the
onnxruntime backend reads.

After export the file is run once (onnxruntime for ONNX, ``torch.jit.load`` for
TorchScript) on a random pair and compared with PyTorch; the export fails if the
largest disparity difference exceeds ``--atol`` (1e-3 px by default).

For Jetson/TensorRT: ``trtexec --onnx=student_480x640.onnx --fp16
--saveEngine=student_480x640.plan`` (static shapes), or the onnxruntime backend with
the TensorRT execution provider.

The legacy TorchScript-based ONNX exporter is used (``dynamo=False``): the
torch.export-based one needs the ``onnxscript`` package, which this project does not
depend on, and the student's graph has no control flow that would need it.
"""
from __future__ import annotations

import argparse
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from madis_core.checkpoint import load_registry_model
from madis_core.models.registry import meta_of

log = logging.getLogger(__name__)

MIN_OPSET = 17


class ExportWrapper(nn.Module):
    """Tensor-in, tensors-out view of a registry model: ``(disparity, confidence)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.has_confidence = True

    def forward(self, left: torch.Tensor, right: torch.Tensor):
        out = self.model(left, right)
        if self.has_confidence and out.get("confidence") is not None:
            return out["disparity"], out["confidence"]
        return (out["disparity"],)


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: Tuple[int, int, int, int]
    dynamic: bool
    max_abs_diff: Optional[float]
    outputs: Tuple[str, ...]


def _prepare(model: nn.Module, height: int, width: int, batch: int) -> Tuple[ExportWrapper, Tuple[torch.Tensor, ...]]:
    div = meta_of(model).size_divisor
    if height <= 0 or width <= 0 or height % div or width % div:
        raise ValueError(f"export size {height}x{width} must be positive multiples of the model's size_divisor ({div})")
    model = model.cpu().eval()
    wrapper = ExportWrapper(model).eval()
    g = torch.Generator().manual_seed(0)
    left = torch.rand(batch, 3, height, width, generator=g)
    # the right view is the left one shifted by a few pixels, so the check sees a real match
    right = torch.roll(left, shifts=-min(8, width // 4), dims=-1)
    with torch.no_grad():
        n_out = len(wrapper(left, right))
    wrapper.has_confidence = n_out == 2
    return wrapper, (left, right)


def _metadata(model: nn.Module) -> Dict[str, str]:
    meta = meta_of(model)
    return {
        "model_name": model.model_name,
        "model_config": json.dumps(model.model_config, sort_keys=True, default=str),
        "size_divisor": str(meta.size_divisor),
        "max_disparity": str(float(meta.max_disparity)),
    }


def export_onnx(model: nn.Module, path: str | Path, height: int = 480, width: int = 640, dynamic: bool = False,
                opset: int = MIN_OPSET, batch: int = 1, check: bool = True, atol: float = 1e-3) -> ExportResult:
    """Write ``model`` as ONNX and (``check``) compare onnxruntime with PyTorch."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old; the exported graph needs opset >= {MIN_OPSET}")
    wrapper, inputs = _prepare(model, height, width, batch)
    outputs = ("disparity", "confidence") if wrapper.has_confidence else ("disparity",)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", 2: "height", 3: "width"}
    dynamic_axes = {n: axes for n in ("left", "right") + outputs} if dynamic else None
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(wrapper, inputs, str(tmp), dynamo=False, opset_version=opset,
                          input_names=["left", "right"], output_names=list(outputs),
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    proto = onnx.load(str(tmp))
    for k, v in _metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    diff = None
    if check:
        diff = compare_onnx(path, wrapper, inputs)
        if not diff <= atol:
            raise RuntimeError(f"onnxruntime disagrees with PyTorch on {path}: max |disparity difference| "
                               f"{diff:.3g} px > {atol:g}")
        if dynamic:  # a dynamic export must also hold at a size it was not traced at
            div = meta_of(model).size_divisor
            other = _prepare(model, height + div * max(1, 16 // div), width + 2 * div * max(1, 16 // div), batch)[1]
            try:
                diff2 = compare_onnx(path, wrapper, other)
            except Exception as exc:  # onnxruntime raises its own exception types
                diff2, why = float("inf"), f"{type(exc).__name__}: {str(exc)[:200]}"
            else:
                why = f"max |disparity difference| {diff2:.3g} px"
            if not diff2 <= atol:
                path.unlink(missing_ok=True)
                raise RuntimeError(f"{model.model_name} does not export with dynamic shapes "
                                   f"(at {tuple(other[0].shape)}: {why}); export a fixed size instead "
                                   f"(--height/--width without --dynamic)")
            diff = max(diff, diff2)
    return ExportResult(path, "onnx", tuple(inputs[0].shape), dynamic, diff, outputs)


def compare_onnx(path: str | Path, wrapper: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> float:
    """Largest absolute disparity difference between onnxruntime (CPU) and PyTorch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # failures are reported by the caller, not printed by onnxruntime
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    got = sess.run(["disparity"], {"left": inputs[0].numpy(), "right": inputs[1].numpy()})[0]
    with torch.no_grad():
        ref = wrapper(*inputs)[0].numpy()
    if got.shape != ref.shape:
        raise RuntimeError(f"onnxruntime output shape {got.shape} differs from PyTorch {ref.shape}")
    return float(np.abs(got - ref).max())


def export_torchscript(model: nn.Module, path: str | Path, height: int = 480, width: int = 640, batch: int = 1,
                       check: bool = True, atol: float = 1e-3) -> ExportResult:
    """Trace ``model`` to TorchScript (shape-generic for the student: no size-dependent branches)."""
    wrapper, inputs = _prepare(model, height, width, batch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, inputs, check_trace=False)
    extra = {k: v.encode() for k, v in _metadata(model).items()}
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated upstream, still supported
        torch.jit.save(traced, str(tmp), _extra_files=extra)
    tmp.replace(path)
    diff = None
    if check:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loaded = torch.jit.load(str(path))
        with torch.no_grad():
            got = loaded(*inputs)[0]
            ref = wrapper(*inputs)[0]
        diff = float((got - ref).abs().max())
        if not diff <= atol:
            raise RuntimeError(f"TorchScript disagrees with eager PyTorch on {path}: {diff:.3g} px > {atol:g}")
    outputs = ("disparity", "confidence") if wrapper.has_confidence else ("disparity",)
    return ExportResult(path, "torchscript", tuple(inputs[0].shape), False, diff, outputs)


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registry name with shipped weights, or a weights file")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--height", type=int, default=480, help="export height (multiple of the model's size_divisor)")
    p.add_argument("--width", type=int, default=640, help="export width (multiple of the model's size_divisor)")
    p.add_argument("--dynamic", action="store_true", help="ONNX: free batch/height/width axes")
    p.add_argument("--output", default=None, help="output file (default NAME_HxW.onnx / NAME_HxW.ts in the current folder)")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (>= {MIN_OPSET})")
    p.add_argument("--random-init", action="store_true", help="export an untrained registry model (pipeline tests)")
    p.add_argument("--atol", type=float, default=1e-3, help="largest accepted disparity difference to PyTorch (px)")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with PyTorch")


def run(args: argparse.Namespace) -> int:
    model = load_registry_model(args.model, random_init=args.random_init).cpu().eval()
    name = model.model_name
    suffix = ".onnx" if args.format == "onnx" else ".ts"
    size = "dynamic" if (args.dynamic and args.format == "onnx") else f"{args.height}x{args.width}"
    out = Path(args.output) if args.output else Path(f"{name}_{size}{suffix}")
    if args.format == "onnx":
        res = export_onnx(model, out, args.height, args.width, dynamic=args.dynamic, opset=args.opset,
                          check=not args.no_check, atol=args.atol)
    else:
        if args.dynamic:
            log.warning("--dynamic applies to ONNX; the traced TorchScript module follows the input shape anyway")
        res = export_torchscript(model, out, args.height, args.width, check=not args.no_check, atol=args.atol)
    check = "not checked" if res.max_abs_diff is None else f"max |diff| vs PyTorch {res.max_abs_diff:.2e} px"
    print(f"wrote {res.path} ({res.format}, input {res.input_shape}{', dynamic' if res.dynamic else ''}, "
          f"outputs {', '.join(res.outputs)}; {check})")
    if res.format == "onnx":
        print(f"TensorRT (Jetson): trtexec --onnx={res.path} --fp16 --saveEngine={res.path.with_suffix('.plan')}")
    return 0
