"""``madis-bag eval BAG``: the node's processing run offline over every frame of a bag.

What the node would do, with rosbags alone (no rclpy): the node's parameters (its params
file and the options here), its synchroniser and calibration cache (``bag.frames``), its
per-frame processing and drop reasons (``stereo_frames``), its message builders for the
optional output bag (``messages`` with the rosbags kit). Prints frames in/out, drops by
reason, latency percentiles and, when the bag has ground truth, the metrics of
``madis evaluate``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from madis_core.metrics import aggregate_metrics, compute_metrics
from madis_core.pipeline import StereoFrameProcessor
from madis_ros.bag.files import DISPARITY, IMAGE, POINTCLOUD2, STORAGES, BagError, BagReader, BagWriter
from madis_ros.bag.frames import iter_stereo_frames
from madis_ros.bag.topics import detect_stereo_topics, ground_truth_disparity, output_namespace
from madis_ros.frame_sync import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO
from madis_ros.messages import make_depth_image, make_disparity_image, make_pointcloud2
from madis_ros.msgkit import ROSBAGS, stamp_ns
from madis_ros.params import NodeSettings, settings_from_dict
from madis_ros.stereo_frames import FrameDropped, MessageFrameProcessor

LATENCY_PERCENTILES = (50, 90, 95, 99)


@dataclass
class TopicChoice:
    """Topics given on the command line (None: detected) and what a ground-truth Image holds."""
    left: Optional[str] = None
    right: Optional[str] = None
    left_info: Optional[str] = None
    right_info: Optional[str] = None
    gt: Optional[str] = None
    gt_kind: str = "auto"


@dataclass
class OutputBag:
    """Where to write a copy of the bag with disparity, depth and points2 added."""
    path: str
    storage: Optional[str] = None      # default: the input's
    namespace: Optional[str] = None    # default: the left topic's (e.g. /stereo)
    overwrite: bool = False


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


def node_settings(params_file: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> NodeSettings:
    """The node's validated settings from an optional ROS params file and overrides (None = not given)."""
    values: Dict[str, Any] = read_params_file(params_file) if params_file else {}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return settings_from_dict(values)


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


def _format_latency(s: Dict[str, float]) -> str:
    return "  ".join(f"{k} {s[k]:.1f}" for k in ("mean", "p50", "p90", "p95", "p99", "max")) if s else "n/a"


def _format_metrics(m: Dict[str, float]) -> str:
    return (f"EPE {m['epe']:.3f} px  bad-0.5 {m['bad_0.5']:.2f} %  bad-1 {m['bad_1']:.2f} %  bad-2 {m['bad_2']:.2f} %  "
            f"bad-3 {m['bad_3']:.2f} %  bad-4 {m['bad_4']:.2f} %  D1 {m['d1']:.2f} %  density {m['density']:.2f} %")


class _Output:
    """The output bag: every input message copied, the node's outputs added."""

    def __init__(self, out: OutputBag, bag: BagReader, left_topic: str, depth_encoding: str):
        ns = output_namespace(left_topic) if out.namespace is None else out.namespace.rstrip("/")
        self.topics = {k: f"{ns}/{k}" for k in ("disparity", "depth", "points2")}
        clash = [t for t in self.topics.values() if t in bag.topics]
        if clash:
            raise BagError(f"the input bag already has {clash}; choose another --output-ns")
        storage = out.storage or (bag.storage if bag.storage in STORAGES else "mcap")
        self.writer = BagWriter(out.path, storage=storage, overwrite=out.overwrite).__enter__()
        for conn in bag.connections:
            self.writer.copy_topic(conn)
        for key, msgtype in (("disparity", DISPARITY), ("depth", IMAGE), ("points2", POINTCLOUD2)):
            self.writer.add_topic(self.topics[key], msgtype)
        self.depth_encoding = depth_encoding

    def copy(self, conn: Any, log_ns: int, raw: bytes) -> None:
        self.writer.write_raw(conn.topic, raw, log_ns)

    def write(self, res: Any, header: Any, log_ns: int) -> None:
        w, t = self.writer, self.topics
        w.write(t["disparity"], make_disparity_image(res.disparity, res.camera, header, res.min_disparity,
                                                     res.max_disparity, res.delta_d, kit=ROSBAGS), log_ns)
        if res.depth is not None:
            w.write(t["depth"], make_depth_image(res.depth, header, self.depth_encoding, kit=ROSBAGS), log_ns)
        if res.points is not None:
            w.write(t["points2"], make_pointcloud2(res.points, header, res.colors, kit=ROSBAGS), log_ns)

    def close(self) -> None:
        self.writer.__exit__(None, None, None)


