"""madis_stereo_node: rectified stereo pair + camera_info in, disparity / depth / points2 out.

Run:  ros2 run madis_ros madis_stereo_node --ros-args --params-file config/madis_stereo.yaml
      python -m madis_ros.stereo_node --ros-args -p model:=sgbm -r left/image_rect:=/cam/left/image
(pip users: set FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA in every process that exchanges images.)

Topics (relative, so a namespace or remap moves them):
  in   left/image_rect, right/image_rect (sensor_msgs/Image), left/camera_info, right/camera_info
  out  disparity (stereo_msgs/DisparityImage), depth (Image 32FC1 m or 16UC1 mm), points2
       (PointCloud2), confidence (32FC1), disparity/color (rgb8), /diagnostics

Design (why it looks like this):
- The executor thread only stores messages and synchronises them. A pair that
  completes goes into a one-slot mailbox; a worker thread takes the newest pair and
  runs conversion, inference and publishing. A pair still waiting when a newer one
  arrives is dropped and counted ("superseded"), so latency stays at about one
  inference time whatever the input rate, and no queue can grow.
- Every pair the synchroniser delivers ends in exactly one of: processed, or one
  drop reason (superseded, no_camera_info, bad_camera_info, unsupported_encoding,
  malformed_image, mismatched_pair, inference_oom, inference_error). Images the
  synchroniser could not pair are counted per input. All counters are on /diagnostics.
- Bad input never stops the node: each reason gets a rate-limited warning that
  names the problem, and the next good pair is served.
- Monitoring runs on a steady-clock timer, so it works with use_sim_time and no /clock.
  Header stamps of outputs are those of the left image, so replay with sim time is
  unaffected.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import sys
import threading
import time
from collections import Counter, deque
from typing import Any, Deque, Dict, Optional, Tuple

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data,
                       qos_profile_system_default)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

from madis_ros.camera_info import CameraInfoError, stereo_camera_from_infos
from madis_ros.image_conversion import ImageConversionError, UnsupportedEncodingError, image_to_estimator_input
from madis_ros.outputs import (make_color_disparity_image, make_confidence_image, make_depth_image,
                               make_disparity_image, make_pointcloud2)
from madis_ros.params import NodeSettings, ParameterError, declare_parameters
from madis_ros.shutdown import finish
from madis_ros.processing import StereoFrameProcessor, inference_size
from madis_ros.sync import StereoSynchronizer, stamp_ns

NODE_NAME = "madis_stereo"
IN_TOPICS = ("left/image_rect", "right/image_rect", "left/camera_info", "right/camera_info")
#: pair-level drop reasons, always reported (zero included) so dashboards see stable keys
DROP_REASONS = ("superseded", "no_camera_info", "bad_camera_info", "unsupported_encoding", "malformed_image",
                "mismatched_pair", "inference_oom", "inference_error")
_SGBM = ("sgbm", "sgbm-3way")
#: how long the worker waits for a first camera_info that is still on its way (s)
CAMERA_INFO_WAIT_S = 0.25


class ModelLoadError(RuntimeError):
    """The model could not be built; the message says which and why."""


def qos_profile(name: str, depth: int = 5) -> QoSProfile:
    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    if name == "system_default":
        return qos_profile_system_default
    raise ValueError(f"unknown QoS {name!r}")


def describe_qos(name: str) -> str:
    return {"sensor_data": "sensor_data (best effort, volatile, keep last 5)",
            "reliable": "reliable (volatile)", "system_default": "system_default (reliable in most RMWs)"}[name]


def load_estimator(settings: NodeSettings, logger: Any):
    """Build the estimator; every failure becomes a ModelLoadError with a one-line reason."""
    from madis_core.estimator import StereoEstimator

    try:
        opts = settings.backend_options()
        est = StereoEstimator.from_pretrained(settings.model, device=settings.device, precision=settings.precision,
                                              runtime=settings.runtime, **opts)
    except Exception as e:  # FileNotFoundError, CheckpointError, ValueError, RuntimeError (CUDA), TypeError
        kind = type(e).__name__
        hint = ""
        if "cuda" in str(e).lower():
            hint = " (CUDA unavailable: use device:=auto or device:=cpu)"
        raise ModelLoadError(f"cannot load model {settings.model!r} on device {settings.device!r}: {kind}: {e}{hint}") from e
    if settings.device == "auto" and str(est.device) == "cpu":
        if settings.model in _SGBM:
            logger.info(f"model {settings.model} runs on the CPU")
        else:
            logger.warning("device auto: no CUDA device available, running on the CPU (expect much higher latency)")
    from madis_core.runtime import describe  # the thread policy and count (issue 18)
    logger.info(f"inference threads: {est.threads.mode} ({describe()})")
    return est


class RateLimitedLogger:
    """One warning per key per period, with the number suppressed in between."""

    def __init__(self, logger: Any, period_s: float):
        self._logger, self._period = logger, float(period_s)
        self._last: Dict[str, float] = {}
        self._suppressed: Counter = Counter()
        self._lock = threading.Lock()

    def warn(self, key: str, text: str, level: str = "warning") -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._suppressed[key] += 1
                return
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        text += f" ({n} more like this in the last {self._period:g} s)" if n else ""
        # rclpy remembers the severity per call site and refuses a change: one call per level
        if level == "error":
            self._logger.error(text)
        elif level == "info":
            self._logger.info(text)
        else:
            self._logger.warning(text)


def _pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


class StereoNode(Node):
    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        self.settings = declare_parameters(self)
        self._warn_unknown_overrides()
        s = self.settings
        self._log = RateLimitedLogger(self.get_logger(), s.warn_throttle_sec)
        self.estimator = load_estimator(s, self.get_logger())
        self.processor = StereoFrameProcessor(self.estimator, s.processing_settings())
        self.get_logger().info(f"model {self.estimator!r}; sync "
                               f"{'approximate (slop %g s)' % s.slop if s.approximate_sync else 'exact'}, "
                               f"queue {s.queue_size}; input QoS {s.input_qos}, output QoS {s.output_qos}")

        # --- outputs ------------------------------------------------------------------------
        oq = qos_profile(s.output_qos, depth=2)
        self.pub_disparity = self.create_publisher(DisparityImage, "disparity", oq) if s.publish_disparity else None
        self.pub_depth = self.create_publisher(Image, "depth", oq) if s.publish_depth else None
        self.pub_points = self.create_publisher(PointCloud2, "points2", oq) if s.publish_points else None
        self.pub_confidence = self.create_publisher(Image, "confidence", oq) if s.publish_confidence else None
        self.pub_color = self.create_publisher(Image, "disparity/color", oq) if s.publish_color_disparity else None
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        # --- state shared between executor and worker ---------------------------------------------------
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._slot: Optional[Tuple[Any, Any, float]] = None
        self._busy = False
        self._stop = False
        self._infos: Dict[int, Dict[int, Any]] = {0: {}, 1: {}}  # side -> stamp_ns -> CameraInfo (recent)
        self._latest_info: Dict[int, Any] = {}
        self.received: Counter = Counter()  # per input topic
        self._last_rx: Dict[str, float] = {}
        self.pairs_received = 0
        self.processed = 0
        self.drops: Counter = Counter({r: 0 for r in DROP_REASONS})
        # t, inference, e2e, stamp age, overhead (all but the forward, before publishing), publish (ms)
        self._frames: Deque[Tuple[float, ...]] = deque(maxlen=512)
        self._t_start = time.monotonic()
        self._diag_prev = (self._t_start, 0, 0, Counter())
        self._sync_prev = (0, 0, 0)
        self._warned_once: set = set()
        # per-frame timing lines (benchmarks/node_latency.py): --ros-args --log-level madis_stereo:=debug
        self._log_frames = self.get_logger().is_enabled_for(rclpy.logging.LoggingSeverity.DEBUG)

        # --- inputs -------------------------------------------------------------------------------
        self.sync = StereoSynchronizer(self._on_pair, n_inputs=2, approximate=s.approximate_sync, slop=s.slop,
                                       queue_size=s.queue_size)
        iq = qos_profile(s.input_qos)
        self._subs = [
            self.create_subscription(Image, IN_TOPICS[0], lambda m: self._on_image(0, m), iq),
            self.create_subscription(Image, IN_TOPICS[1], lambda m: self._on_image(1, m), iq),
            self.create_subscription(CameraInfo, IN_TOPICS[2], lambda m: self._on_info(0, m), iq),
            self.create_subscription(CameraInfo, IN_TOPICS[3], lambda m: self._on_info(1, m), iq),
        ]

        # --- worker and monitoring (steady clock: independent of use_sim_time) ----------------------------
        self._worker = threading.Thread(target=self._work, name="madis_stereo_worker", daemon=True)
        self._worker.start()
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._diag_timer = self.create_timer(s.diagnostics_period, self._publish_diagnostics, clock=steady)
        self._monitor_timer = self.create_timer(min(1.0, s.no_input_warn_sec / 2.0), self._monitor, clock=steady)

    # ------------------------------------------------------------------------------------------------
    def _warn_unknown_overrides(self) -> None:
        declared = set(self._parameters)
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        unknown = sorted(n for n in overrides if n not in declared and not n.startswith("qos_overrides."))
        if unknown:
            self.get_logger().warning(f"ignoring unknown parameter(s) {', '.join(unknown)} (typo?); "
                                      "see config/madis_stereo.yaml for the list")

    def _topic(self, i: int) -> str:
        return self._subs[i].topic_name

    # --- executor-thread callbacks: cheap, never block on inference ------------------------------------
    def _on_image(self, side: int, msg: Image) -> None:
        self.received[IN_TOPICS[side]] += 1
        self._last_rx[IN_TOPICS[side]] = time.monotonic()
        self.sync.add(side, msg)

    def _on_info(self, side: int, msg: CameraInfo) -> None:
        self.received[IN_TOPICS[2 + side]] += 1
        self._last_rx[IN_TOPICS[2 + side]] = time.monotonic()
        with self._lock:
            cache = self._infos[side]
            cache[stamp_ns(msg)] = msg
            while len(cache) > 2 * self.settings.queue_size + 2:
                del cache[min(cache)]
            self._latest_info[side] = msg
            self._cond.notify_all()

    def _info_for(self, side: int, stamp: int) -> Any:
        """camera_info with the image's stamp, else the latest one (called with the lock held)."""
        return self._infos[side].get(stamp, self._latest_info.get(side))

    def _on_pair(self, left: Image, right: Image) -> None:
        t = time.monotonic()
        with self._cond:
            self.pairs_received += 1
            if self._slot is not None:
                self.drops["superseded"] += 1
            self._slot = (left, right, t)
            self._cond.notify()

    def _camera_infos(self, left: Image, right: Image) -> Tuple[Any, Any]:
        """The camera_info pair for an image pair (worker thread). Drivers publish the image
        before its camera_info, so when none has been seen yet for a side, wait briefly."""
        deadline = time.monotonic() + CAMERA_INFO_WAIT_S
        with self._cond:
            while (0 not in self._latest_info or 1 not in self._latest_info) and not self._stop:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    break
                self._cond.wait(left_s)
            return self._info_for(0, stamp_ns(left)), self._info_for(1, stamp_ns(right))

    # --- worker thread ---------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait(timeout=0.5)
                if self._stop:
                    return
                item, self._slot = self._slot, None
                self._busy = True
            try:
                reason = self._process(*item)
            except Exception as e:  # a bug must not kill the worker silently
                reason = "inference_error"
                self._log.warn("internal", f"unexpected error while processing a pair: {type(e).__name__}: {e}", "error")
            with self._cond:
                self._busy = False
                if reason is None:
                    self.processed += 1
                else:
                    self.drops[reason] += 1

    def _drop(self, reason: str, text: str) -> str:
        self._log.warn(reason, f"dropping stereo pair ({reason}): {text}")
        return reason

    def _process(self, left: Image, right: Image, t_rx: float) -> Optional[str]:
        s = self.settings
        left_info, right_info = self._camera_infos(left, right)
        if left_info is None or right_info is None:
            missing = [self._topic(2 + i) for i, m in enumerate((left_info, right_info)) if m is None]
            return self._drop("no_camera_info", f"no camera_info received yet on {', '.join(missing)} "
                              f"(QoS {describe_qos(s.input_qos)}); depth needs the calibration")
        t_start = time.perf_counter()  # per-frame overhead: from here to the built messages, minus the forward
        try:
            limg = image_to_estimator_input(left)
            rimg = image_to_estimator_input(right)
        except UnsupportedEncodingError as e:
            return self._drop("unsupported_encoding", str(e))
        except ImageConversionError as e:
            return self._drop("malformed_image", str(e))
        if limg.shape[:2] != rimg.shape[:2] or limg.dtype != rimg.dtype or limg.ndim != rimg.ndim:
            return self._drop("mismatched_pair", f"left is {left.width}x{left.height} {left.encoding}, right is "
                              f"{right.width}x{right.height} {right.encoding}; both must have the same size and format")
        try:
            camera = stereo_camera_from_infos(left_info, right_info, image_size=(limg.shape[1], limg.shape[0]))
        except (CameraInfoError, ValueError) as e:
            return self._drop("bad_camera_info", f"{e} (topics {self._topic(2)}, {self._topic(3)})")

        want_points = self.pub_points is not None and self.pub_points.get_subscription_count() > 0
        want_depth = self.pub_depth is not None
        base = self.processor.settings
        if base.compute_points != want_points or base.compute_depth != want_depth:
            self.processor.settings = dataclasses.replace(base, compute_points=want_points, compute_depth=want_depth)
        try:
            res = self.processor.process(limg, rimg, camera)
        except Exception as e:
            if _is_out_of_memory(e):
                torch = sys.modules.get("torch")
                if torch is not None and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                wi, hi = inference_size(limg.shape[1], limg.shape[0], self.processor.settings)
                self._log.warn("inference_oom", f"out of memory running {self.estimator.name} on {self.estimator.device} "
                               f"at {wi}x{hi} (input {limg.shape[1]}x{limg.shape[0]}): frame dropped, node "
                               "continues; lower inference_scale or use a smaller model", "error")
                return "inference_oom"
            self._log.warn("inference_error", f"inference failed on {limg.shape[1]}x{limg.shape[0]} input: "
                           f"{type(e).__name__}: {e}", "error")
            return "inference_error"

        header = left.header
        frame = s.frame_id or left.header.frame_id or left_info.header.frame_id
        if frame != header.frame_id:
            header = type(header)(stamp=header.stamp, frame_id=frame)
        # every message is built before any is published: building is the node's own overhead,
        # publishing is rclpy/DDS (serialisation and transport), timed apart
        out = []
        if self.pub_disparity is not None:
            out.append((self.pub_disparity, make_disparity_image(res.disparity, res.camera, header, res.min_disparity,
                                                                 res.max_disparity, res.delta_d)))
        if self.pub_depth is not None and res.depth is not None:
            out.append((self.pub_depth, make_depth_image(res.depth, header, s.depth_encoding)))
        if self.pub_points is not None and res.points is not None:
            out.append((self.pub_points, make_pointcloud2(res.points, header, res.colors)))
        if self.pub_confidence is not None:
            if res.confidence is not None:
                out.append((self.pub_confidence, make_confidence_image(res.confidence, header)))
            elif "no_confidence" not in self._warned_once:
                self._warned_once.add("no_confidence")
                self.get_logger().warning(f"model {self.estimator.name} has no confidence output; "
                                          "'confidence' is not published")
        if s.confidence_threshold > 0 and res.confidence is None and "no_conf_thr" not in self._warned_once:
            self._warned_once.add("no_conf_thr")
            self.get_logger().warning(f"confidence_threshold {s.confidence_threshold:g} has no effect: model "
                                      f"{self.estimator.name} has no confidence output")
        if self.pub_color is not None:
            out.append((self.pub_color, make_color_disparity_image(res.disparity, header, res.max_disparity,
                                                                   res.min_disparity)))
        t_built = time.perf_counter()
        for pub, msg in out:
            pub.publish(msg)
        t_published = time.perf_counter()
        t_done = time.monotonic()
        age = (self.get_clock().now().nanoseconds - stamp_ns(left)) / 1e6
        inference = res.timings_ms.get("inference", float("nan"))
        overhead = (t_built - t_start) * 1e3 - inference
        publish = (t_published - t_built) * 1e3
        with self._lock:
            self._frames.append((t_done, inference, (t_done - t_rx) * 1e3, age, overhead, publish))
        if self._log_frames:
            self.get_logger().debug(f"frame stamp_ns={stamp_ns(left)} inference_ms={inference:.3f} "
                                    f"overhead_ms={overhead:.3f} publish_ms={publish:.3f} "
                                    f"latency_ms={(t_done - t_rx) * 1e3:.3f}")
        return None

    # --- monitoring ------------------------------------------------------------------------------------
    def _guarded(self, what: str, fn) -> None:
        """Monitoring must never take the node down with it."""
        try:
            fn()
        except Exception as e:
            self._log.warn(f"internal_{what}", f"{what} failed: {type(e).__name__}: {e}", "error")

    def _monitor(self) -> None:
        self._guarded("input monitoring", self._monitor_inputs)

    def _monitor_inputs(self) -> None:
        s = self.settings
        now = time.monotonic()
        silent = [i for i, t in enumerate(IN_TOPICS)
                  if now - self._last_rx.get(t, self._t_start) > s.no_input_warn_sec]
        if silent:
            parts = []
            for i in silent:
                name = self._topic(i)
                pubs = self.get_publishers_info_by_topic(name)
                if not pubs:
                    parts.append(f"{name} (no publisher)")
                    continue
                be = [p for p in pubs if p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
                hint = ""
                if be and s.input_qos != "sensor_data":
                    hint = ", best-effort publisher cannot reach this reliable subscription: use input_qos:=sensor_data"
                last = self._last_rx.get(IN_TOPICS[i])
                seen = "nothing received yet" if last is None else f"last message {now - last:.0f} s ago"
                parts.append(f"{name} ({len(pubs)} publisher(s), {seen}{hint})")
            self._log.warn("no_input", f"no input for {s.no_input_warn_sec:g} s on {'; '.join(parts)}; subscribed with "
                           f"QoS {describe_qos(s.input_qos)}. Check `ros2 topic info -v <topic>`; large images between "
                           "processes need FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA")
        # exact sync that never matches: the classic silent failure with unsynchronised cameras
        rx = (self.received[IN_TOPICS[0]], self.received[IN_TOPICS[1]], self.sync.matched)
        prev, self._sync_prev = self._sync_prev, rx
        if not s.approximate_sync and rx[0] > prev[0] and rx[1] > prev[1] and rx[2] == prev[2]:
            off = self.sync.recent_offset_ms()
            if off is not None and off > 0:
                self._log.warn("exact_sync", f"exact time sync (approximate_sync=false) is dropping pairs: left and "
                               f"right stamps never match (nearest stamps {off:.1f} ms apart). If the cameras are not "
                               f"hardware-synchronised set approximate_sync:=true with slop >= {max(2 * off, 1.0) / 1e3:.3f}")

    def stats(self) -> Dict[str, Any]:
        """Counters and latency figures (also what /diagnostics carries)."""
        now = time.monotonic()
        with self._lock:
            t0, pairs0, proc0, rx0 = self._diag_prev
            dt = max(now - t0, 1e-6)
            frames = [f for f in self._frames if f[0] >= now - max(dt, 1.0)]
            out = {
                "pairs_received": self.pairs_received, "pairs_processed": self.processed,
                "pairs_pending": int(self._slot is not None), "pairs_in_progress": int(self._busy),
                "drops": dict(self.drops),
                "input_rate_hz": (self.pairs_received - pairs0) / dt,
                "output_rate_hz": (self.processed - proc0) / dt,
                "topic_rate_hz": {t: (self.received[t] - rx0[t]) / dt for t in IN_TOPICS},
                "inference_ms_mean": float(np.mean([f[1] for f in frames])) if frames else float("nan"),
                "inference_ms_p95": _pct([f[1] for f in frames], 95),
                "overhead_ms_mean": float(np.mean([f[4] for f in frames])) if frames else float("nan"),
                "overhead_ms_p95": _pct([f[4] for f in frames], 95),
                "publish_ms_mean": float(np.mean([f[5] for f in frames])) if frames else float("nan"),
                "latency_ms_mean": float(np.mean([f[2] for f in frames])) if frames else float("nan"),
                "latency_ms_p95": _pct([f[2] for f in frames], 95),
                "stamp_age_ms_p95": _pct([f[3] for f in frames], 95),
            }
            self._diag_prev = (now, self.pairs_received, self.processed, Counter(self.received))
        out["sync_dropped"] = {"left": self.sync.dropped(0), "right": self.sync.dropped(1)}
        out["received"] = {t: self.received[t] for t in IN_TOPICS}
        out["rss_mb"] = _rss_mb()
        return out

    def _publish_diagnostics(self) -> None:
        self._guarded("diagnostics", self._publish_diagnostics_now)

    def _publish_diagnostics_now(self) -> None:
        st = self.stats()
        s = self.settings
        bad = sum(v for k, v in st["drops"].items() if k != "superseded")
        silent = st["input_rate_hz"] == 0 and time.monotonic() - self._t_start > s.no_input_warn_sec
        level = DiagnosticStatus.WARN if (bad or silent) else DiagnosticStatus.OK
        msg = "no input" if silent else (f"{bad} pairs dropped for bad input or errors" if bad else "ok")
        values = {
            "model": self.estimator.name, "device": str(self.estimator.device),
            "sync": f"approximate slop={s.slop:g}" if s.approximate_sync else "exact", "sync_backend": self.sync.backend,
            "input_qos": s.input_qos,
            "input_rate_hz": f"{st['input_rate_hz']:.2f}", "output_rate_hz": f"{st['output_rate_hz']:.2f}",
            "pairs_received": st["pairs_received"], "pairs_processed": st["pairs_processed"],
            "pairs_pending": st["pairs_pending"], "pairs_in_progress": st["pairs_in_progress"],
            **{f"dropped_{k}": v for k, v in st["drops"].items()},
            "sync_dropped_left": st["sync_dropped"]["left"], "sync_dropped_right": st["sync_dropped"]["right"],
            **{f"received_{t.replace('/', '_')}": n for t, n in st["received"].items()},
            **{f"rate_hz_{t.replace('/', '_')}": f"{r:.2f}" for t, r in st["topic_rate_hz"].items()},
            "inference_ms_mean": f"{st['inference_ms_mean']:.2f}", "inference_ms_p95": f"{st['inference_ms_p95']:.2f}",
            "overhead_ms_mean": f"{st['overhead_ms_mean']:.2f}", "overhead_ms_p95": f"{st['overhead_ms_p95']:.2f}",
            "publish_ms_mean": f"{st['publish_ms_mean']:.2f}",
            "latency_ms_mean": f"{st['latency_ms_mean']:.2f}", "latency_ms_p95": f"{st['latency_ms_p95']:.2f}",
            "stamp_age_ms_p95": f"{st['stamp_age_ms_p95']:.2f}", "rss_mb": f"{st['rss_mb']:.1f}",
        }
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        status = DiagnosticStatus(level=level, name=f"{self.get_fully_qualified_name()}: stereo",
                                  message=msg, hardware_id=f"{self.estimator.name}@{self.estimator.device}")
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr.status = [status]
        self.pub_diag.publish(arr)

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._worker.join(timeout=10.0)


def _is_out_of_memory(e: BaseException) -> bool:
    """CUDA OOM (torch.cuda.OutOfMemoryError) or a failed host allocation (MemoryError, torch's
    DefaultCPUAllocator 'can't allocate memory')."""
    text = str(e).lower()
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in text
            or "can't allocate memory" in text)


