"""``make demo``: the whole pipeline end to end over real DDS, in three processes.

    python -m madis_ros.demo --out demo_out [--model NAME] [--device auto]

1. writes a rosbag2 (mcap, with rosbags) holding a few synthetic frames and the
   Middlebury Motorcycle pair with its published calibration and ground truth;
2. starts the stereo node (``python -m madis_ros.stereo_node``) as its own process, in
   namespace /stereo, on sim time;
3. replays the bag into it with ``madis-bag play --clock --loop`` in a second process;
4. receives disparity / depth / points2 here (the third process), prints per-frame
   latency (camera stamp -> output received), the node's inference time (from its
   /diagnostics) and the metrics against ground truth, and saves the colourised
   disparity, the depth (PFM metres and 16-bit PNG millimetres), the PLY cloud and a
   JSON summary under ``--out``.

Why the bag is played more than once: DDS discovery finishes on each side on its
own, and on a busy machine a subscriber can learn about a publisher seconds after
the publisher saw it, so the first frames of a replay may be lost or late; the first
model call is also slower (warm-up). Pass 1 warms up; the figures come from pass 2
(a frame missing there falls back to pass 1 and is marked). The player stops as soon
as every frame has come through.

Latency without clock skew: the player publishes /clock = the bag time of each frame
just before publishing it; this process notes when that /clock arrives (steady
clock), so "camera stamp -> output received" is measured on one steady clock.

Exit status: 0 with the Motorcycle metrics printed; 1 when the node produced nothing
for Motorcycle (the message says why and where the logs are); 2 for bad arguments.
Every child is stopped (SIGINT, then SIGTERM, then SIGKILL to its process group) on
every exit path, Ctrl-C included; on Linux children also die with this process.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from madis_ros.demo_processes import NAMESPACE, OUTPUTS, Child, Receiver
from madis_ros.transport import default_to_shared_memory, uses_tcp_transport

# Transport: Fast DDS's default transports lose most large best-effort images between processes
# (environment.md); every process of the demo runs on this machine, so unless the user chose a
# transport they all get the same-host shared-memory profile (madis_ros.transport: no TCP, whose
# teardown can deadlock). Not ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: measured here, it
# overrides the large-data transports (0 of 8 best-effort 0.9 MB images).

#: the pass whose figures are reported (0-based; pass 0 warms up discovery and the model)
REPORT_PASS = 1


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _read_ground_truth(bag_path: Path) -> Dict[int, np.ndarray]:
    """stamp -> ground-truth disparity, read back from the bag the way ``madis-bag eval`` does."""
    from madis_ros.bag.files import BagReader, deserialize
    from madis_ros.bag.topics import detect_stereo_topics
    from madis_ros.messages import disparity_from_msg
    from madis_ros.msgkit import stamp_ns

    out: Dict[int, np.ndarray] = {}
    with BagReader(bag_path) as bag:
        st = detect_stereo_topics(bag.topics)
        for conn, _, raw in bag.messages([st.gt]):
            msg = deserialize(raw, conn.msgtype)
            out[stamp_ns(msg)] = disparity_from_msg(msg)
    return out


def _diag_float(d: Dict[str, str], key: str) -> float:
    try:
        return float(d.get(key, "nan"))
    except ValueError:
        return float("nan")


def _node_summary(diags: List[tuple]) -> Dict[str, Any]:
    """Model, counters and inference figures from the node's own /diagnostics."""
    last = diags[-1][1] if diags else {}
    out: Dict[str, Any] = {"model": last.get("model"), "device": last.get("device"),
                           "pairs_received": last.get("pairs_received"), "pairs_processed": last.get("pairs_processed"),
                           "drops": {k[len("dropped_"):]: v for k, v in last.items()
                                     if k.startswith("dropped_") and v != "0"},
                           "last_diagnostics": last}
    means = [_diag_float(d, "inference_ms_mean") for _, d in diags]
    means = [m for m in means if np.isfinite(m)]
    if means:
        out["inference_ms_mean_range"] = [float(np.min(means)), float(np.max(means))]
        out["inference_ms_p95_max"] = float(np.nanmax([_diag_float(d, "inference_ms_p95") for _, d in diags]))
    return out


def _inference_near(diags: List[tuple], t_rx: float) -> Optional[float]:
    """The node's mean inference time in the first /diagnostics after an output arrived
    (its window is the last second, so with frames 0.5 s apart it may average two)."""
    for t, d in diags:
        if t >= t_rx:
            v = _diag_float(d, "inference_ms_mean")
            return v if np.isfinite(v) else None
    return None


