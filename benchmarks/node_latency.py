"""The stereo node's own per-frame overhead, and camera-stamp-to-points2 latency through DDS.

    python benchmarks/node_latency.py                    # both parts, 640x480, about 1 minute
    python benchmarks/node_latency.py --overhead-only    # in-process part only (~15 s)
    python benchmarks/node_latency.py --model sgbm-3way --rate 15 --duration 10
    python benchmarks/node_latency.py --model student --random-init   # untrained: timing only
    python benchmarks/node_latency.py --e2e-only --param adapt:=true    # with online adaptation (issue 17)
    python benchmarks/node_latency.py --adapt-study 4    # adaptation off / child process / thread, 4 rounds
    python benchmarks/node_latency.py --e2e-only --beside memory   # a lowest-priority memory streamer meanwhile

Part 1, overhead (in one process, no DDS transport): the real ``StereoNode`` is built in
this process and its per-frame worker function (``_process``: decode both images, run the
estimator, depth, points, colour, build DisparityImage + depth Image + PointCloud2
[+ colourised disparity], publish) is called directly on 640x480 rgb8 messages of a
textured synthetic scene. The node itself times each frame with ``time.perf_counter``:
overhead = everything from the incoming messages to the built output messages minus the
estimator's ``predict`` (the forward with its own pre/post-processing); publishing
(rclpy -> C conversion, CDR serialisation, hand-over to Fast DDS) is reported apart.
A subscriber on ``points2`` in the same process makes the node build the cloud (it skips
it when nobody listens). Two configurations: ``target`` = disparity + depth + coloured
organized cloud (what issue 8's 10 ms target lists) and ``node defaults`` (adds the
colourised disparity image). A per-stage breakdown calls the same functions one by one.
Beside the wall-clock figure, the CPU time of the same frames (``time.process_time``, all
threads, minus predict() and publish()) is printed: on a shared machine it is what the wall
figure would be without the other processes. Like the node's main(), the part calls
``tune_malloc()`` first (without it every frame's buffers are fresh pages: see its doc).
Target: median overhead <= 10 ms at 640x480 with a colour cloud on the 2-core CPU.

Part 2, end to end (three processes over DDS): ``test/publisher.py`` sends 640x480
rgb8 pairs with camera_info (best effort, ``--rate`` Hz); the node process
(``python -m madis_ros.stereo_node``, debug logging of its per-frame timing lines) runs
the model; this process subscribes to ``points2`` and measures receipt wall time minus the
left image's header stamp (same host clock). The node's own inference and overhead per
frame come from its ``frame ...`` debug lines. Every process gets the same-host
shared-memory profile of ``madis_ros.transport`` unless the environment already names a
transport (without one most 640x480 best-effort images are lost between processes, see
environment.md); ROS_AUTOMATIC_DISCOVERY_RANGE is removed from the children's environment
because it disables the large-data transports.

Model: ``--model`` (default: ``student`` when its weights are shipped, else ``sgbm``).
Prints p50/p95 and writes ``node_latency.json`` to ``--out``. Timings on a shared machine
are noisy: every figure is a median or percentile over many frames.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "test")):
    if _p not in sys.path:
        sys.path.insert(0, _p)
from madis_ros.transport import default_to_shared_memory  # noqa: E402

default_to_shared_memory()  # all its processes share this machine; a transport the user set is kept
# madis_ros imported madis_core above, whose thread policy (madis_core/runtime.py) sets
# OMP_WAIT_POLICY=PASSIVE before anything imports torch: spinning OpenMP threads would
# inflate the CPU-time figures below (spinning counts as CPU time)

DEFAULT_DOMAIN = 97
TARGET_MS = 10.0


def _pct(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def _summary(values: List[float]) -> Dict[str, float]:
    return {"n": len(values), "p50": round(_pct(values, 50), 3), "p95": round(_pct(values, 95), 3),
            "mean": round(float(np.mean(values)), 3) if values else float("nan")}


# --- part 1: in-process overhead -----------------------------------------------------------------
def node_params(model: str, random_init: bool, color_disparity: bool, cloud_color: bool = True,
                extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    p = {"model": model, "device": "cpu", "publish_color_disparity": color_disparity, "cloud_color": cloud_color,
         "no_input_warn_sec": 3600.0}
    if random_init:
        p["model_random_init"] = True  # ignored by classical models
    p.update(extra or {})
    return p


def measure_overhead(params: Dict[str, Any], width: int = 640, height: int = 480, frames: int = 20,
                     warmup: int = 3, domain_id: int = DEFAULT_DOMAIN) -> Dict[str, Any]:
    """Run the real node's per-frame function ``frames`` times in this process; the node's own
    timings per frame: {"overhead_ms", "overhead_cpu_ms", "inference_ms", "publish_ms": [...],
    "last_points2": the last PointCloud2 an in-process subscriber received}."""
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    from madis_ros.frame_sync import StereoInput
    from madis_ros.node_runtime import tune_malloc
    from madis_ros.stereo_node import StereoNode
    from rosutil import image_pair_messages, make_scene, to_time

    tune_malloc()  # as the node's main() does
    scene = make_scene(width, height, "slanted", disparity=40.0 * width / 640.0)
    li, ri, lc, rc = image_pair_messages(scene, "rgb8")
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain_id, signal_handler_options=rclpy.SignalHandlerOptions.NO)
    node = sink = None
    try:
        node = StereoNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        sink = rclpy.create_node("node_latency_sink", context=ctx)
        got: List[Any] = []
        sink.create_subscription(PointCloud2, "points2", got.append,
                                 QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        end = time.monotonic() + 10.0
        while node.pub_points is not None and node.pub_points.get_subscription_count() == 0:
            if time.monotonic() > end:
                raise RuntimeError("the in-process points2 subscriber was not matched")
            time.sleep(0.02)
        # CPU time (all threads of this process: user + system, page faults included) of the
        # same frames, from timers wrapped around the real predict() and publish() calls; on a
        # shared machine it is what the wall-clock figure would be without the other processes
        cpu_excluded = [0.0]

        def timed(fn):
            def wrapper(*a, **k):
                c0 = time.process_time()
                try:
                    return fn(*a, **k)
                finally:
                    cpu_excluded[0] += time.process_time() - c0
            return wrapper

        node.estimator.predict = timed(node.estimator.predict)
        for pub in (node.pub_disparity, node.pub_depth, node.pub_points, node.pub_confidence, node.pub_color):
            if pub is not None:
                pub.publish = timed(pub.publish)
        cpu_overhead: List[float] = []
        t0 = time.time()
        for i in range(warmup + frames):
            stamp = to_time(t0 + 0.05 * i)
            for m in (li, ri, lc, rc):
                m.header.stamp = stamp
            cpu_excluded[0] = 0.0
            c0 = time.process_time()
            reason = node._process((StereoInput(li, ri, lc, rc), time.monotonic()))
            cpu_overhead.append((time.process_time() - c0 - cpu_excluded[0]) * 1e3)
            if reason is not None:
                raise RuntimeError(f"the node dropped the pair: {reason}")
        rows = node.frame_stats.rows()[warmup:]
        # what the node published (the subscriber keeps the last cloud): proof the cloud was built
        from rclpy.executors import SingleThreadedExecutor

        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(sink)
        end = time.monotonic() + 5.0
        while not got and time.monotonic() < end:
            ex.spin_once(timeout_sec=0.1)
        ex.shutdown()
        return {"inference_ms": [r[1] for r in rows], "overhead_ms": [r[4] for r in rows],
                "publish_ms": [r[5] for r in rows], "overhead_cpu_ms": cpu_overhead[warmup:],
                "model": node.estimator.name, "params": params, "last_points2": got[-1] if got else None}
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        if sink is not None:
            sink.destroy_node()
        rclpy.try_shutdown(context=ctx)


def stage_breakdown(model: str, random_init: bool, width: int = 640, height: int = 480,
                    frames: int = 15) -> Dict[str, Dict[str, float]]:
    """The node's per-frame functions called one by one (for profiling; the total is part 1's)."""
    from madis_core.estimator import build_estimator
    from madis_core.pipeline import StereoFrameProcessor
    from madis_ros.camera_info import stereo_camera_from_infos
    from madis_ros.image_conversion import image_to_estimator_input
    from madis_ros.messages import (make_color_disparity_image, make_depth_image, make_disparity_image,
                                    make_pointcloud2)
    from madis_ros.params import settings_from_dict
    from rosutil import image_pair_messages, make_scene

    settings = settings_from_dict(node_params(model, random_init, True))
    est = build_estimator(**settings.estimator_kwargs())
    proc = StereoFrameProcessor(est, settings.processing_settings())
    scene = make_scene(width, height, "slanted", disparity=40.0 * width / 640.0)
    li, ri, lc, rc = image_pair_messages(scene, "rgb8")
    stages: Dict[str, List[float]] = {}

    def tick(name: str, t: float) -> float:
        now = time.perf_counter()
        stages.setdefault(name, []).append((now - t) * 1e3)
        return now

    for i in range(frames + 2):
        t = time.perf_counter()
        left, right = image_to_estimator_input(li), image_to_estimator_input(ri)
        t = tick("decode 2 images", t)
        cam = stereo_camera_from_infos(lc, rc, image_size=(width, height))
        t = tick("camera_info -> camera", t)
        res = proc.process(left, right, cam)
        stages.setdefault("depth + points + colour (process minus forward)", []).append(
            res.timings_ms["total"] - res.timings_ms["inference"])
        t = time.perf_counter()
        make_disparity_image(res.disparity, res.camera, li.header, res.min_disparity, res.max_disparity, res.delta_d)
        t = tick("DisparityImage", t)
        make_depth_image(res.depth, li.header)
        t = tick("depth Image 32FC1", t)
        make_pointcloud2(res.points, li.header, res.colors)
        t = tick("PointCloud2 x,y,z,rgb", t)
        make_color_disparity_image(res.disparity, li.header, res.max_disparity, res.min_disparity)
        tick("colourised disparity (defaults only)", t)
        if i < 2:
            stages.clear()
    return {k: _summary(v) for k, v in stages.items()}


# --- part 2: end to end over DDS -------------------------------------------------------------------
_FRAME_RX = re.compile(r"frame stamp_ns=(\d+) right_stamp_ns=\d+ inference_ms=([\d.]+) overhead_ms=([\d.]+) publish_ms=([\d.]+) "
                       r"latency_ms=([\d.]+)")


def end_to_end(model: str, random_init: bool, width: int = 640, height: int = 480, rate: float = 10.0,
               duration: float = 15.0, domain_id: int = DEFAULT_DOMAIN, extra: Optional[Dict[str, Any]] = None,
               transport: str = "raw", qos: str = "best_effort", kind: str = "slanted") -> Dict[str, Any]:
    """Publisher process -> node process -> this process; latency = points2 receipt - stamp."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import PointCloud2

    import rosutil
    from rosutil import NodeProcess, RosContext, start_publisher

    os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)  # children inherit this environment
    params = node_params(model, random_init, False, extra={"input_transport": transport, **(extra or {})})
    node = NodeProcess(params, domain_id, extra_args=["--log-level", "madis_stereo:=debug"]).start()
    pub = None
    try:
        if not node.wait_for_log(r"input QoS", 120):
            raise RuntimeError(f"the node did not start:\n{node.log_text()[-3000:]}")
        with RosContext(domain_id, "node_latency_probe") as rc:
            col = rc.subscribe(PointCloud2, "points2", rosutil.RELIABLE)
            diags = rc.subscribe(DiagnosticArray, "/diagnostics", rosutil.RELIABLE)
            end = time.monotonic() + 20
            while time.monotonic() < end and rc.node.count_publishers("points2") == 0:
                time.sleep(0.05)
            pub = start_publisher(domain_id, width=width, height=height, kind=kind,
                                  disparity=40.0 * width / 640.0, rate=rate, duration=duration, qos=qos,
                                  image_transport=transport)
            pub.wait(duration + 40)
            time.sleep(1.0)  # the last frame in flight
            rc.wait_for(lambda: rosutil.diagnostics_values(diags.msgs).get("pairs_pending") == "0", 5)
            counts = rosutil.diagnostics_values(diags.msgs)
            rss = node.rss_mb()
            items = [(wall, m.header.stamp.sec + m.header.stamp.nanosec * 1e-9, m) for _, wall, m in col.items]
        summary_line = re.search(r"PUBLISHED (\{.*\})", pub.log_text())
        published = json.loads(summary_line.group(1)) if summary_line else {}
    finally:
        if pub is not None:
            pub.stop()
        node.stop()
    e2e = [(wall - stamp) * 1e3 for wall, stamp, _ in items]
    t0 = items[0][1] if items else 0.0  # start-up transients (e.g. an adaptation process importing torch)
    warm = [stamp - t0 >= 5.0 for _, stamp, _ in items]
    early = [v for v, w in zip(e2e, warm) if not w]
    late = [v for v, w in zip(e2e, warm) if w]
    frames = [tuple(map(float, m.groups()[1:])) for m in _FRAME_RX.finditer(node.log_text())]
    return {"model": model, "random_init": random_init, "rate_hz": rate, "duration_s": duration,
            "size": f"{width}x{height}", "transport": transport, "qos": qos, "node_params": params,
            "image_bytes": published.get("image_bytes"),
            "pairs_published": published.get("sent"), "points2_received": len(items),
            # what reached the node: synchronised frames, and per input topic
            "node_pairs_received": int(counts.get("pairs_received", 0)),
            "node_dropped_superseded": int(counts.get("dropped_superseded", 0)),
            "node_received": {k[len("received_"):]: int(v) for k, v in counts.items() if k.startswith("received_")},
            "points2_rate_hz": round(len(items) / duration, 2) if duration else float("nan"),
            "e2e_stamp_to_points2_ms": _summary(e2e),
            "e2e_first_5s_ms": _summary(early), "e2e_after_5s_ms": _summary(late),
            "e2e_after_5s_values": [round(v, 2) for v in late],
            "node_inference_ms": _summary([f[0] for f in frames]),
            "node_overhead_ms": _summary([f[1] for f in frames]),
            "node_publish_ms": _summary([f[2] for f in frames]),
            # pair complete in the node -> its outputs published (includes waiting for the worker)
            "node_pair_to_published_ms": _summary([f[3] for f in frames]),
            "node_frames_logged": len(frames), "node_rss_mb": round(rss, 1),
            # with adapt:=true: the adaptation thread's work during the run (/diagnostics)
            **{f"node_{k}": counts[k] for k in ("adapt_steps", "adapt_pairs_used", "adapt_step_ms", "adapt_loss")
               if k in counts}}