def evaluate_bag(bag_path: str, estimator: Any, settings: NodeSettings, topics: Optional[TopicChoice] = None,
                 max_frames: int = 0, output: Optional[OutputBag] = None, verbose: bool = True) -> Dict[str, Any]:
    """Run ``estimator`` with the node's ``settings`` over every synchronised frame of a bag; returns
    the summary that ``madis-bag eval --json`` writes. Raises BagError for unreadable bags."""
    tc = topics or TopicChoice()
    per_frame: List[Dict[str, Any]] = []
    frame_metrics: List[Dict[str, float]] = []
    drops: Counter = Counter()
    with BagReader(bag_path) as bag:
        st = detect_stereo_topics(bag.topics, tc.left, tc.right, tc.left_info, tc.right_info, tc.gt)
        if verbose:
            print(f"bag: {bag_path} ({bag.storage}); left={st.left} right={st.right} "
                  f"camera_info={st.left_info},{st.right_info} ground truth={st.gt or 'none'}", flush=True)
        frames_proc = MessageFrameProcessor(StereoFrameProcessor(estimator, settings.processing_settings()),
                                            {LEFT: st.left, RIGHT: st.right, LEFT_INFO: st.left_info,
                                             RIGHT_INFO: st.right_info}, settings.rectify, settings.frame_id)
        out = _Output(output, bag, st.left, settings.depth_encoding) if output else None
        warnings = _Warnings()

        def on_event(kind: str, role: str, text: str) -> None:
            warnings.say(kind, text)
            if kind == "stamp_backwards":
                frames_proc.reset()

        frames, stats = iter_stereo_frames(bag, st, approximate=settings.approximate_sync, slop=settings.slop,
                                           queue_size=settings.queue_size, on_message=out.copy if out else None,
                                           on_event=on_event)
        try:
            for frame in frames:
                if max_frames and len(per_frame) >= max_frames:
                    break
                try:
                    done = frames_proc.process(frame.left, frame.right, frame.left_info, frame.right_info)
                except FrameDropped as d:  # bad message, calibration or a model error: counted, go on
                    drops[d.reason] += 1
                    warnings.say(d.reason, f"frame at stamp {frame.stamp_ns} dropped ({d.reason}): {d.text}")
                    continue
                for key, text in done.notes:
                    warnings.say(key, text)
                res = done.result
                rec: Dict[str, Any] = {"stamp_ns": frame.stamp_ns, "left_stamp_ns": frame.stamp_ns,
                                       "right_stamp_ns": stamp_ns(frame.right),
                                       "latency_ms": round(res.timings_ms["total"], 3),
                                       "inference_ms": round(res.timings_ms["inference"], 3)}
                if frame.gt is not None:
                    gt_disp, kind = ground_truth_disparity(frame.gt, st.gt, res.camera, tc.gt_kind)
                    if gt_disp.shape != res.disparity.shape:
                        raise BagError(f"ground truth on {st.gt} is {gt_disp.shape[1]}x{gt_disp.shape[0]} but the "
                                       f"prediction is {res.disparity.shape[1]}x{res.disparity.shape[0]}")
                    m = compute_metrics(res.disparity, gt_disp)
                    frame_metrics.append(m)
                    rec["metrics"] = {k: round(v, 4) for k, v in m.items()}
                    rec["gt_kind"] = kind
                per_frame.append(rec)
                if out:
                    frame_id = settings.frame_id or frame.left.header.frame_id
                    out.write(res, ROSBAGS.header(frame.stamp_ns, frame_id), frame.log_ns)
        finally:
            if out:
                out.close()

    summary: Dict[str, Any] = {
        "bag": str(bag_path), "model": estimator.name, "device": estimator.device, "threads": estimator.threads.mode,
        "topics": {"left": st.left, "right": st.right, "left_info": st.left_info, "right_info": st.right_info,
                   "gt": st.gt},
        "frames": {"left_in": stats.left_in, "right_in": stats.right_in, "pairs": stats.pairs,
                   "processed": len(per_frame), "dropped_unpaired_left": stats.dropped_left,
                   "dropped_unpaired_right": stats.dropped_right,
                   "dropped_unpaired_left_info": stats.dropped_left_info,
                   "dropped_unpaired_right_info": stats.dropped_right_info, "resets": stats.resets,
                   "dropped": dict(drops)},
        "latency_ms": latency_summary([r["latency_ms"] for r in per_frame]),
        "inference_ms": latency_summary([r["inference_ms"] for r in per_frame]),
        "metrics": aggregate_metrics(frame_metrics) if frame_metrics else None,
        "metrics_frames": len(frame_metrics),
        "per_frame": per_frame,
    }
    if out:
        summary["output_bag"] = {"path": str(output.path), "topics": out.topics}
    return summary


