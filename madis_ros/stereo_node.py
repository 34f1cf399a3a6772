"""madis_stereo_node: stereo pair + camera_info in, disparity / depth / points2 out.

Run:  ros2 run madis_ros madis_stereo_node --ros-args --params-file config/madis_stereo.yaml
      python -m madis_ros.stereo_node --ros-args -p model:=sgbm -r left/image_rect:=/cam/left/image
(pip users on one machine: export FASTDDS_DEFAULT_PROFILES_FILE=$(python -m madis_ros.transport)
in every process that exchanges images; see the README.)

Topics (relative, so a namespace or remap moves them):
  in   left/image_rect, right/image_rect (sensor_msgs/Image; with input_transport:=compressed
       left/image_rect/compressed, right/image_rect/compressed: CompressedImage),
       left/camera_info, right/camera_info (all four synchronised; raw images rectified: rectify)
  out  disparity (stereo_msgs/DisparityImage), depth (Image 32FC1 m or 16UC1 mm), points2
       (PointCloud2), confidence (32FC1), disparity/color (rgb8), /diagnostics

This module is the ROS adapter only: parameters (``params``), subscriptions, publishers,
diagnostics and ``main``. What it runs is plain Python shared with the bag tools:
- ``frame_sync.FrameSync``: both images and both camera_infos synchronised (exact or
  approximate), so a frame is never processed with another frame's calibration;
- ``worker.NewestPairWorker``: the executor thread only stores and synchronises messages; a
  complete pair goes into a one-slot mailbox and a worker thread processes the newest one
  (a pair superseded before it is processed is dropped and counted), so latency stays at
  about one inference time and no queue can grow;
- ``stereo_frames.MessageFrameProcessor``: decode (raw or compressed), calibration and
  rectification (built once per calibration), the ``madis_core.pipeline`` frame pipeline, and
  every drop reason (``DROP_REASONS``) with its rate-limited warning;
- ``messages``: the output messages; ``diagnostics``: /diagnostics; ``node_runtime``:
  estimator loading, QoS, memory tuning.
Monitoring runs on a steady-clock timer, so it works with use_sim_time and no /clock. Header
stamps of outputs are those of the left image, so replay with sim time is unaffected.
"""
from __future__ import annotations

import os
import sys

from madis_ros import process_signals

if __name__ == "__main__":  # a signal during the imports below must not end in a traceback
    process_signals.install()

# the thread policy for a shared CPU is set by importing madis_core (madis_ros/__init__.py)
import time
from collections import Counter
from typing import Any, Dict, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy._rclpy_pybind11 import RCLError
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

from madis_core.pipeline import StereoFrameProcessor
from madis_ros.diagnostics import stereo_status
from madis_ros.frame_sync import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO, ROLES, FrameSync, StereoInput
from madis_ros.messages import (make_color_disparity_image, make_confidence_image, make_depth_image,
                                make_disparity_image, make_pointcloud2)
from madis_ros.msgkit import stamp_ns
from madis_ros.node_runtime import (ModelLoadError, describe_qos, load_estimator, qos_profile, rss_mb,
                                    save_online_adaptation, start_online_adaptation, tune_malloc)
from madis_ros.params import ParameterError, declare_parameters
from madis_ros.shutdown import finish
from madis_ros.stereo_frames import DROP_REASONS, FrameDropped, MessageFrameProcessor
from madis_ros.worker import FrameStats, NewestPairWorker, RateLimitedLogger

NODE_NAME = "madis_stereo"
#: what to try when images are published but never arrive (measured: README, "Large images over DDS")
LARGE_IMAGE_HINT = ("if images are published but never arrive (large images, e.g. 4K), use in every process the "
                    "same-host shared-memory profile (export FASTDDS_DEFAULT_PROFILES_FILE=$(python -m "
                    "madis_ros.transport); measured: 90/90 4K rgb8 best-effort images delivered, 8/76 with "
                    "LARGE_DATA), or reliable QoS end to end (input_qos:=reliable and a reliable publisher), or "
                    "compressed images (input_transport:=compressed), or a smaller camera resolution")