def node_overrides(items) -> Dict[str, Any]:
    """``NAME:=VALUE`` strings (ros2 run's spelling) as node parameters, values parsed as YAML."""
    import yaml

    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep:
            raise SystemExit(f"--param {item!r}: expected NAME:=VALUE")
        out[name] = yaml.safe_load(value)
    return out


#: ``--beside``: a process that competes only as adaptation would, at the lowest priority the
#: kernel has (nice 19 and SCHED_IDLE: it runs only when nothing else wants a CPU). ``cpu``
#: spins in registers; ``memory`` streams 64 MB arrays (shared caches and memory bandwidth,
#: which no scheduler divides).
BESIDE = {
    "cpu": "x = 0\nwhile True:\n    x += 1",
    "memory": "import numpy as np\na = np.ones(16_000_000, np.float32); b = np.empty_like(a)\n"
              "while True:\n    np.copyto(b, a); np.copyto(a, b)",
}


def start_beside(kind: str):
    import subprocess

    prologue = ("import os\nos.nice(19)\nif hasattr(os, 'SCHED_IDLE'):\n"
                "    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n")
    return subprocess.Popen([sys.executable, "-c", prologue + BESIDE[kind]])


ADAPT_MODES = {"off": {}, "process": {"adapt": True, "adapt_in_process": True},
               "thread": {"adapt": True, "adapt_in_process": False}}