def tune_malloc() -> bool:
    """Make glibc keep freed image-sized buffers for reuse instead of returning them to the OS.

    Each frame allocates and frees some 10-30 MB of arrays (depth, points, message buffers,
    the model's intermediates). With glibc's defaults the worker thread's arena gives that
    memory back after every frame and takes it again on the next one as fresh pages: ~2700
    minor page faults per frame at 640x480. Measured with benchmarks/node_latency.py (node
    process over DDS, SGBM, 3 runs each): node overhead p50 15 -> 4.2 ms, SGBM inference
    p50 148 -> 110 ms, stamp->points2 p50 182 -> 130 ms, for +21 MB resident memory.
    Buffers up to 32 MiB come from the heap (M_MMAP_THRESHOLD) and up to 256 MiB of free heap
    is kept (M_TRIM_THRESHOLD). No-op off glibc or with MADIS_MALLOC_TUNING=0."""
    if os.environ.get("MADIS_MALLOC_TUNING", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return False


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def main(args=None) -> int:
    """Run the node until SIGINT/SIGTERM. The signals only set a flag: the executor stops at
    its next 0.1 s tick, the worker publishes the pair in flight (rclpy's own handler would
    invalidate the context under it), and ``madis_ros.shutdown.finish`` ends the process in
    bounded time with status 0."""
    import signal

    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(args=args, signal_handler_options=rclpy.SignalHandlerOptions.NO)
    if tune_malloc():
        rclpy.logging.get_logger(NODE_NAME).debug("glibc malloc tuned to reuse per-frame buffers (see tune_malloc)")
    node = None
    code = 0
    try:
        node = StereoNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterError as e:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(e))
        code = 2
    except ModelLoadError as e:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(e))
        code = 1
    finally:
        if node is not None:
            node.shutdown()
        code = finish(node, code, rclpy.logging.get_logger(NODE_NAME))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
