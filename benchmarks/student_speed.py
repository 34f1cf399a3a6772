"""Student latency against OpenCV SGBM on this CPU, plus params and GFLOPs.

    python benchmarks/student_speed.py [--threads 2] [--rounds 20] [--onnx] [--json out.json]

What it measures (issue 5's acceptance):
- end-to-end ``StereoEstimator.predict`` latency (numpy RGB pair in, float32 disparity
  out, i.e. what the ROS node pays) at 640x480 on the real Motorcycle pair (scikit-
  image), for SGBM (default mode, 128 disparities), SGBM 3-way, ``student`` and
  ``student-lite`` (192-px range), all in this one process with ``--threads`` torch
  and OpenCV threads;
- the runs are interleaved (one call of each estimator per round, ``--rounds`` rounds
  after ``--warmup`` calls each) so that load from other processes hits all of them
  alike; the median per estimator is reported and the ratios student/SGBM and
  student-lite/SGBM-3way (target: <= 1.0);
- parameters, and GFLOPs of one forward at 640x480 and 1280x720
  (``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products,
  2 FLOPs per multiply-add; element-wise ops are not counted).

Untrained weights give the same latency as trained ones, so the networks are built
with ``random_init`` unless shipped weights exist.

OpenMP wait policy: PyTorch's intra-op threads spin at every parallel region by
default. When other processes keep the cores busy (a robot computer running other
nodes, or this shared build machine) a spinning or descheduled thread holds the
others at each barrier and 2-thread PyTorch latency grows 3-10x. ``OMP_WAIT_POLICY=
PASSIVE`` (threads sleep instead of spinning) avoids that at a small cost on an idle
machine; the script sets it unless ``--omp-wait-policy`` says otherwise (it must be
set before torch is imported, hence the late imports). OpenCV's SGBM uses its own
thread pool and is not affected.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List

MODELS = ("student", "student-lite")
TARGETS = {"student": "sgbm", "student-lite": "sgbm-3way"}


def motorcycle_640x480():
    import cv2
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    size = (640, 480)
    return cv2.resize(left, size, interpolation=cv2.INTER_AREA), cv2.resize(right, size, interpolation=cv2.INTER_AREA)


def make_estimator(name: str, runtime: str = "torch"):
    import torch

    from madis_core.checkpoint import shipped_weights
    from madis_core.estimator import build_estimator, is_classical

    if is_classical(name):
        return build_estimator(name, threads=torch.get_num_threads())  # its default search range, 128 disparities
    random_init = shipped_weights(name) is None
    kw = {"threads": torch.get_num_threads()}  # --threads, fixed (benchmarks/contention.py covers "auto")
    return build_estimator(name, device="cpu", runtime=runtime, random_init=random_init, **kw)


def interleaved_latency(estimators: Dict[str, object], left, right, warmup: int, rounds: int
                        ) -> Dict[str, List[float]]:
    for est in estimators.values():
        for _ in range(warmup):
            est.predict(left, right)
    times: Dict[str, List[float]] = {k: [] for k in estimators}
    for _ in range(rounds):
        for key, est in estimators.items():
            t0 = time.perf_counter()
            est.predict(left, right)
            times[key].append((time.perf_counter() - t0) * 1e3)
    return times


def gflops(name: str, height: int, width: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from madis_core.models import build_model

    net = build_model(name).eval()
    x = torch.rand(1, 3, height, width)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x, x)
    return counter.get_total_flops() / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--onnx", action="store_true", help="also time the onnxruntime backend")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--omp-wait-policy", choices=["passive", "active", "default"], default="passive",
                   help="OMP_WAIT_POLICY for PyTorch's threads (default passive; 'default' leaves the environment)")
    args = p.parse_args(argv)
    if args.omp_wait_policy != "default":
        if "torch" in sys.modules:
            raise RuntimeError("--omp-wait-policy must be applied before torch is imported")
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()

    import cv2
    import numpy as np
    import torch

    from madis_core.models import build_model, count_parameters

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    left, right = motorcycle_640x480()
    estimators = {k: make_estimator(k) for k in ("sgbm", "sgbm-3way") + MODELS}
    if args.onnx:
        estimators.update({f"{k} (onnxruntime)": make_estimator(k, "onnxruntime") for k in MODELS})
    load_before = os.getloadavg()[0]
    times = interleaved_latency(estimators, left, right, args.warmup, args.rounds)
    load_after = os.getloadavg()[0]
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"CPU latency at 640x480, {args.threads} threads, median of {args.rounds} interleaved rounds after "
          f"{args.warmup} warm-up calls each (StereoEstimator.predict, numpy in/out); "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
          f"load average {load_before:.2f} -> {load_after:.2f}")
    print(f"{'estimator':28s} {'median ms':>10s} {'p10 ms':>8s} {'p90 ms':>8s}")
    for k, v in times.items():
        print(f"{k:28s} {med[k]:10.1f} {np.percentile(v, 10):8.1f} {np.percentile(v, 90):8.1f}")

    results = {"threads": args.threads, "rounds": args.rounds, "median_ms": med, "ratios": {}, "models": {},
               "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
               "opencv": cv2.__version__, "load_average": [load_before, load_after],
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    ok = True
    print()
    for model, ref in TARGETS.items():
        ratio = med[model] / med[ref]
        results["ratios"][f"{model}/{ref}"] = ratio
        ok &= ratio <= 1.0
        print(f"{model} / {ref}: {ratio:.2f}  ({'meets' if ratio <= 1.0 else 'MISSES'} the target <= 1.0)")
        onnx_key = f"{model} (onnxruntime)"
        if onnx_key in med:
            results["ratios"][f"{model} torch/onnxruntime"] = med[model] / med[onnx_key]
            print(f"{model}: onnxruntime is {med[model] / med[onnx_key]:.2f}x faster than PyTorch eager")

    print()
    print(f"{'model':14s} {'params':>10s} {'GFLOPs 640x480':>15s} {'GFLOPs 1280x720':>16s}")
    for model in MODELS:
        n = count_parameters(build_model(model))
        g1, g2 = gflops(model, 480, 640), gflops(model, 720, 1280)
        results["models"][model] = {"params": n, "gflops_640x480": g1, "gflops_1280x720": g2}
        print(f"{model:14s} {n:10,d} {g1:15.2f} {g2:16.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
