"""Every parameter of the stereo node, declared in one place, with defaults, descriptions and checks.

Public API:
    DEFAULT_MODEL                 the node's default ``model`` (change it here only)
    PARAMS                        tuple of ParamSpec (name, default, description, choices, check)
    NodeSettings                  dataclass with one field per parameter
    settings_from_dict(values)    -> NodeSettings, validated (no ROS needed; tests, tools)
    declare_parameters(node)      declares all of PARAMS on an rclpy node and returns the
                                  validated NodeSettings
    ParameterError (ValueError)   lists every invalid parameter with the reason

Why one table: stereo_image_proc's lesson is that parameters scattered over a node
drift away from their documentation. ``config/madis_stereo.yaml`` lists the same
names (a test checks), and the node never reads a parameter anywhere else.
Parameters are read once at start-up (declared read-only): changing the model or the
sync policy at runtime would need a restart anyway. Numbers are accepted as int or
float in YAML (``slop: 0`` works), then checked here with a clear error.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from madis_ros.processing import PUBLISH_RESOLUTIONS, ProcessingSettings

#: the node's default model: the shipped distilled-pipeline student (madis_core/weights/student.safetensors)
DEFAULT_MODEL = "student"

QOS_CHOICES = ("sensor_data", "reliable", "system_default")
DEPTH_ENCODINGS = ("32FC1", "16UC1")


class ParameterError(ValueError):
    """One or more node parameters are invalid; the message lists each with the reason."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: Optional[Tuple[Any, ...]] = None
    #: returns an error text for a bad value, None when fine
    check: Optional[Callable[[Any], Optional[str]]] = None


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _json_object(v):
    if not v:
        return None
    try:
        obj = json.loads(v)
    except json.JSONDecodeError as e:
        return f"must be a JSON object such as '{{\"num_disparities\": 256}}' ({e})"
    return None if isinstance(obj, dict) else "must be a JSON object (a dict of backend options)"


