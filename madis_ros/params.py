"""Every parameter of the stereo node, declared in one place, with defaults, descriptions and checks.

Public API:
    DEFAULT_MODEL                 the node's default ``model`` (``madis_core.estimator.DEFAULT_MODEL``)
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

from madis_core.estimator import DEFAULT_MODEL
from madis_core.pipeline import PUBLISH_RESOLUTIONS, ProcessingSettings
from madis_ros.calibration import RECTIFY_MODES


QOS_CHOICES = ("sensor_data", "reliable", "system_default")
TRANSPORTS = ("raw", "compressed")
DEPTH_ENCODINGS = ("32FC1", "16UC1")


class ParameterError(ValueError):
    """One or more node parameters are invalid; the message lists each with the reason."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    choices: Optional[Tuple[Any, ...]] = None
    #: (lowest, highest) allowed value of a number, inclusive; also the descriptor's range
    limits: Optional[Tuple[float, float]] = None
    #: the lowest value itself is not allowed (``> low`` instead of ``>= low``)
    above_low: bool = False
    #: returns an error text for a bad value, None when fine (checks beyond the limits)
    check: Optional[Callable[[Any], Optional[str]]] = None

    def limit_error(self, v) -> Optional[str]:
        if self.limits is None:
            return None
        lo, hi = self.limits
        if (v > lo if self.above_low else v >= lo) and v <= hi:
            return None
        return f"must be {'>' if self.above_low else '>='} {lo:g} and <= {hi:g}, got {v:g}"


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
              "quota), adapted at run time to the load (madis_core/runtime.py).", limits=(0, 1024)),
    ParamSpec("max_disparity", 0.0, "Largest disparity searched/kept, in inference pixels; 0 = the model's range. "
              "For sgbm it sets num_disparities (rounded up to a multiple of 16).", limits=(0.0, 4096.0)),
    # --- resolution ---------------------------------------------------------------------------
    ParamSpec("inference_scale", 1.0, "Resize factor applied before inference (camera_info is scaled with it).",
              limits=(0.0, 4.0), above_low=True),
    ParamSpec("inference_width", 0, "Explicit inference width in px (with inference_height); 0 = use inference_scale.",
              limits=(0, 16384)),
    ParamSpec("inference_height", 0, "Explicit inference height in px (with inference_width); 0 = use inference_scale.",
              limits=(0, 16384)),
    ParamSpec("publish_resolution", "camera", "Publish outputs at the camera's resolution or the inference resolution.",
              choices=PUBLISH_RESOLUTIONS),
    # --- synchronisation and QoS ----------------------------------------------------------------
    ParamSpec("approximate_sync", False, "Pair left/right by nearest stamps within slop instead of identical stamps "
              "(needed for cameras that are not hardware-synchronised)."),
    ParamSpec("slop", 0.01, "Approximate sync: largest stamp difference in seconds within a pair.",
              limits=(0.0, 10.0), above_low=True),
    ParamSpec("queue_size", 5, "Synchroniser queue per input (messages).", limits=(1, 1000)),
    ParamSpec("input_qos", "sensor_data", "QoS of the image and camera_info subscriptions: sensor_data (best "
              "effort; receives from reliable and best-effort publishers), reliable, or system_default.",
              choices=QOS_CHOICES),
    ParamSpec("output_qos", "reliable", "QoS of the publishers: reliable (depth 2), sensor_data or system_default.",
              choices=QOS_CHOICES),
    # --- input images ----------------------------------------------------------------------------
    ParamSpec("input_transport", "raw", "raw: sensor_msgs/Image on left/image_rect and right/image_rect; compressed: "
              "sensor_msgs/CompressedImage (jpeg/png, 8 or 16 bit) on left/image_rect/compressed and "
              "right/image_rect/compressed (image_transport's names).", choices=TRANSPORTS),
    ParamSpec("rectify", "auto", "auto: rectify the images with their camera_info (K, D, R, P; plumb_bob, "
              "rational_polynomial, equidistant) when D or R say they are raw; true: always; false: never "
              "(the images are taken as rectified).", choices=RECTIFY_MODES),
    ParamSpec("mono16_bits", 0, "Significant bits of 16-bit images (12 for a 12-bit sensor in mono16): they are "
              "scaled to the full range before the model and the colours; 0 = measured (the highest bit seen "
              "so far); 16 = as they are.", limits=(0, 16),
              check=lambda v: None if v == 0 or v >= 8 else "must be 0 (measured) or 8..16"),
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
              limits=(0.0, 1.0)),
    ParamSpec("min_depth", 0.0, "Depth and points nearer than this (m) become invalid; 0 = no limit.",
              limits=(0.0, 1e4)),
    ParamSpec("max_depth", 0.0, "Depth and points farther than this (m) become invalid; 0 = no limit.",
              limits=(0.0, 1e4)),
    ParamSpec("cloud_decimation", 1, "Keep every n-th row and column of the point cloud.", limits=(1, 64)),
    ParamSpec("cloud_organized", True, "Organized cloud (rows x cols, NaN for invalid) or unorganized (valid points only)."),
    ParamSpec("cloud_color", True, "Add the rgb field from the left image to the cloud."),
    # --- monitoring ------------------------------------------------------------------------------
    ParamSpec("no_input_warn_sec", 5.0, "Warn when an input topic has been silent this long (s), naming topic and QoS.",
              limits=(0.0, 86400.0), above_low=True),
    ParamSpec("warn_throttle_sec", 5.0, "Minimum interval between repeats of the same warning (s).",
              limits=(0.0, 3600.0)),
    ParamSpec("diagnostics_period", 1.0, "Period of /diagnostics messages (s, steady clock).",
              limits=(0.0, 3600.0), above_low=True),
    # --- online adaptation (madis_core.adaptation.online) ----------------------------------------
    ParamSpec("adapt", False, "Adapt the network to this camera while running: a background thread fine-tunes a "
              "copy on the newest pairs (self-supervised: photometric + EMA-teacher pseudo labels, no ground "
              "truth) and hands its weights to inference between frames; never delays a frame. Torch models "
              "only."),
    ParamSpec("adapt_interval_sec", 1.0, "At most one adaptation step per this many seconds (bounds its CPU/GPU "
              "share).", limits=(0.0, 3600.0)),
    ParamSpec("adapt_threads", 1, "CPU threads of the adaptation thread (inference keeps its own).", limits=(1, 64)),
    ParamSpec("adapt_in_process", True, "Run the adaptation in a child process (its own interpreter: no lock shared "
              "with inference, its own priority) instead of a thread of the node; weights come back through "
              "shared memory."),
    ParamSpec("adapt_lr", 1e-4, "Learning rate of online adaptation.", limits=(0.0, 1.0), above_low=True),
    ParamSpec("adapt_save_path", "", "Write the adapted weights (+ a .md card) here on shutdown, loadable with "
              "model:=PATH; empty: not saved.",
              check=lambda v: None if not v or v.endswith(".safetensors") else "must end in .safetensors"),
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
    input_transport: str
    rectify: str
    mono16_bits: int
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
    adapt: bool
    adapt_interval_sec: float
    adapt_threads: int
    adapt_in_process: bool
    adapt_lr: float
    adapt_save_path: str

    def estimator_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``madis_core.estimator.build_estimator`` (model_options last)."""
        opts: Dict[str, Any] = json.loads(self.model_options) if self.model_options else {}
        return {"model": self.model, "device": self.device, "precision": self.precision, "runtime": self.runtime,
                "max_disparity": self.max_disparity, "random_init": self.model_random_init,
                "threads": self.inference_threads(), **opts}

    def inference_threads(self) -> Optional[int]:
        """``threads``, or for 0 (auto) None: madis_core/runtime.py decides. With ``adapt`` on and
        threads auto, inference keeps off the adaptation thread's cores (all CPUs the process may
        use minus ``adapt_threads``, at least 1): an OpenMP team sharing a core with the adapter
        waits at every barrier (measured at 640x480, 10 Hz on 2 cores: newest-pair p95 +50 % with
        2 inference threads, +5..16 % with 1; README "Adapting to your camera")."""
        if self.threads or not self.adapt:
            return self.threads or None
        from madis_core.runtime import available_cpus

        return max(1, available_cpus() - self.adapt_threads)

    def processing_settings(self) -> ProcessingSettings:
        return ProcessingSettings(
            inference_scale=self.inference_scale, inference_width=self.inference_width,
            inference_height=self.inference_height, publish_resolution=self.publish_resolution,
            confidence_threshold=self.confidence_threshold, max_disparity=self.max_disparity,
            min_depth=self.min_depth, max_depth=self.max_depth,
            compute_depth=self.publish_depth, compute_points=self.publish_points,
            cloud_decimation=self.cloud_decimation, cloud_organized=self.cloud_organized, cloud_color=self.cloud_color,
            mono16_bits=self.mono16_bits)


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
        if err is None:
            err = spec.limit_error(value)
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


def descriptor(spec: ParamSpec):
    """The rcl ParameterDescriptor of a parameter: read-only, its description and choices, and its
    limits as an integer or floating-point range (what ``ros2 param describe`` shows)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

    desc = spec.description + (f" One of: {', '.join(map(str, spec.choices))}." if spec.choices else "")
    d = ParameterDescriptor(description=desc, read_only=True, dynamic_typing=True)
    if spec.limits is not None:
        lo, hi = spec.limits
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def declare_parameters(node: Any) -> NodeSettings:
    """Validate the node's parameter overrides (every error listed at once, ParameterError), then
    declare every parameter on ``node`` with its descriptor and return the settings."""
    overrides = getattr(node, "_parameter_overrides", {}) or {}  # rclpy keeps them private
    settings_from_dict({n: overrides[n].value for n in _SPEC if n in overrides})  # raises before rcl would
    values = {spec.name: node.declare_parameter(spec.name, spec.default, descriptor(spec)).value for spec in PARAMS}
    return settings_from_dict(values)