def adapt_study(model: str, rounds: int, w: int, h: int, args, extra: Dict[str, Any]) -> Dict[str, Any]:
    """Issue 17's bound: newest-pair latency p95 with ``adapt:=true`` (child process, thread)
    against without, rounds cycling the three so that drifts of a shared machine hit all
    alike. Frames of each run's first 5 s are left out (warm-up: first inferences, and the
    adaptation process's start-up); the verdict is on the p95 of all remaining frames of a
    mode pooled over rounds, the per-round figures show the spread."""
    runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in ADAPT_MODES}
    late: Dict[str, List[float]] = {m: [] for m in ADAPT_MODES}  # every frame after warm-up, pooled
    for r in range(rounds):
        for mode, params in ADAPT_MODES.items():
            e = end_to_end(model, args.random_init, w, h, args.rate, args.duration, args.domain,
                           {**extra, **params}, args.transport, args.qos, args.kind)
            late[mode] += e.pop("e2e_after_5s_values")
            runs[mode].append(e)
            print(f"round {r + 1} {mode:7s}: stamp->points2 p95 {e['e2e_after_5s_ms']['p95']:.1f} ms after the "
                  f"first 5 s ({e['e2e_first_5s_ms']['p95']:.1f} ms in them), {e['points2_received']} points2, "
                  f"{e.get('node_adapt_steps', 0)} adaptation steps", flush=True)
    pooled = {m: _summary(late[m]) for m in runs}
    base = pooled["off"]["p95"]
    print("\n| adaptation | p95 per round (ms) | pooled p50 | pooled p95 | vs off |\n| --- | --- | --- | --- | --- |")
    for m in runs:
        per = ", ".join(f"{e['e2e_after_5s_ms']['p95']:.1f}" for e in runs[m])
        print(f"| {m} | {per} | {pooled[m]['p50']:.1f} | {pooled[m]['p95']:.1f} | "
              f"{pooled[m]['p95'] / base:.2f}x |")
    verdict = {m: pooled[m]["p95"] <= 1.2 * base for m in ("process", "thread")}
    print(f"issue 17 bound (pooled p95 within 20 % of off): child process {'met' if verdict['process'] else 'MISSED'}"
          f", thread {'met' if verdict['thread'] else 'MISSED'}", flush=True)
    return {"rounds": runs, "pooled_after_5s_ms": pooled, "within_20_percent": verdict}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: student if its weights are shipped, else sgbm")
    ap.add_argument("--random-init", action="store_true", help="allow an untrained registry model (timing only)")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--frames", type=int, default=20, help="in-process frames per configuration")
    ap.add_argument("--rate", type=float, default=10.0, help="publisher rate (Hz) for the end-to-end part")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of publishing")
    ap.add_argument("--domain", type=int, default=DEFAULT_DOMAIN)
    ap.add_argument("--transport", default="raw", choices=["raw", "compressed"],
                    help="end to end: images as sensor_msgs/Image or CompressedImage (jpeg)")
    ap.add_argument("--qos", default="best_effort", choices=["best_effort", "reliable"],
                    help="end to end: the publisher's reliability (the node subscribes with sensor_data)")
    ap.add_argument("--inference-scale", type=float, default=1.0, help="end to end: node parameter inference_scale")
    ap.add_argument("--publish-resolution", default="camera", choices=["camera", "inference"],
                    help="end to end: node parameter publish_resolution")
    ap.add_argument("--kind", default="slanted", choices=["slanted", "photo"],
                    help="end to end: the scene's texture (photo: a real photograph, compresses like camera images)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="end to end: any other node parameter (YAML value), e.g. --param adapt:=true")
    ap.add_argument("--overhead-only", action="store_true")
    ap.add_argument("--e2e-only", action="store_true")
    ap.add_argument("--beside", choices=sorted(BESIDE), default=None,
                    help="end to end: a lowest-priority process that only burns CPU or memory bandwidth meanwhile")
    ap.add_argument("--adapt-study", type=int, default=0, metavar="ROUNDS",
                    help="end to end only: ROUNDS rounds of adaptation off / child process / thread (issue 17)")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    from madis_core.estimator import default_model

    model = args.model or default_model()
    w, h = map(int, args.size.lower().split("x"))
    meta = {"host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "load_avg": os.getloadavg(), "model": model, "size": args.size}
    print(f"# node latency, {args.size}, model {model}{' (untrained)' if args.random_init else ''}; "
          f"{meta['host']}, load average {meta['load_avg'][0]:.1f}")
    result: Dict[str, Any] = {"meta": meta}
    extra = {"inference_scale": args.inference_scale, "publish_resolution": args.publish_resolution,
             **node_overrides(args.param)}  # end to end: node parameters
    if args.adapt_study:
        result["adapt_study"] = adapt_study(model, args.adapt_study, w, h, args, extra)
    elif not args.e2e_only:
        over = {}
        for name, color_disp in (("target", False), ("node defaults", True)):
            r = measure_overhead(node_params(model, args.random_init, color_disp), w, h, args.frames,
                                 domain_id=args.domain)
            over[name] = {k: _summary(r[k]) for k in ("overhead_ms", "overhead_cpu_ms", "inference_ms", "publish_ms")}
            o, c = over[name]["overhead_ms"], over[name]["overhead_cpu_ms"]
            print(f"overhead [{name:13s}] wall p50 {o['p50']:6.2f} ms  p95 {o['p95']:6.2f} ms;  CPU p50 {c['p50']:6.2f} ms "
                  f"(inference p50 {over[name]['inference_ms']['p50']:.1f} ms, publish p50 "
                  f"{over[name]['publish_ms']['p50']:.2f} ms; target <= {TARGET_MS:g} ms: "
                  f"{'met' if o['p50'] <= TARGET_MS else 'MISSED'})", flush=True)
        result["overhead"] = over
        result["breakdown"] = stage_breakdown(model, args.random_init, w, h)
        print("breakdown (p50 ms):  " + ";  ".join(f"{k} {v['p50']:.2f}" for k, v in result["breakdown"].items()))
    if not args.overhead_only and not args.adapt_study:
        beside = start_beside(args.beside) if args.beside else None
        try:
            e = end_to_end(model, args.random_init, w, h, args.rate, args.duration, args.domain, extra,
                           args.transport, args.qos, args.kind)
        finally:
            if beside is not None:
                beside.kill()
        e.pop("e2e_after_5s_values")
        e["beside"] = args.beside
        result["end_to_end"] = e
        l, inf, ov = e["e2e_stamp_to_points2_ms"], e["node_inference_ms"], e["node_overhead_ms"]
        print(f"end to end ({e['size']} {args.transport}, {args.qos}, images {e['image_bytes']} B): "
              f"{e['node_pairs_received']} of {e['pairs_published']} pairs reached the node "
              f"({e['node_dropped_superseded']} superseded), {e['points2_received']} points2 at {args.rate:g} Hz; "
              f"stamp->points2 p50 {l['p50']:.1f} ms p95 {l['p95']:.1f} ms; node inference p50 {inf['p50']:.1f} "
              f"p95 {inf['p95']:.1f} ms; node overhead p50 {ov['p50']:.2f} p95 {ov['p95']:.2f} ms; publish p50 "
              f"{e['node_publish_ms']['p50']:.2f} ms; pair->published in the node p50 "
              f"{e['node_pair_to_published_ms']['p50']:.1f} ms", flush=True)
        print(f"stamp->points2 p95 in the first 5 s of frames {e['e2e_first_5s_ms']['p95']:.1f} ms, "
              f"after them {e['e2e_after_5s_ms']['p95']:.1f} ms", flush=True)
        if "node_adapt_steps" in e:
            print(f"online adaptation meanwhile: {e['node_adapt_steps']} steps on {e['node_adapt_pairs_used']} pairs, "
                  f"last step {e['node_adapt_step_ms']} ms, self-supervised loss {e['node_adapt_loss']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "node_latency.json").write_text(json.dumps(result, indent=2))
    print(f"# wrote {out / 'node_latency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