PARAMS: Tuple[ParamSpec, ...] = (
    # --- model ------------------------------------------------------------------------------
    ParamSpec("model", DEFAULT_MODEL, "Backend name (sgbm, sgbm-3way), registry model with shipped weights "
              "(student, student-lite, madis-tiny ...) or a weights file path (.safetensors/.pt/.onnx)."),
    ParamSpec("model_options", "", "Extra backend options as a JSON object, e.g. '{\"num_disparities\": 256, "
              "\"block_size\": 7}' for sgbm. Empty for none.", check=_json_object),
    ParamSpec("model_random_init", False, "Build an untrained registry model (testing and benchmarking only)."),
    ParamSpec("device", "auto", "auto (CUDA when available, else CPU with a warning), cpu, or cuda[:N].",
              check=lambda v: None if v == "auto" or v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit())
              else "must be auto, cpu, cuda or cuda:N"),
    ParamSpec("precision", "fp32", "Inference precision for learned models on CUDA.", choices=("fp32", "fp16", "bf16")),
    ParamSpec("runtime", "torch", "Runtime for learned models.", choices=("torch", "onnxruntime")),
    ParamSpec("threads", 0, "CPU threads for inference; 0 = auto: what the process may use (CPU affinity, cgroup "
              "quota), adapted at run time to the load (madis_core/runtime.py).", check=_non_negative),
    ParamSpec("max_disparity", 0.0, "Largest disparity searched/kept, in inference pixels; 0 = the model's range. "
              "For sgbm it sets num_disparities (rounded up to a multiple of 16).", check=_non_negative),
    # --- resolution ---------------------------------------------------------------------------
    ParamSpec("inference_scale", 1.0, "Resize factor applied before inference (camera_info is scaled with it).",
              check=lambda v: None if 0 < v <= 4 else "must be in (0, 4]"),
    ParamSpec("inference_width", 0, "Explicit inference width in px (with inference_height); 0 = use inference_scale.",
              check=_non_negative),
    ParamSpec("inference_height", 0, "Explicit inference height in px (with inference_width); 0 = use inference_scale.",
              check=_non_negative),
    ParamSpec("publish_resolution", "camera", "Publish outputs at the camera's resolution or the inference resolution.",
              choices=PUBLISH_RESOLUTIONS),
    # --- synchronisation and QoS ----------------------------------------------------------------
    ParamSpec("approximate_sync", False, "Pair left/right by nearest stamps within slop instead of identical stamps "
              "(needed for cameras that are not hardware-synchronised)."),
    ParamSpec("slop", 0.01, "Approximate sync: largest stamp difference in seconds within a pair.", check=_positive),
    ParamSpec("queue_size", 5, "Synchroniser queue per input (messages).",
              check=lambda v: None if 1 <= v <= 1000 else "must be in [1, 1000]"),
    ParamSpec("input_qos", "sensor_data", "QoS of the image and camera_info subscriptions: sensor_data (best "
              "effort; receives from reliable and best-effort publishers), reliable, or system_default.",
              choices=QOS_CHOICES),
    ParamSpec("output_qos", "reliable", "QoS of the publishers: reliable (depth 2), sensor_data or system_default.",
              choices=QOS_CHOICES),
    # --- outputs ----------------------------------------------------------------------------------
    ParamSpec("publish_disparity", True, "Publish stereo_msgs/DisparityImage on 'disparity'."),
    ParamSpec("publish_depth", True, "Publish the depth image on 'depth'."),
    ParamSpec("depth_encoding", "32FC1", "32FC1: metres with NaN invalid (REP 118); 16UC1: millimetres with 0 invalid.",
              choices=DEPTH_ENCODINGS),
    ParamSpec("publish_points", True, "Publish sensor_msgs/PointCloud2 on 'points2'."),
    ParamSpec("publish_confidence", False, "Publish the confidence (32FC1, 0..1) on 'confidence' when the model has one."),
    ParamSpec("publish_color_disparity", True, "Publish a colourised disparity (rgb8, invalid black) on 'disparity/color'."),
    ParamSpec("frame_id", "", "Frame of the outputs; empty = the left image's frame_id (the left optical frame)."),
    # --- processing ------------------------------------------------------------------------------
    ParamSpec("confidence_threshold", 0.0, "Pixels whose confidence is below this become invalid (0 = keep all).",
              check=lambda v: None if 0 <= v <= 1 else "must be in [0, 1]"),
    ParamSpec("min_depth", 0.0, "Depth and points nearer than this (m) become invalid; 0 = no limit.", check=_non_negative),
    ParamSpec("max_depth", 0.0, "Depth and points farther than this (m) become invalid; 0 = no limit.", check=_non_negative),
    ParamSpec("cloud_decimation", 1, "Keep every n-th row and column of the point cloud.",
              check=lambda v: None if v >= 1 else "must be >= 1"),
    ParamSpec("cloud_organized", True, "Organized cloud (rows x cols, NaN for invalid) or unorganized (valid points only)."),
    ParamSpec("cloud_color", True, "Add the rgb field from the left image to the cloud."),
    # --- monitoring ------------------------------------------------------------------------------
    ParamSpec("no_input_warn_sec", 5.0, "Warn when an input topic has been silent this long (s), naming topic and QoS.",
              check=_positive),
    ParamSpec("warn_throttle_sec", 5.0, "Minimum interval between repeats of the same warning (s).", check=_non_negative),
    ParamSpec("diagnostics_period", 1.0, "Period of /diagnostics messages (s, steady clock).", check=_positive),
)

