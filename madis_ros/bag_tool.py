"""``madis-bag``: rosbag2 tools for pip users who have no ``ros2 bag``.

    madis-bag info BAG                       topics, counts, recorded QoS, detected stereo topics
    madis-bag eval BAG --model NAME          offline: model on every synchronised pair, latency,
                                             metrics against ground truth, optional output bag
    madis-bag play BAG [--rate R] [--loop] [--clock] [--qos auto|reliable|sensor_data]
                                             replay over DDS with the recorded timing (needs rclpy)
    madis-bag record-sample OUT              the demo bag: Middlebury Motorcycle + synthetic frames

``info``, ``eval`` and ``record-sample`` use the ``rosbags`` library only (no rclpy, no
ROS install); ``play`` imports rclpy. Bags are rosbag2 folders (or single .mcap/.db3
files) in mcap or sqlite3 storage.

Exit status: 0 success, 1 nothing could be processed/played, 2 bad arguments or a bag
that cannot be read (the message says why).
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from madis_ros import bag_io
from madis_ros.bag_io import BagError

#: header stamp of the first sample frame (fixed, so the sample bag is reproducible)
SAMPLE_START_NS = 1_700_000_000_000_000_000
SAMPLE_NAMESPACE = "/stereo"
SAMPLE_LEFT_FRAME = "stereo_left_optical_frame"
SAMPLE_RIGHT_FRAME = "stereo_right_optical_frame"
LATENCY_PERCENTILES = (50, 90, 95, 99)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _warn(msg: str) -> None:
    print(f"madis-bag: warning: {msg}", file=sys.stderr, flush=True)


def latency_summary(values_ms: Sequence[float]) -> Dict[str, float]:
    """mean, p50/p90/p95/p99 and max of a list of latencies (ms); empty -> {}."""
    v = np.asarray([x for x in values_ms if np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {}
    out = {"n": int(v.size), "mean": float(v.mean())}
    for p in LATENCY_PERCENTILES:
        out[f"p{p}"] = float(np.percentile(v, p))
    out["max"] = float(v.max())
    return out


def format_latency(s: Dict[str, float]) -> str:
    if not s:
        return "n/a"
    return "  ".join(f"{k} {s[k]:.1f}" for k in ("mean", "p50", "p90", "p95", "p99", "max"))


def format_metrics(m: Dict[str, float]) -> str:
    return (f"EPE {m['epe']:.3f} px  bad-0.5 {m['bad_0.5']:.2f} %  bad-1 {m['bad_1']:.2f} %  bad-2 {m['bad_2']:.2f} %  "
            f"bad-3 {m['bad_3']:.2f} %  bad-4 {m['bad_4']:.2f} %  D1 {m['d1']:.2f} %  density {m['density']:.2f} %")


# ======================================================================================
# info
# ======================================================================================
def cmd_info(args: argparse.Namespace) -> int:
    with bag_io.BagReader(args.bag) as bag:
        topics = bag.topics
        _log(f"bag: {args.bag} ({bag.storage}, {len(topics)} topics, {bag.duration_ns / 1e9:.2f} s)")
        for t in sorted(topics):
            i = topics[t]
            _log(f"  {t:<45} {i.msgtype:<34} {i.count:>6}  qos={i.reliability or '?'}")
        try:
            st = bag_io.detect_stereo_topics(topics)
            _log(f"stereo topics: left={st.left} right={st.right} left_info={st.left_info} "
                 f"right_info={st.right_info} gt={st.gt or '-'}")
        except BagError as exc:
            _log(f"stereo topics: not detected ({exc})")
    return 0


# ======================================================================================
# eval
# ======================================================================================
def node_settings(model: Optional[str] = None, device: Optional[str] = None, precision: Optional[str] = None,
                  params_file: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None):
    """The node's validated settings (madis_ros.params) from an optional ROS params file and
    command-line overrides, so ``eval`` runs exactly what the node would run."""
    from madis_ros.params import settings_from_dict

    values: Dict[str, Any] = {}
    if params_file:
        values.update(read_params_file(params_file))
    for k, v in (("model", model), ("device", device), ("precision", precision)):
        if v is not None:
            values[k] = v
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return settings_from_dict(values)


def read_params_file(path: str) -> Dict[str, Any]:
    """The ``ros__parameters`` of a ROS 2 params YAML (first node entry, e.g. madis_stereo_node or /**)."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BagError(f"cannot read params file {path}: {exc}") from exc
    stack = [doc]
    while stack:
        d = stack.pop(0)
        if isinstance(d, dict):
            if isinstance(d.get("ros__parameters"), dict):
                return dict(d["ros__parameters"])
            stack.extend(d.values())
    raise BagError(f"{path} has no 'ros__parameters' section")


def build_estimator(settings: Any):
    """StereoEstimator for node settings, as the node builds it."""
    from madis_core.estimator import StereoEstimator

    return StereoEstimator.from_pretrained(settings.model, device=settings.device, precision=settings.precision,
                                           runtime=settings.runtime, **settings.backend_options())


def evaluate_bag(bag_path: str, estimator: Any, settings: Any = None, left: Optional[str] = None,
                 right: Optional[str] = None, left_info: Optional[str] = None, right_info: Optional[str] = None,
                 gt: Optional[str] = None, gt_kind: str = "auto", slop: float = 0.0, max_frames: int = 0,
                 output_bag: Optional[str] = None, output_storage: Optional[str] = None,
                 output_ns: Optional[str] = None, overwrite: bool = False, verbose: bool = True) -> Dict[str, Any]:
    """Run ``estimator`` over every synchronised pair of a bag (see module doc); returns the
    summary dict that ``madis-bag eval --json`` writes. Raises BagError for unreadable bags."""
    from madis_core.metrics import aggregate_metrics, compute_metrics
    from madis_ros.processing import ProcessingSettings, StereoFrameProcessor

    proc = StereoFrameProcessor(estimator, settings or ProcessingSettings())
    per_frame: List[Dict[str, Any]] = []
    frame_metrics: List[Dict[str, float]] = []
    errors: Dict[str, int] = {}
    warned = 0
    writer = None
    with bag_io.BagReader(bag_path) as bag:
        topics_info = bag.topics
        st = bag_io.detect_stereo_topics(topics_info, left, right, left_info, right_info, gt)
        if verbose:
            _log(f"bag: {bag_path} ({bag.storage}); left={st.left} right={st.right} "
                 f"camera_info={st.left_info},{st.right_info} ground truth={st.gt or 'none'}")
        out_topics = {}
        if output_bag:
            ns = bag_io.output_namespace(st.left) if output_ns is None else output_ns.rstrip("/")
            out_topics = {k: f"{ns}/{k}" for k in ("disparity", "depth", "points2")}
            clash = [t for t in out_topics.values() if t in topics_info]
            if clash:
                raise BagError(f"the input bag already has {clash}; choose another --output-ns")
            writer = bag_io.BagWriter(output_bag, storage=output_storage or (bag.storage if bag.storage in
                                      bag_io.STORAGES else "mcap"), overwrite=overwrite)
            writer.__enter__()
            for conn in bag.connections:
                writer.copy_topic(conn)
            for key, msgtype in (("disparity", bag_io.DISPARITY), ("depth", bag_io.IMAGE),
                                 ("points2", bag_io.POINTCLOUD2)):
                writer.add_topic(out_topics[key], msgtype)

        def copy(conn: Any, log_ns: int, raw: bytes) -> None:
            writer.write_raw(conn.topic, raw, log_ns)

        frames, stats = bag_io.iter_stereo_frames(bag, st, slop=slop, on_message=copy if writer else None)
        try:
            for frame in frames:
                if max_frames and len(per_frame) >= max_frames:
                    break
                try:
                    left_img = bag_io.image_to_estimator_input(frame.left)
                    right_img = bag_io.image_to_estimator_input(frame.right)
                    camera = bag_io.camera_from_infos(frame.left_info, frame.right_info,
                                                      (left_img.shape[1], left_img.shape[0]))
                    res = proc.process(left_img, right_img, camera)
                except Exception as exc:  # bad message, camera_info or a model error: drop, count, go on
                    reason = type(exc).__name__
                    errors[reason] = errors.get(reason, 0) + 1
                    if warned < 5:
                        _warn(f"frame at stamp {frame.stamp_ns} dropped: {exc}")
                        warned += 1
                    continue
                rec: Dict[str, Any] = {"stamp_ns": frame.stamp_ns,
                                       "latency_ms": round(res.timings_ms["total"], 3),
                                       "inference_ms": round(res.timings_ms["inference"], 3)}
                if frame.gt is not None:
                    gt_disp, kind = bag_io.ground_truth_disparity(frame.gt, st.gt, res.camera, gt_kind)
                    if gt_disp.shape != res.disparity.shape:
                        raise BagError(f"ground truth on {st.gt} is {gt_disp.shape[1]}x{gt_disp.shape[0]} but the "
                                       f"prediction is {res.disparity.shape[1]}x{res.disparity.shape[0]}")
                    m = compute_metrics(res.disparity, gt_disp)
                    frame_metrics.append(m)
                    rec["metrics"] = {k: round(v, 4) for k, v in m.items()}
                    rec["gt_kind"] = kind
                per_frame.append(rec)
                if writer:
                    fid = frame.left.header.frame_id
                    writer.write(out_topics["disparity"], bag_io.disparity_msg(
                        res.disparity, res.camera, frame.stamp_ns, fid, res.min_disparity, res.max_disparity,
                        res.delta_d), frame.log_ns)
                    if res.depth is not None:
                        writer.write(out_topics["depth"], bag_io.depth_msg(res.depth, frame.stamp_ns, fid),
                                     frame.log_ns)
                    if res.points is not None:
                        writer.write(out_topics["points2"], bag_io.pointcloud2_msg(
                            res.points, frame.stamp_ns, fid, res.colors), frame.log_ns)
        finally:
            if writer:
                writer.__exit__(None, None, None)

    summary: Dict[str, Any] = {
        "bag": str(bag_path), "model": getattr(estimator, "name", "?"), "device": getattr(estimator, "device", "?"),
        "threads": getattr(getattr(estimator, "threads", None), "mode", None),
        "topics": {"left": st.left, "right": st.right, "left_info": st.left_info, "right_info": st.right_info,
                   "gt": st.gt},
        "frames": {"left_in": stats.left_in, "right_in": stats.right_in, "pairs": stats.pairs,
                   "processed": len(per_frame), "dropped_unpaired_left": stats.dropped_left,
                   "dropped_unpaired_right": stats.dropped_right, "dropped_no_camera_info": stats.no_camera_info,
                   "dropped_errors": errors},
        "latency_ms": latency_summary([r["latency_ms"] for r in per_frame]),
        "inference_ms": latency_summary([r["inference_ms"] for r in per_frame]),
        "metrics": aggregate_metrics(frame_metrics) if frame_metrics else None,
        "metrics_frames": len(frame_metrics),
        "per_frame": per_frame,
    }
    if output_bag:
        summary["output_bag"] = {"path": str(output_bag), "topics": out_topics}
    return summary


def print_eval_summary(s: Dict[str, Any]) -> None:
    f = s["frames"]
    _log(f"model: {s['model']} (device {s['device']})")
    _log(f"frames in: left {f['left_in']}, right {f['right_in']}; pairs {f['pairs']}; out (processed) "
         f"{f['processed']}; dropped: unpaired left {f['dropped_unpaired_left']}, unpaired right "
         f"{f['dropped_unpaired_right']}, no camera_info {f['dropped_no_camera_info']}, errors "
         f"{sum(f['dropped_errors'].values())}")
    _log(f"latency per frame, ms (pre/post-processing + model): {format_latency(s['latency_ms'])}")
    _log(f"model inference, ms:                                 {format_latency(s['inference_ms'])}")
    if s["metrics"]:
        _log(f"metrics vs ground truth ({s['metrics_frames']} frames, pixel-weighted): {format_metrics(s['metrics'])}")
    else:
        _log("metrics: the bag has no ground truth (give --gt-topic for a DisparityImage, a 32FC1 disparity "
             "or a depth image)")
    if s.get("output_bag"):
        _log(f"output bag: {s['output_bag']['path']} (+ {', '.join(s['output_bag']['topics'].values())})")


def cmd_eval(args: argparse.Namespace) -> int:
    settings = node_settings(args.model, args.device, args.precision, args.params_file,
                             {"inference_scale": args.inference_scale, "max_disparity": args.max_disparity,
                              "threads": args.threads})
    estimator = build_estimator(settings)
    summary = evaluate_bag(args.bag, estimator, settings.processing_settings(), args.left_topic, args.right_topic,
                           args.left_info_topic,
                           args.right_info_topic, args.gt_topic, args.gt_kind, args.slop, args.max_frames,
                           args.output_bag, args.output_storage, args.output_ns, args.overwrite)
    print_eval_summary(summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if summary["frames"]["processed"] == 0:
        print("madis-bag: error: no stereo pair could be processed (see the counts above)", file=sys.stderr)
        return 1
    return 0


# ======================================================================================
# record-sample
# ======================================================================================
def _to_uint8(chw: Any) -> np.ndarray:
    a = np.asarray(chw.detach().cpu().numpy() if hasattr(chw, "detach") else chw, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)


def sample_frames(synthetic_frames: int = 3, seed: int = 0, synthetic_max_disparity: float = 64.0):
    """The demo's frames: (name, left, right, gt disparity, camera); synthetic first, Motorcycle last.

    Motorcycle: skimage's 4x-downscaled Middlebury 2014 pair with the published
    calibration divided by 4 (f 994.978 px, cx 311.193, cy 254.877, doffs 31.086 px,
    baseline 0.193001 m) as madis_core.data.load_motorcycle provides it. Synthetic
    frames come from madis_core.data.SyntheticStereoGenerator at the same image size
    and use the same camera, so the stream looks like one camera. Motorcycle comes last
    so that a replay whose first frames race DDS discovery still delivers it."""
    from madis_core.data import SyntheticStereoGenerator, load_motorcycle

    moto = load_motorcycle()
    cam = moto["camera"]
    frames = []
    if synthetic_frames > 0:
        gen = SyntheticStereoGenerator(height=cam.height, width=cam.width, max_disparity=synthetic_max_disparity,
                                       seed=seed)
        batch = gen.generate(synthetic_frames)
        for i in range(synthetic_frames):
            d = np.asarray(_as_numpy(batch["disparity"][i])[0], dtype=np.float32)
            frames.append((f"synthetic_{i}", _to_uint8(batch["left"][i]), _to_uint8(batch["right"][i]), d, cam))
    frames.append(("motorcycle", moto["left"], moto["right"], np.asarray(moto["disparity"], dtype=np.float32), cam))
    return frames


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def write_sample_bag(out: str | Path, synthetic_frames: int = 3, storage: str = "mcap", rate_hz: float = 2.0,
                     reliability: str = "reliable", namespace: str = SAMPLE_NAMESPACE,
                     start_ns: int = SAMPLE_START_NS, overwrite: bool = False, seed: int = 0) -> List[Dict[str, Any]]:
    """Write the demo bag; returns one dict per frame (name, stamp_ns, size).

    Topics (namespace /stereo by default): left|right/image_rect (rgb8), left|right/
    camera_info, ground_truth/disparity (DisparityImage, invalid below min_disparity).
    Every message's log time equals its header stamp; frames are 1/rate_hz apart.
    ``reliability`` is the offered QoS recorded in the metadata (what `ros2 bag play`
    and `madis-bag play --qos auto` replay with)."""
    if rate_hz <= 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate_hz}")
    ns_ = namespace.rstrip("/")
    t_left, t_right = f"{ns_}/left/image_rect", f"{ns_}/right/image_rect"
    t_li, t_ri = f"{ns_}/left/camera_info", f"{ns_}/right/camera_info"
    t_gt = f"{ns_}/ground_truth/disparity"
    manifest = []
    with bag_io.BagWriter(out, storage=storage, overwrite=overwrite) as w:
        for t, ty in ((t_li, bag_io.CAMERA_INFO), (t_ri, bag_io.CAMERA_INFO), (t_left, bag_io.IMAGE),
                      (t_right, bag_io.IMAGE), (t_gt, bag_io.DISPARITY)):
            w.add_topic(t, ty, reliability=reliability)
        for i, (name, left, right, gt, cam) in enumerate(sample_frames(synthetic_frames, seed)):
            stamp = int(start_ns + round(i * 1e9 / rate_hz))
            li, ri = bag_io.camera_info_msgs(cam, stamp, SAMPLE_LEFT_FRAME, SAMPLE_RIGHT_FRAME)
            w.write(t_li, li, stamp)
            w.write(t_ri, ri, stamp)
            w.write(t_left, bag_io.image_msg(left, stamp, SAMPLE_LEFT_FRAME, "rgb8"), stamp)
            w.write(t_right, bag_io.image_msg(right, stamp, SAMPLE_RIGHT_FRAME, "rgb8"), stamp)
            w.write(t_gt, bag_io.disparity_msg(gt, cam, stamp, SAMPLE_LEFT_FRAME, 0.0,
                                               float(np.nanmax(gt)) if np.isfinite(gt).any() else 0.0, 1.0 / 256),
                    stamp)
            manifest.append({"name": name, "stamp_ns": stamp, "width": int(left.shape[1]),
                             "height": int(left.shape[0])})
    return manifest


def cmd_record_sample(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    manifest = write_sample_bag(args.out, args.synthetic_frames, args.storage, args.rate, args.qos,
                                args.namespace, overwrite=args.overwrite, seed=args.seed)
    _log(f"wrote {args.out} ({args.storage}, {len(manifest)} frames at {args.rate:g} Hz, recorded QoS {args.qos}) "
         f"in {time.perf_counter() - t0:.1f} s:")
    for m in manifest:
        _log(f"  {m['stamp_ns']}  {m['name']} ({m['width']}x{m['height']})")
    return 0


# ======================================================================================
# play (rclpy)
# ======================================================================================
def _rclpy_msg_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image (None when the package is not installed)."""
    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError):
        return None


def _qos_profile(mode: str, recorded: Optional[str], depth: int = 10):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    rel = {"reliable": "reliable", "sensor_data": "best_effort", "auto": recorded or "reliable"}[mode]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth if rel == "reliable" else 5,
                      reliability=ReliabilityPolicy.RELIABLE if rel == "reliable" else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


class _Stop(Exception):
    pass


def play_bag(path: str, rate: float = 1.0, loop: bool = False, clock: bool = False, clock_hz: float = 40.0,
             qos: str = "auto", topics: Optional[Sequence[str]] = None, remap: Optional[Dict[str, str]] = None,
             wait_for_subscribers: float = 0.0, delay: float = 0.0, ros_args: Optional[List[str]] = None,
             verbose: bool = True) -> int:
    """Publish a bag's messages with their recorded timing (scaled by 1/rate); returns how
    many were published. Header stamps are not touched; with ``clock`` /clock carries the
    bag time (for nodes with use_sim_time), at ``clock_hz`` and at every new message time.
    ``wait_for_subscribers`` (s) waits until every camera topic (Image and CameraInfo, ground
    truth excluded) has a subscriber: each topic is discovered on its own, and a frame sent
    before its camera_info subscription matched would reach the node without calibration."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    if rate <= 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    remap = remap or {}
    with bag_io.BagReader(path) as bag:
        info = bag.topics
        wanted = list(topics) if topics else sorted(info)
        missing = [t for t in wanted if t not in info]
        if missing:
            raise BagError(f"topics {missing} are not in the bag; it has {sorted(info)}")
        context = rclpy.Context()
        rclpy.init(args=["--ros-args", *ros_args] if ros_args else None, context=context)
        node = rclpy.create_node("madis_bag_player", context=context)
        try:
            pubs: Dict[str, Any] = {}
            for t in wanted:
                cls = _rclpy_msg_class(info[t].msgtype)
                if cls is None:
                    _warn(f"skipping {t}: message type {info[t].msgtype} is not installed for rclpy")
                    continue
                prof = _qos_profile(qos, info[t].reliability)
                pubs[t] = node.create_publisher(cls, remap.get(t, t), prof)
            if not pubs:
                raise BagError("no topic of the bag can be published (message packages missing)")
            clock_pub = None
            if clock:
                from rosgraph_msgs.msg import Clock

                clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=1,
                                                  reliability=ReliabilityPolicy.BEST_EFFORT))
            if verbose:
                _log(f"playing {path}: {len(pubs)} topics, rate {rate:g}, qos {qos}"
                     + (f" (recorded: {', '.join(sorted({info[t].reliability or '?' for t in pubs}))})" if qos == "auto" else "")
                     + (", publishing /clock" if clock else ""))
            camera = [t for t in pubs if info[t].msgtype in (bag_io.IMAGE, bag_io.CAMERA_INFO)
                      and not bag_io.is_ground_truth_topic(t)] or list(pubs)
            if wait_for_subscribers > 0:
                deadline = time.monotonic() + wait_for_subscribers
                while any(pubs[t].get_subscription_count() == 0 for t in camera):
                    if time.monotonic() > deadline:
                        lonely = [remap.get(t, t) for t in camera if pubs[t].get_subscription_count() == 0]
                        _warn(f"no subscriber on {lonely} after {wait_for_subscribers:g} s; playing anyway")
                        break
                    time.sleep(0.05)
                else:
                    # Discovery completes on each side on its own: the subscriber may not know this
                    # publisher yet although we see it. Give it a moment before the first frame.
                    time.sleep(1.0)
            if delay > 0:
                time.sleep(delay)
            return _play_loop(bag, pubs, clock_pub, rate, loop, clock_hz, verbose)
        finally:
            node.destroy_node()
            rclpy.try_shutdown(context=context)


def _play_loop(bag: bag_io.BagReader, pubs: Dict[str, Any], clock_pub: Any, rate: float, loop: bool,
               clock_hz: float, verbose: bool, ack_timeout: float = 10.0) -> int:
    from rosgraph_msgs.msg import Clock

    def send_clock(ns: int) -> None:
        m = Clock()
        m.clock.sec, m.clock.nanosec = int(ns // 1_000_000_000), int(ns % 1_000_000_000)
        clock_pub.publish(m)

    period = 1.0 / clock_hz if clock_hz > 0 else float("inf")
    published = 0
    t_wall0 = time.monotonic()
    start_wall = t_wall0
    while True:
        bag_start = None
        last_clock_ns = None
        times: set = set()
        next_tick = start_wall
        for conn, log_ns, raw in bag.messages(list(pubs)):
            times.add(log_ns)
            if bag_start is None:
                bag_start = log_ns
            target = start_wall + (log_ns - bag_start) / 1e9 / rate
            while True:
                now = time.monotonic()
                if clock_pub is not None and now >= next_tick:
                    send_clock(bag_start + int(min(now - start_wall, (target - start_wall)) * rate * 1e9))
                    next_tick = now + period
                if now >= target:
                    break
                time.sleep(max(0.0, min(target, next_tick if clock_pub is not None else target) - now))
            if clock_pub is not None and log_ns != last_clock_ns:
                send_clock(log_ns)  # sim time == this message's bag time when it goes out
                last_clock_ns = log_ns
            pubs[conn.topic].publish(bytes(raw))
            published += 1
        if not loop or bag_start is None:
            break
        # Next pass one mean message interval (1 s for a single-instant bag) after the last
        # message, as if the recording went on: starting at once would make the first frame
        # supersede the last one in a node, and a one-frame bag would be sent in a busy loop.
        span = (max(times) - bag_start) / 1e9 / rate
        end_wall = start_wall + span
        start_wall = end_wall + (span / (len(times) - 1) if len(times) > 1 else 1.0 / rate)
        while time.monotonic() < start_wall:
            if clock_pub is not None:  # bag time runs on past the end, then jumps back
                send_clock(max(times) + int(max(0.0, time.monotonic() - end_wall) * rate * 1e9))
            time.sleep(min(period, max(0.0, start_wall - time.monotonic())))
    # Reliable messages a late-discovering subscriber has not acknowledged yet would be lost
    # when this process exits: wait for the acknowledgements (best-effort publishers return at once).
    from rclpy.duration import Duration

    unacked = [t for t, pub in pubs.items() if not pub.wait_for_all_acked(Duration(seconds=ack_timeout))]
    if unacked:
        _warn(f"subscribers did not acknowledge everything on {unacked} within {ack_timeout:g} s")
    if verbose:
        _log(f"published {published} messages in {time.monotonic() - t_wall0:.2f} s")
    return published


def cmd_play(args: argparse.Namespace) -> int:
    remap = {}
    for r in args.remap or []:
        if ":=" not in r:
            raise BagError(f"--remap takes FROM:=TO, got {r!r}")
        a, b = r.split(":=", 1)
        remap[a] = b

    def on_term(signum, frame):  # the demo and users stop the player with SIGTERM/SIGINT
        raise _Stop()

    signal.signal(signal.SIGTERM, on_term)
    try:
        n = play_bag(args.bag, args.rate, args.loop, args.clock, args.clock_hz, args.qos, args.topics, remap,
                     args.wait_for_subscribers, args.delay, args.ros_args)
    except (_Stop, KeyboardInterrupt):
        _log("playback stopped")
        return 0
    return 0 if n > 0 else 1


# ======================================================================================
# CLI
# ======================================================================================
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="madis-bag", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="topics, counts, recorded QoS and detected stereo topics")
    s.add_argument("bag")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("eval", help="offline: run a model on every synchronised pair of a bag")
    s.add_argument("bag", help="rosbag2 folder (mcap or sqlite3) or a single .mcap/.db3 file")
    s.add_argument("--model", default=None, help="sgbm, a registry model or a weights file "
                   "(default: the node's default model)")
    s.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default: the node's, auto)")
    s.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    s.add_argument("--params-file", help="the node's ROS params YAML (e.g. config/madis_stereo.yaml): evaluate "
                   "with the node's exact settings; the options here override it")
    s.add_argument("--left-topic")
    s.add_argument("--right-topic")
    s.add_argument("--left-info-topic")
    s.add_argument("--right-info-topic")
    s.add_argument("--gt-topic", help="ground truth: DisparityImage, 32FC1 disparity or depth (m), 16UC1 depth (mm)")
    s.add_argument("--gt-kind", default="auto", choices=["auto", "disparity", "depth"],
                   help="what a ground-truth Image holds (auto: 16UC1 or 'depth' in the topic name = depth)")
    s.add_argument("--slop", type=float, default=0.0, help="approximate pairing tolerance in s (0 = exact stamps)")
    s.add_argument("--inference-scale", type=float, default=None, help="resize factor before the model (node parameter)")
    s.add_argument("--max-disparity", type=float, default=None, help="node parameter max_disparity (0 = model range)")
    s.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = all)")
    s.add_argument("--threads", type=int, default=None, help="CPU inference threads (node parameter threads; "
                   "default auto: affinity and cgroup quota, adapted to the load)")
    s.add_argument("--output-bag", help="write a copy of the bag with disparity/depth/points2 added")
    s.add_argument("--output-storage", choices=bag_io.STORAGES, help="storage of the output bag (default: the input's)")
    s.add_argument("--output-ns", help="namespace of the added topics (default: the left topic's, e.g. /stereo)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    s.add_argument("--json", help="write the summary (counts, latency percentiles, metrics, per frame) here")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("play", help="replay a bag over DDS with its recorded timing (needs rclpy)")
    s.add_argument("bag")
    s.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    s.add_argument("--loop", action="store_true", help="start over at the end")
    s.add_argument("--clock", action="store_true", help="publish /clock (bag time) for use_sim_time nodes")
    s.add_argument("--clock-hz", type=float, default=40.0, help="/clock rate between messages")
    s.add_argument("--qos", default="auto", choices=["auto", "reliable", "sensor_data"],
                   help="publisher reliability: auto = as recorded (best effort stays best effort), reliable, "
                        "or sensor_data (best effort)")
    s.add_argument("--topics", nargs="+", help="play only these topics")
    s.add_argument("--remap", nargs="+", metavar="FROM:=TO", help="publish a topic under another name")
    s.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds until every Image/CameraInfo topic (ground truth excluded) "
                        "has a subscriber")
    s.add_argument("--delay", type=float, default=0.0, help="sleep this long before playing (s)")
    s.add_argument("--ros-args", nargs=argparse.REMAINDER, default=None, help="passed to rclpy (e.g. -r __ns:=/x)")
    s.set_defaults(func=cmd_play)

    s = sub.add_parser("record-sample", help="write the demo bag (Motorcycle + synthetic frames, with ground truth)")
    s.add_argument("out", help="output bag folder")
    s.add_argument("--synthetic-frames", type=int, default=3)
    s.add_argument("--storage", default="mcap", choices=bag_io.STORAGES)
    s.add_argument("--rate", type=float, default=2.0, help="frames per second of bag time")
    s.add_argument("--qos", default="reliable", choices=["reliable", "best_effort"], help="recorded offered QoS")
    s.add_argument("--namespace", default=SAMPLE_NAMESPACE)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_record_sample)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BagError as exc:
        print(f"madis-bag: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:  # bad parameters, model files, devices
        print(f"madis-bag: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