def input_topics(transport: str) -> tuple:
    """The four input topics in ROLES order (image_transport's names for compressed images)."""
    suffix = "/compressed" if transport == "compressed" else ""
    return (f"left/image_rect{suffix}", f"right/image_rect{suffix}", "left/camera_info", "right/camera_info")


class StereoNode(Node):
    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        self.settings = declare_parameters(self)
        self._warn_unknown_overrides()
        s = self.settings
        self._log = RateLimitedLogger(self.get_logger(), s.warn_throttle_sec)
        self.estimator = load_estimator(s, self.get_logger())
        self.get_logger().info(f"model {self.estimator!r}; sync "
                               f"{'approximate (slop %g s)' % s.slop if s.approximate_sync else 'exact'} of both "
                               f"images and both camera_infos, queue {s.queue_size}; input {s.input_transport}, "
                               f"rectify {s.rectify}; input QoS {s.input_qos}, output QoS {s.output_qos}")
        self._warn_missing_capabilities()

        # --- outputs ------------------------------------------------------------------------
        oq = qos_profile(s.output_qos, depth=2)
        self._outputs: Dict[str, Any] = {}  # relative topic -> publisher of every enabled output

        def output(cls: Any, topic: str, enabled: bool) -> Any:
            if enabled:
                self._outputs[topic] = self.create_publisher(cls, topic, oq)
            return self._outputs.get(topic)
        self.pub_disparity = output(DisparityImage, "disparity", s.publish_disparity)
        self.pub_depth = output(Image, "depth", s.publish_depth)
        self.pub_points = output(PointCloud2, "points2", s.publish_points)
        self.pub_confidence = output(Image, "confidence", s.publish_confidence)
        self.pub_color = output(Image, "disparity/color", s.publish_color_disparity)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        # --- inputs (callbacks run only once the executor spins) ---------------------------------
        self.sync = FrameSync(self._on_frame, approximate=s.approximate_sync, slop=s.slop, queue_size=s.queue_size,
                              on_event=self._on_sync_event)
        self.in_topics = input_topics(s.input_transport)
        image_type = CompressedImage if s.input_transport == "compressed" else Image
        self.received: Counter = Counter()  # per input topic
        self._last_rx: Dict[str, float] = {}
        iq = qos_profile(s.input_qos)
        self._subs = [self.create_subscription(cls, topic, self._input_callback(i), iq)
                      for i, (cls, topic) in enumerate(zip((image_type, image_type, CameraInfo, CameraInfo),
                                                           self.in_topics))]

        # --- processing: plain Python, shared with madis-bag eval -----------------------------------
        self.frames = MessageFrameProcessor(StereoFrameProcessor(self.estimator, s.processing_settings()),
                                            topics={r: sub.topic_name for r, sub in zip(ROLES, self._subs)},
                                            rectify=s.rectify, frame_id=s.frame_id)
        self.frame_stats = FrameStats()
        self._t_start = time.monotonic()
        self._diag_prev = (self._t_start, 0, 0, Counter())
        self._sync_prev = (0, 0)
        # per-frame timing lines (benchmarks/node_latency.py): --ros-args --log-level madis_stereo:=debug
        self._log_frames = self.get_logger().is_enabled_for(rclpy.logging.LoggingSeverity.DEBUG)
        # online adaptation (adapt:=true): its own thread and network copy; weights come in between frames
        self.adaptation = start_online_adaptation(s, self.estimator, self.get_logger())
        self._adapted_net = self.estimator.backend.trainable_network() if self.adaptation else None
        self._adapt_end_logged = False
        self.worker = NewestPairWorker(self._process, DROP_REASONS, on_error=self._on_worker_error)

        # --- monitoring (steady clock: independent of use_sim_time) ----------------------------------
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._diag_timer = self.create_timer(s.diagnostics_period, self._publish_diagnostics, clock=steady)
        self._monitor_timer = self.create_timer(min(1.0, s.no_input_warn_sec / 2.0), self._monitor, clock=steady)

    # ------------------------------------------------------------------------------------------------
    def _warn_unknown_overrides(self) -> None:
        declared = set(self._parameters)
        overrides = getattr(self, "_parameter_overrides", {}) or {}  # rclpy keeps them private
        unknown = sorted(n for n in overrides if n not in declared and not n.startswith("qos_overrides."))
        if unknown:
            self.get_logger().warning(f"ignoring unknown parameter(s) {', '.join(unknown)} (typo?); "
                                      "see config/madis_stereo.yaml for the list")

    def _warn_missing_capabilities(self) -> None:
        s, meta, name = self.settings, self.estimator.meta, self.estimator.name
        if s.publish_confidence and not meta.has_confidence:
            self.get_logger().warning(f"model {name} has no confidence output; 'confidence' is not published")
        if s.confidence_threshold > 0 and not meta.has_confidence:
            self.get_logger().warning(f"confidence_threshold {s.confidence_threshold:g} has no effect: model "
                                      f"{name} has no confidence output")

    def _topic(self, i: int) -> str:
        return self._subs[i].topic_name

    # --- executor-thread callbacks: cheap, never block on inference ------------------------------------
    def _input_callback(self, i: int):
        topic, role = self.in_topics[i], ROLES[i]

        def callback(msg: Any) -> None:
            self.received[topic] += 1
            self._last_rx[topic] = time.monotonic()
            self.sync.add(role, msg)
        return callback

    def _on_frame(self, frame: StereoInput) -> None:
        self.worker.submit((frame, time.monotonic()))

    def _on_sync_event(self, kind: str, role: str, text: str) -> None:
        self._log.warn(f"{kind}_{role}", text)
        if kind == "stamp_backwards":
            self.frames.reset()

    # --- worker thread ---------------------------------------------------------------------------------
    def _on_worker_error(self, e: BaseException) -> None:
        self._log.warn("internal", f"unexpected error while processing a pair: {type(e).__name__}: {e}", "error")

    def _process(self, item) -> Optional[str]:
        f, t_rx = item
        left = f.left
        t_start = time.perf_counter()  # per-frame overhead: from here to the built messages, minus the forward
        want_points = self.pub_points is not None and self.pub_points.get_subscription_count() > 0
        if self.adaptation is not None:
            self.adaptation.sync_into(self._adapted_net)  # the newest adapted weights, if new ones exist
        try:
            done = self.frames.process(left, f.right, f.left_info, f.right_info, compute_points=want_points)
        except FrameDropped as d:
            self._log.warn(d.reason, f"dropping stereo pair ({d.reason}): {d.text}", d.level)
            return d.reason
        if self.adaptation is not None:
            self.adaptation.offer(*done.images)  # never blocks: the adapter takes the newest pair when due
        for key, text in done.notes:
            self._log.warn(key, text, "info" if key == "rectify" else "warning")
        res, s = done.result, self.settings
        header = left.header
        frame = s.frame_id or left.header.frame_id or f.left_info.header.frame_id
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
        if self.pub_confidence is not None and res.confidence is not None:
            out.append((self.pub_confidence, make_confidence_image(res.confidence, header)))
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
        self.frame_stats.add(t_done, inference, (t_done - t_rx) * 1e3, age, overhead, publish)
        if self._log_frames:
            self.get_logger().debug(f"frame stamp_ns={stamp_ns(left)} right_stamp_ns={stamp_ns(f.right)} "
                                    f"inference_ms={inference:.3f} "
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
        silent = [i for i, t in enumerate(self.in_topics)
                  if now - self._last_rx.get(t, self._t_start) > s.no_input_warn_sec]
        if silent:
            parts, published = [], False
            for i in silent:
                name = self._topic(i)
                pubs = self.get_publishers_info_by_topic(name)
                if not pubs:
                    parts.append(f"{name} (no publisher)")
                    continue
                published = True
                be = [p for p in pubs if p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT]
                hint = ""
                if be and s.input_qos != "sensor_data":
                    hint = ", best-effort publisher cannot reach this reliable subscription: use input_qos:=sensor_data"
                last = self._last_rx.get(self.in_topics[i])
                seen = "nothing received yet" if last is None else f"last message {now - last:.0f} s ago"
                parts.append(f"{name} ({len(pubs)} publisher(s), {seen}{hint})")
            self._log.warn("no_input", f"no input for {s.no_input_warn_sec:g} s on {'; '.join(parts)}; subscribed with "
                           f"QoS {describe_qos(s.input_qos)}. Check `ros2 topic info -v <topic>`"
                           + (f"; {LARGE_IMAGE_HINT}" if published else ""))
        self._monitor_sync()

    def _monitor_sync(self) -> None:
        """Inputs that arrive but never make a frame: the classic silent failures, named."""
        s, sync = self.settings, self.sync
        rx = (sync.received(LEFT) + sync.received(RIGHT), sync.sync.matched)
        prev, self._sync_prev = self._sync_prev, rx
        if rx[0] <= prev[0] or rx[1] > prev[1]:
            return  # no new images, or frames are being made
        problems = []
        for side, image, info in (("left", LEFT, LEFT_INFO), ("right", RIGHT, RIGHT_INFO)):
            if sync.received(image) and not sync.received(info):
                problems.append(f"images arrive on {self._topic(ROLES.index(image))} but no camera_info on "
                                f"{self._topic(ROLES.index(info))} (each image needs its camera_info with the same "
                                "stamp, as with stereo_image_proc)")
        limit_ms = s.slop * 1e3 if s.approximate_sync else 0.0
        for a, b, what in ((LEFT, RIGHT, "left and right stamps"), (LEFT, LEFT_INFO, "left image and camera_info stamps"),
                           (RIGHT, RIGHT_INFO, "right image and camera_info stamps")):
            off = sync.nearest_offset_ms(a, b)
            if off is not None and off > limit_ms:
                problems.append(f"{what} never match (nearest stamps {off:.1f} ms apart)")
        if problems:
            mode = f"approximate time sync (slop {s.slop:g} s)" if s.approximate_sync else \
                "exact time sync (approximate_sync=false)"
            offs = [sync.nearest_offset_ms(a, b) or 0.0 for a, b in ((LEFT, RIGHT), (LEFT, LEFT_INFO), (RIGHT, RIGHT_INFO))]
            self._log.warn("sync", f"{mode} is dropping every frame: {'; '.join(problems)}. If the cameras are not "
                           f"hardware-synchronised set approximate_sync:=true with slop >= "
                           f"{max(2 * max(offs), 1.0) / 1e3:.3f}")

    def stats(self) -> Dict[str, Any]:
        """Counters and latency figures (also what /diagnostics carries)."""
        now = time.monotonic()
        c = self.worker.counts()
        t0, pairs0, proc0, rx0 = self._diag_prev
        dt = max(now - t0, 1e-6)
        out = {"pairs_received": c["submitted"], "pairs_processed": c["processed"], "pairs_pending": c["pending"],
               "pairs_in_progress": c["in_progress"], "drops": c["drops"],
               "input_rate_hz": (c["submitted"] - pairs0) / dt, "output_rate_hz": (c["processed"] - proc0) / dt,
               "topic_rate_hz": {t: (self.received[t] - rx0[t]) / dt for t in self.in_topics},
               **self.frame_stats.summary(since=now - max(dt, 1.0))}
        self._diag_prev = (now, c["submitted"], c["processed"], Counter(self.received))
        out["sync_dropped"] = {r: self.sync.dropped(r) for r in ROLES}
        out["stamp_resets"] = self.sync.resets
        out["received"] = {t: self.received[t] for t in self.in_topics}
        out["rss_mb"] = rss_mb()
        # who listens, as this node's DDS participant has discovered them ("is anyone subscribed?")
        out["subscribers"] = {topic: pub.get_subscription_count() for topic, pub in self._outputs.items()}
        if self.adaptation is not None:
            out.update(self.adaptation.stats())
        return out

    def _publish_diagnostics(self) -> None:
        self._guarded("diagnostics", self._publish_diagnostics_now)

    def _publish_diagnostics_now(self) -> None:
        st = self.stats()
        if self.adaptation is not None and not st.get("adapt_running", True) and not self._adapt_end_logged:
            self._adapt_end_logged = True
            err = getattr(self.adaptation, "last_error", None)
            self.get_logger().error(f"online adaptation stopped unexpectedly{f' ({err})' if err else ''}; the node "
                                    "goes on with the last adapted weights")
        silent = st["input_rate_hz"] == 0 and time.monotonic() - self._t_start > self.settings.no_input_warn_sec
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [stereo_status(st, self.settings, self.estimator, self.get_fully_qualified_name(),
                                    self.sync.sync.backend, silent)]
        self.pub_diag.publish(arr)

    def _wait_outputs_acknowledged(self, limit_s: float) -> None:
        """The pair in flight is published, and the DDS participant is destroyed next: a
        reliable sample no reader has acknowledged yet (a large image still on its way in
        fragments) would be lost with it. Wait for the acknowledgments, ``limit_s`` in all; a
        reader that does not answer in time is logged, not waited for."""
        from rclpy.duration import Duration

        end = time.monotonic() + limit_s
        for topic, pub in self._outputs.items():
            if not pub.wait_for_all_acked(Duration(nanoseconds=int(max(0.0, end - time.monotonic()) * 1e9))):
                self.get_logger().warning(f"shutting down: not every subscriber of {topic} acknowledged the last "
                                          f"output within {limit_s:g} s")

    def shutdown(self) -> None:
        """Stop the worker after the pair in flight (its outputs are published), then the
        adaptation thread (after its step in progress), saving its weights with adapt_save_path."""
        self.worker.stop(timeout=10.0)
        self._wait_outputs_acknowledged(OUTPUT_ACK_LIMIT_S)
        if self.adaptation is not None:
            save_online_adaptation(self.adaptation, self.settings.adapt_save_path, self.get_logger())


#: at shutdown, how long the outputs of the pair in flight may wait for their subscribers' acknowledgments
OUTPUT_ACK_LIMIT_S = 0.5


def main(args=None) -> int:
    """Run the node until SIGINT/SIGTERM. The signals only set a flag: the executor stops at
    its next 0.1 s tick, the worker publishes the pair in flight (rclpy's own handler would
    invalidate the context under it), and ``madis_ros.shutdown.finish`` ends the process in
    bounded time with status 0."""
    import signal

    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    stop = process_signals.STOP  # already set if a signal came during the imports
    previous = process_signals.install()
    try:
        rclpy.init(args=args, signal_handler_options=rclpy.SignalHandlerOptions.NO)
    except RCLError as e:  # e.g. a -p value rcl's YAML parser refuses
        print(f"[FATAL] [{NODE_NAME}]: cannot start: {e}. A JSON value must be quoted twice, e.g. "
              f"-p \"model_options:='{{\\\"block_size\\\": 7}}'\"", file=sys.stderr)
        return 2
    if tune_malloc():
        rclpy.logging.get_logger(NODE_NAME).debug("glibc malloc tuned to reuse per-frame buffers (see tune_malloc)")
    node = None
    code = 0
    try:
        if stop.is_set():
            raise KeyboardInterrupt  # stopped during start-up: do not load the model
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
    process_signals.end_process(main())
