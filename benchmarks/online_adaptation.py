"""Does online adaptation delay inference? Newest-pair latency at 10 Hz, adaptation off vs on.

    python benchmarks/online_adaptation.py                       # student, 640x480, 10 Hz
    python benchmarks/online_adaptation.py --rounds 3 --seconds 20 --min-interval 0.5
    python benchmarks/online_adaptation.py --modes off,process     # only the node's default

What it runs (in one process, no ROS): the node's worker pattern without DDS. A pair
"arrives" every 1/rate s (a 640x480 crop of the Motorcycle pair, re-encoded as a fresh
array each time); the inference thread takes the newest one, calls
``OnlineAdapter.sync_into`` (adapted weights, when new ones exist), runs
``StereoEstimator.predict`` and offers the pair to the adapter. Latency = result ready
minus arrival of the pair it was computed on. Pairs that arrive while inference is busy
are superseded (counted), as in the node. Each round runs every mode in turn (off; the
adapter as a thread of this process, ``OnlineAdapter``; in a child process,
``OnlineAdapterProcess``, the node's default), so that a change in the machine's
background load hits all of them.

Issue 17's target: p95 with adaptation within 20 % of without.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from madis_core.adaptation.online import OnlineAdapter, online_config  # noqa: E402
from madis_core.adaptation.online_process import OnlineAdapterProcess  # noqa: E402
from madis_core.adaptation.sources import MotorcycleSource, load_pairs  # noqa: E402
from madis_core.backends.torch_backend import TorchBackend  # noqa: E402
from madis_core.checkpoint import load_registry_model  # noqa: E402
from madis_core.estimator import StereoEstimator  # noqa: E402


def frame_pair(width: int, height: int):
    pair = load_pairs(MotorcycleSource())[0]
    h, w = pair.left.shape[:2]
    if width > w or height > h:
        import cv2

        scale = max(width / w, height / h)
        size = (int(np.ceil(w * scale)), int(np.ceil(h * scale)))
        return cv2.resize(pair.left, size)[:height, :width], cv2.resize(pair.right, size)[:height, :width]
    return pair.left[:height, :width], pair.right[:height, :width]


def run_round(est: StereoEstimator, online, left, right, rate: float, seconds: float) -> dict:
    """Arrivals on a timer thread, inference on this thread (newest pair only)."""
    cond = threading.Condition()
    state = {"slot": None, "stop": False, "arrived": 0, "superseded": 0}

    def camera():
        period, t_next = 1.0 / rate, time.monotonic()
        end = t_next + seconds
        while t_next < end:
            time.sleep(max(0.0, t_next - time.monotonic()))
            with cond:
                if state["slot"] is not None:
                    state["superseded"] += 1
                state["slot"] = (left.copy(), right.copy(), time.monotonic())
                state["arrived"] += 1
                cond.notify()
            t_next += period
        with cond:
            state["stop"] = True
            cond.notify()

    cam = threading.Thread(target=camera, daemon=True)
    lat = []
    cam.start()
    while True:
        with cond:
            while state["slot"] is None and not state["stop"]:
                cond.wait()
            if state["slot"] is None:
                break
            (lft, rgt, t_arrive), state["slot"] = state["slot"], None
        if online is not None:
            online.sync_into(est.backend.net)
        est.predict(lft, rgt)
        lat.append((time.monotonic() - t_arrive) * 1e3)
        if online is not None:
            online.offer(lft, rgt)
    cam.join()
    return {"latency_ms": lat, "arrived": state["arrived"], "superseded": state["superseded"]}


def summary(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "mean": float(a.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="student")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=15.0, help="per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; each runs every mode once")
    ap.add_argument("--modes", default="off,thread,process", help="comma-separated: off, thread, process")
    ap.add_argument("--threads", type=int, default=2, help="inference threads")
    ap.add_argument("--adapt-threads", type=int, default=1)
    ap.add_argument("--min-interval", type=float, default=1.0, help="seconds between adaptation steps")
    ap.add_argument("--crop", default="256x320", help="adaptation crop HxW")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = map(int, args.size.lower().split("x"))
    ch, cw = map(int, args.crop.lower().split("x"))
    left, right = frame_pair(w, h)
    net = load_registry_model(args.model)
    est = StereoEstimator(TorchBackend(net, device="cpu"))
    for _ in range(3):
        est.predict(left, right)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "off" not in modes or not set(modes) <= {"off", "thread", "process"}:
        ap.error("--modes: 'off' and any of thread, process")
    results = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes:
            online = None
            if mode != "off":
                kind = OnlineAdapterProcess if mode == "process" else OnlineAdapter
                online = kind(est.backend.net, online_config(crop=(ch, cw)), min_interval_s=args.min_interval,
                              threads=args.adapt_threads).start()
                t0 = time.monotonic()
                while mode == "process" and not online.ready and time.monotonic() - t0 < 60:
                    time.sleep(0.05)  # the child has imported torch and built its network
                time.sleep(0.5)
            res = run_round(est, online, left, right, args.rate, args.seconds)
            if online is not None:
                online.stop()
                res["adapt"] = online.stats()
            results[mode].append(res)
            s = summary(res["latency_ms"])
            extra = (f"; adaptation steps {res['adapt']['adapt_steps']} (step {res['adapt']['adapt_step_ms']:.0f} ms)"
                     if online is not None else "")
            print(f"round {r + 1} adapt {mode:7s}: {s['n']} pairs processed of {res['arrived']}, p50 {s['p50']:.1f} "
                  f"ms p95 {s['p95']:.1f} ms{extra}", flush=True)
    summ = {m: summary([x for r in results[m] for x in r["latency_ms"]]) for m in modes}
    off = summ["off"]
    ratios = {}
    for m in modes:
        if m == "off":
            continue
        steps = sum(r["adapt"]["adapt_steps"] for r in results[m])
        ratios[m] = summ[m]["p95"] / off["p95"]
        print(f"newest-pair latency {args.size} at {args.rate:g} Hz, {args.model}: adapt off p50 {off['p50']:.1f} "
              f"p95 {off['p95']:.1f} ms; adapt as a {m} p50 {summ[m]['p50']:.1f} p95 {summ[m]['p95']:.1f} ms "
              f"({steps} steps): p95 ratio {ratios[m]:.2f} (target <= 1.20: {'met' if ratios[m] <= 1.2 else 'MISSED'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summ, "ratio_p95": ratios, "args": vars(args), "rounds": {
                k: [{kk: vv for kk, vv in r.items() if kk != "latency_ms"} for r in v] for k, v in results.items()}},
                f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