def _save_outputs(out: Path, name: str, disp: np.ndarray, depth_msg: Any, points_msg: Any,
                  max_disparity: Optional[float]) -> List[str]:
    """The received messages as files, by the one output writer (``madis_core.output_files``)."""
    from madis_core.io import millimetres_to_depth
    from madis_core.output_files import write_outputs
    from madis_ros.image_conversion import image_to_numpy
    from madis_ros.messages import pointcloud2_to_numpy

    depth = pts = cols = None
    if depth_msg is not None:
        z = image_to_numpy(depth_msg)
        depth = millimetres_to_depth(z) if depth_msg.encoding == "16UC1" else z.astype(np.float32)
    if points_msg is not None:
        pts, cols = pointcloud2_to_numpy(points_msg)
    prefix = "" if name == "motorcycle" else f"frames/{name}_"
    return write_outputs(out, disp, depth=depth, points=pts, colors=cols, prefix=prefix,
                         color_max_disparity=max_disparity)["files"]


def _pick(receipts: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The receipt to report: the first from REPORT_PASS, else the latest with a latency, else any."""
    timed = [r for r in receipts if r["pass"] is not None]
    for r in timed:
        if r["pass"] == REPORT_PASS:
            return r
    if timed:
        return timed[-1]
    return receipts[-1] if receipts else None


def _fmt(v: Optional[float], spec: str = ".1f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, spec)


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m madis_ros.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo_out", help="output folder (its sample_bag, outputs and logs are replaced)")
    p.add_argument("--model", default=None, help="node parameter 'model' (default: the node's default)")
    p.add_argument("--device", default=None, help="node parameter 'device' (default: the node's, auto)")
    p.add_argument("--synthetic-frames", type=int, default=3, help="synthetic frames before Motorcycle")
    p.add_argument("--rate", type=float, default=2.0, help="frames per second in the bag")
    p.add_argument("--play-rate", type=float, default=0.5,
                   help="replay speed factor (0.5: one frame per second, so a slow CPU model keeps up and the "
                        "node does not supersede frames)")
    p.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    p.add_argument("--input-qos", default=None, choices=["sensor_data", "reliable", "system_default"],
                   help="node parameter input_qos (default: the node's, sensor_data)")
    p.add_argument("--domain-id", type=int, default=None,
                   help="ROS_DOMAIN_ID of the three processes (default: $ROS_DOMAIN_ID, else a random one in "
                        "90..99 so the demo does not talk to other ROS graphs)")
    p.add_argument("--node-timeout", type=float, default=150.0, help="seconds for the node to load its model")
    p.add_argument("--play-timeout", type=float, default=90.0,
                   help="seconds of replay (passes) before giving up on frames that never came through")
    p.add_argument("--max-passes", type=int, default=5, help="stop replaying after this many passes")
    p.add_argument("--subscriber-wait", type=float, default=30.0,
                   help="the player waits up to this long for the node's subscriptions before playing")
    p.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                   help="extra --ros-args argument for the node (repeatable), e.g. --node-arg=-p "
                        "--node-arg=inference_scale:=0.5")
    return p


def _start_node(args: argparse.Namespace, receiver: Receiver, env: Dict[str, str], out: Path, domain: int
                ) -> Tuple[Child, bool]:
    """The stereo node as a child process, and whether it came up (if not, after saying why)."""
    node_params = ["use_sim_time:=true", "diagnostics_period:=0.5"]
    for name in ("input_qos", "model", "device"):
        if getattr(args, name):
            node_params.append(f"{name}:={getattr(args, name)}")
    node_argv = [sys.executable, "-m", "madis_ros.stereo_node", "--ros-args", "-r", f"__ns:={NAMESPACE}"]
    for prm in node_params:
        node_argv += ["-p", prm]
    node_argv += args.node_arg
    node = Child("node", node_argv, env, out / "node.log").start()
    t0 = time.monotonic()
    while not receiver.node_ready():
        if not node.running():
            log(f"error: the stereo node exited with status {node.returncode} before it was ready. "
                f"Its log ({out / 'node.log'}):\n{node.tail()}")
            return node, False
        if time.monotonic() - t0 > args.node_timeout:
            log(f"error: the stereo node was not ready after {args.node_timeout:g} s (no subscription on "
                f"{NAMESPACE}/left/image_rect seen on ROS_DOMAIN_ID {domain}). Its log:\n{node.tail()}")
            return node, False
        time.sleep(0.1)
    log(f"[2/4] stereo node up in {time.monotonic() - t0:.1f} s: python {' '.join(node_argv[1:])}")
    return node, True


def _replay(args: argparse.Namespace, receiver: Receiver, node: Child, env: Dict[str, str], out: Path,
            bag_path: Path, stamps: List[int]) -> Child:
    """Loop the bag into the node until every frame came through in the reported pass."""
    player_argv = [sys.executable, "-m", "madis_ros.bag_tool", "play", str(bag_path), "--clock", "--clock-hz",
                   "50", "--loop", "--rate", f"{args.play_rate:g}", "--wait-for-subscribers", f"{args.subscriber_wait:g}"]
    player = Child("player", player_argv, env, out / "player.log").start()
    log(f"[3/4] replaying the bag over DDS: madis-bag {' '.join(player_argv[3:])} (pass 1 warms up, "
        f"figures from pass 2)")
    t_play = time.monotonic()
    while not receiver.complete(stamps, REPORT_PASS):
        if not node.running():
            log(f"warning: the stereo node exited (status {node.returncode}) during playback; its log:\n{node.tail()}")
            break
        if not player.running():
            log(f"warning: the player exited (status {player.returncode}); its log:\n{player.tail()}")
            break
        if receiver.passes >= args.max_passes or time.monotonic() - t_play > args.play_timeout:
            break
        time.sleep(0.05)
    time.sleep(0.6)  # one more /diagnostics period
    player.stop()
    return player


def _frame_report(m: Dict[str, Any], receiver: Receiver, gt: Dict[int, np.ndarray], diags: List[tuple],
                  out: Path) -> Dict[str, Any]:
    """One frame's line of the table (printed) and its record (files saved)."""
    from madis_core.metrics import compute_metrics
    from madis_ros.messages import disparity_from_msg

    s = m["stamp_ns"]
    rec: Dict[str, Any] = {"name": m["name"], "stamp_ns": s}
    picked = {k: _pick(receiver.receipts(k, s)) for k in OUTPUTS}
    rec["received"] = [k for k in OUTPUTS if picked[k] is not None]
    d = picked["disparity"]
    if d is None:
        log(f"{m['name']:<13} {'-':>4} {'no output':>10}")
        return rec
    same_pass = [picked[k] for k in OUTPUTS if picked[k] is not None and picked[k]["pass"] == d["pass"]]
    rec["pass"] = None if d["pass"] is None else d["pass"] + 1
    rec["latency_ms"] = d["latency_ms"]
    rec["latency_all_outputs_ms"] = (max(r["latency_ms"] for r in same_pass)
                                     if len(same_pass) == len(OUTPUTS) and d["latency_ms"] is not None else None)
    rec["node_inference_ms"] = _inference_near(diags, d["t_rx"])
    disp = disparity_from_msg(d["msg"])
    met = compute_metrics(disp, gt[s]) if s in gt else None
    rec["metrics"] = met
    log(f"{m['name']:<13} {rec['pass'] or '?':>4} {_fmt(rec['latency_ms']):>10} "
        f"{_fmt(rec['latency_all_outputs_ms']):>9} {_fmt(rec['node_inference_ms']):>13}   "
        + (f"{met['bad_2']:7.2f} {met['epe']:7.3f} {met['density']:9.2f} {met['bad_1']:7.2f} {met['bad_3']:7.2f}"
           if met else "(no ground truth)"))
    dmax = float(np.nanmax(gt[s])) * 1.1 if s in gt and np.isfinite(gt[s]).any() else None
    rec["files"] = _save_outputs(out, m["name"], disp, picked["depth"]["msg"] if picked["depth"] else None,
                                 picked["points2"]["msg"] if picked["points2"] else None, dmax)
    return rec


def _report(args: argparse.Namespace, receiver: Receiver, manifest: List[Dict[str, Any]], gt: Dict[int, np.ndarray],
            out: Path, domain: int, bag_path: Path, t_start: float) -> int:
    passes = receiver.passes + 1
    counts = receiver.count()
    log(f"[4/4] {passes} pass(es) played; received {counts['disparity']} disparity, {counts['depth']} depth, "
        f"{counts['points2']} points2 messages")
    with receiver.lock:
        diags = list(receiver.diagnostics)
    log("")
    log("latency: camera stamp -> disparity received (all 3: -> disparity, depth and points2 received); "
        "node infer: the node's mean inference time in the /diagnostics window (1 s) after that frame")
    log(f"{'frame':<13} {'pass':>4} {'latency ms':>10} {'all 3 ms':>9} {'node infer ms':>13}   {'bad-2 %':>7} "
        f"{'EPE px':>7} {'density %':>9} {'bad-1 %':>7} {'bad-3 %':>7}")
    frames = [_frame_report(m, receiver, gt, diags, out) for m in manifest]
    node_info = _node_summary(diags)
    lat = [f["latency_ms"] for f in frames if f.get("latency_ms") is not None]
    log("")
    log(f"model: {node_info.get('model') or args.model or '(node default)'} on {node_info.get('device') or '?'}; "
        f"node pairs received {node_info.get('pairs_received')}, processed {node_info.get('pairs_processed')}"
        + (f", drops {node_info['drops']}" if node_info.get("drops") else ""))
    if "inference_ms_mean_range" in node_info:
        lo, hi = node_info["inference_ms_mean_range"]
        log(f"node inference time (its /diagnostics, 1-s windows): mean {lo:.1f}..{hi:.1f} ms, "
            f"p95 up to {node_info['inference_ms_p95_max']:.1f} ms")
    if lat:
        log(f"latency camera stamp -> disparity received: mean {np.mean(lat):.1f} ms, max {np.max(lat):.1f} ms "
            f"over {len(lat)} frames")
    moto = next(f for f in frames if f["name"] == "motorcycle")
    summary = {"model": node_info.get("model") or args.model, "device": node_info.get("device"),
               "domain_id": domain, "bag": str(bag_path), "passes": passes, "frames": frames,
               "node": node_info, "files": moto.get("files", [])}
    if moto.get("metrics"):
        mm = moto["metrics"]
        summary["motorcycle"] = mm
        log(f"Motorcycle (Middlebury 2014, 741x500, {int(mm['n'])} px with ground truth): bad-2 {mm['bad_2']:.2f} %"
            f"  EPE {mm['epe']:.3f} px  density {mm['density']:.2f} %  bad-1 {mm['bad_1']:.2f} %  "
            f"bad-3 {mm['bad_3']:.2f} %  D1 {mm['d1']:.2f} %  (holes count as errors; EPE over filled pixels)")
        log(f"saved under {out}/: {', '.join(summary['files'])}, summary.json")
    summary["wall_time_s"] = round(time.monotonic() - t_start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    if not any(f.get("received") for f in frames):
        log(f"error: the stereo node produced no output for any of the {len(frames)} frames. Check "
            f"{out / 'node.log'} (model errors, dropped pairs) and {out / 'player.log'}; every process must "
            f"share ROS_DOMAIN_ID and the transport setting printed at the start.")
        return 1
    if not moto.get("metrics"):
        log(f"error: no disparity for the Motorcycle frame arrived (outputs for "
            f"{sum(1 for f in frames if f.get('received'))}/{len(frames)} frames); see {out / 'node.log'}")
        return 1
    log(f"demo finished in {time.monotonic() - t_start:.1f} s")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    domain = args.domain_id if args.domain_id is not None else int(os.environ.get("ROS_DOMAIN_ID") or
                                                                     random.randint(90, 99))
    default_to_shared_memory()  # every process of the demo runs on this machine
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    env = dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    transport = (f"FASTDDS_BUILTIN_TRANSPORTS={os.environ['FASTDDS_BUILTIN_TRANSPORTS']}"
                 if "FASTDDS_BUILTIN_TRANSPORTS" in os.environ else
                 f"FASTDDS_DEFAULT_PROFILES_FILE={os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE')}")
    log(f"madis-stereo demo: ROS_DOMAIN_ID={domain}, {transport}")
    log("  note: large images between processes need a large-data transport in every process of your own "
        "pipeline too: on one machine the same-host shared-memory profile used here "
        "(export FASTDDS_DEFAULT_PROFILES_FILE=$(python -m madis_ros.transport)), across machines "
        "FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (see README)")

    from madis_ros.bag.sample import write_sample_bag

    bag_path = out / "sample_bag"
    t0 = time.monotonic()
    manifest = write_sample_bag(bag_path, synthetic_frames=args.synthetic_frames, storage=args.storage,
                                rate_hz=args.rate, overwrite=True)
    gt = _read_ground_truth(bag_path)
    log(f"[1/4] wrote {bag_path} ({args.storage}; {len(manifest)} frames at {args.rate:g} Hz: "
        f"{', '.join(m['name'] for m in manifest)}; {manifest[0]['width']}x{manifest[0]['height']} rgb8, "
        f"with camera_info and ground truth) in {time.monotonic() - t0:.1f} s")

    children: List[Child] = []
    receiver: Optional[Receiver] = None
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        receiver = Receiver(domain)
        node, ready = _start_node(args, receiver, env, out, domain)
        children.append(node)
        if not ready:
            return 1
        children.append(_replay(args, receiver, node, env, out, bag_path, [m["stamp_ns"] for m in manifest]))
        return _report(args, receiver, manifest, gt, out, domain, bag_path, t_start)
    except KeyboardInterrupt:
        log("demo interrupted; stopping the node and the player")
        return 130
    finally:
        for c in reversed(children):
            c.stop()
        if receiver is not None:
            receiver.close()
        signal.signal(signal.SIGTERM, previous)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


if __name__ == "__main__":
    code = main()
    if uses_tcp_transport():  # the receiver's TCP participant was left undestroyed (madis_ros.shutdown)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