_SPEC = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class NodeSettings:
    model: str
    model_options: str
    model_random_init: bool
    device: str
    precision: str
    runtime: str
    threads: int
    max_disparity: float
    inference_scale: float
    inference_width: int
    inference_height: int
    publish_resolution: str
    approximate_sync: bool
    slop: float
    queue_size: int
    input_qos: str
    output_qos: str
    publish_disparity: bool
    publish_depth: bool
    depth_encoding: str
    publish_points: bool
    publish_confidence: bool
    publish_color_disparity: bool
    frame_id: str
    confidence_threshold: float
    min_depth: float
    max_depth: float
    cloud_decimation: int
    cloud_organized: bool
    cloud_color: bool
    no_input_warn_sec: float
    warn_throttle_sec: float
    diagnostics_period: float

    def backend_options(self) -> Dict[str, Any]:
        """Keyword arguments for ``StereoEstimator.from_pretrained`` beyond name/device/precision/runtime."""
        opts: Dict[str, Any] = json.loads(self.model_options) if self.model_options else {}
        if self.model_random_init:
            opts.setdefault("random_init", True)
        if self.threads:  # 0 = auto (madis_core/runtime.py)
            opts.setdefault("threads", self.threads)
        if self.max_disparity > 0 and self.model in ("sgbm", "sgbm-3way"):
            opts.setdefault("num_disparities", int(math.ceil(self.max_disparity / 16.0)) * 16)
        return opts

    def processing_settings(self) -> ProcessingSettings:
        return ProcessingSettings(
            inference_scale=self.inference_scale, inference_width=self.inference_width,
            inference_height=self.inference_height, publish_resolution=self.publish_resolution,
            confidence_threshold=self.confidence_threshold, max_disparity=self.max_disparity,
            min_depth=self.min_depth, max_depth=self.max_depth,
            compute_depth=self.publish_depth, compute_points=self.publish_points,
            cloud_decimation=self.cloud_decimation, cloud_organized=self.cloud_organized, cloud_color=self.cloud_color)


assert [f.name for f in fields(NodeSettings)] == [p.name for p in PARAMS], "NodeSettings and PARAMS out of step"


def _coerce(spec: ParamSpec, value: Any) -> Tuple[Any, Optional[str]]:
    """Value converted to the default's type, or an error text."""
    kind = type(spec.default)
    if kind is bool:
        return (value, None) if isinstance(value, bool) else (value, f"must be true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            return value, f"must be an integer, got {value!r}"
        return int(value), None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return value, f"must be a finite number, got {value!r}"
        return float(value), None
    return (value, None) if isinstance(value, str) else (value, f"must be a string, got {value!r}")


def settings_from_dict(values: Mapping[str, Any]) -> NodeSettings:
    """Validated settings from ``values`` (missing names take their defaults)."""
    unknown = sorted(set(values) - set(_SPEC))
    errors = [f"unknown parameter {n!r}" for n in unknown]
    out: Dict[str, Any] = {}
    for spec in PARAMS:
        value, err = _coerce(spec, values.get(spec.name, spec.default))
        if err is None and spec.choices is not None and value not in spec.choices:
            err = f"must be one of {', '.join(map(str, spec.choices))}, got {value!r}"
        if err is None and spec.check is not None:
            err = spec.check(value)
        if err is not None:
            errors.append(f"{spec.name}: {err}")
        out[spec.name] = value
    if not errors:
        try:  # cross-parameter rules live with the processing settings
            NodeSettings(**out).processing_settings()
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ParameterError("invalid parameters:\n  " + "\n  ".join(errors))
    return NodeSettings(**out)


def declare_parameters(node: Any) -> NodeSettings:
    """Declare every parameter on ``node`` (read-only, documented) and return validated settings."""
    from rcl_interfaces.msg import ParameterDescriptor

    values = {}
    for spec in PARAMS:
        desc = spec.description + (f" One of: {', '.join(map(str, spec.choices))}." if spec.choices else "")
        descriptor = ParameterDescriptor(description=desc, read_only=True, dynamic_typing=True)
        values[spec.name] = node.declare_parameter(spec.name, spec.default, descriptor).value
    return settings_from_dict(values)