def print_eval_summary(s: Dict[str, Any]) -> None:
    f = s["frames"]
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(f["dropped"].items())) or "none"
    print(f"model: {s['model']} (device {s['device']})")
    print(f"frames in: left {f['left_in']}, right {f['right_in']}; pairs {f['pairs']}; out (processed) "
          f"{f['processed']}; not synchronised: left {f['dropped_unpaired_left']}, right "
          f"{f['dropped_unpaired_right']}, left camera_info {f['dropped_unpaired_left_info']}, right camera_info "
          f"{f['dropped_unpaired_right_info']}; stamp resets {f['resets']}; "
          f"dropped: {dropped}")
    print(f"latency per frame, ms (pre/post-processing + model): {_format_latency(s['latency_ms'])}")
    print(f"model inference, ms:                                 {_format_latency(s['inference_ms'])}")
    if s["metrics"]:
        print(f"metrics vs ground truth ({s['metrics_frames']} frames, pixel-weighted): {_format_metrics(s['metrics'])}")
    else:
        print("metrics: the bag has no ground truth (give --gt-topic for a DisparityImage, a 32FC1 disparity "
              "or a depth image)")
    if s.get("output_bag"):
        print(f"output bag: {s['output_bag']['path']} (+ {', '.join(s['output_bag']['topics'].values())})")


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("bag", help="rosbag2 folder (mcap or sqlite3) or a single .mcap/.db3 file")
    s.add_argument("--model", default=None, help="sgbm, a registry model or a weights file "
                   "(default: the node's default model)")
    s.add_argument("--device", default=None, help="auto, cpu or cuda[:N] (default: the node's, auto)")
    s.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    s.add_argument("--params-file", help="the node's ROS params YAML (e.g. config/madis_stereo.yaml): evaluate "
                   "with the node's exact settings; the options here override it")
    for flag in ("--left-topic", "--right-topic", "--left-info-topic", "--right-info-topic"):
        s.add_argument(flag)
    s.add_argument("--gt-topic", help="ground truth: DisparityImage, 32FC1 disparity or depth (m), 16UC1 depth (mm)")
    s.add_argument("--gt-kind", default="auto", choices=["auto", "disparity", "depth"],
                   help="what a ground-truth Image holds (auto: 16UC1 or 'depth' in the topic name = depth)")
    s.add_argument("--slop", type=float, default=None,
                   help="pair left/right within this many seconds (node parameters approximate_sync and slop; "
                        "default: the node's, exact stamps)")
    s.add_argument("--inference-scale", type=float, default=None, help="resize factor before the model (node parameter)")
    s.add_argument("--max-disparity", type=float, default=None, help="node parameter max_disparity (0 = model range)")
    s.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = all)")
    s.add_argument("--threads", type=int, default=None, help="CPU inference threads (node parameter threads; "
                   "default auto: affinity and cgroup quota, adapted to the load)")
    s.add_argument("--output-bag", help="write a copy of the bag with disparity/depth/points2 added")
    s.add_argument("--output-storage", choices=STORAGES, help="storage of the output bag (default: the input's)")
    s.add_argument("--output-ns", help="namespace of the added topics (default: the left topic's, e.g. /stereo)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output bag")
    s.add_argument("--json", help="write the summary (counts, latency percentiles, metrics, per frame) here")


def run(args: argparse.Namespace) -> int:
    from madis_ros.node_runtime import load_estimator

    sync = {} if args.slop is None else {"approximate_sync": args.slop > 0, "slop": args.slop or 0.01}
    settings = node_settings(args.params_file, {"model": args.model, "device": args.device,
                                                "precision": args.precision, "inference_scale": args.inference_scale,
                                                "max_disparity": args.max_disparity, "threads": args.threads,
                                                **sync})
    estimator = load_estimator(settings, _StderrLogger())
    topics = TopicChoice(args.left_topic, args.right_topic, args.left_info_topic, args.right_info_topic,
                         args.gt_topic, args.gt_kind)
    output = OutputBag(args.output_bag, args.output_storage, args.output_ns, args.overwrite) if args.output_bag else None
    summary = evaluate_bag(args.bag, estimator, settings, topics, args.max_frames, output)
    print_eval_summary(summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if summary["frames"]["processed"] == 0:
        print("madis-bag: error: no stereo pair could be processed (see the counts above)", file=sys.stderr)
        return 1
    return 0


class _Warnings:
    """madis-bag warnings (and the rectification note) on stderr: each kind at most three times."""

    def __init__(self, most: int = 3):
        self.most, self.said = most, Counter()

    def say(self, key: str, text: str) -> None:
        self.said[key] += 1
        if self.said[key] <= self.most:
            kind = "" if key == "rectify" else "warning: "  # rectifying raw input is news, not a problem
            print(f"madis-bag: {kind}{text}", file=sys.stderr, flush=True)


class _StderrLogger:
    """The node's logger calls, as madis-bag warnings."""

    def warning(self, text: str) -> None:
        print(f"madis-bag: warning: {text}", file=sys.stderr, flush=True)

    def info(self, text: str) -> None:
        print(text, flush=True)
