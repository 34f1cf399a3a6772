"""Latency and throughput of every model and runtime, with OpenCV SGBM in the same run.

    python benchmarks/inference.py                      # CPU (2 threads), all sizes
    python benchmarks/inference.py --device cuda --precision fp16 --runs 200
    python benchmarks/inference.py --models student,sgbm --sizes 640x480 --out bench_out

CPU: wall-clock per predict() (includes pre/post-processing), median of --runs after
--warmup runs. GPU: CUDA events around the network forward on device tensors, median of
>= 100 runs; peak GPU memory from torch.cuda.max_memory_allocated. Weights do not change
speed: a model without shipped weights is timed untrained and marked so.
Writes inference.json and inference.csv to --out.

OpenMP wait policy: PyTorch's intra-op threads spin at every parallel region by default;
when other processes keep the cores busy, a descheduled spinning thread stalls the others
(measured here under load: student at 320x240, 2 threads, 1.9 s per predict spinning vs
0.02 s passive). madis_core, imported first, sets OMP_WAIT_POLICY=PASSIVE unless the
environment already says otherwise (madis_core/runtime.py); benchmarks/contention.py
measures contention itself.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import madis_core  # noqa: E402,F401  (first: the thread policy, madis_core/runtime.py)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from madis_core.checkpoint import shipped_weights  # noqa: E402
from madis_core.estimator import build_estimator, is_classical  # noqa: E402

DEFAULT_MODELS = "sgbm,sgbm-3way,student,student-lite,student@onnxruntime,student-lite@onnxruntime,madis-tiny"
DEFAULT_SIZES = "640x480,960x576,1280x720"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def make_pair(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    left = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    right = np.roll(left, -16, axis=1)
    return left, right


def build(spec: str, device: str, precision: str, threads: int = 0):
    name, _, runtime = spec.partition("@")
    runtime = runtime or "torch"
    if is_classical(name):
        return build_estimator(name, threads=threads or None), "classical"
    trained = shipped_weights(name) is not None
    kw = {} if trained else {"random_init": True}
    if not trained:
        torch.manual_seed(0)  # the same untrained weights every run: the ONNX export cache is keyed by them
    if threads > 0:
        kw["threads"] = threads  # the same thread count as torch.set_num_threads
    est = build_estimator(name, device=device, precision=precision, runtime=runtime, **kw)
    return est, "trained" if trained else "untrained"


def time_cpu(est, left, right, warmup: int, runs: int, budget_s: float = float("inf")) -> list[float]:
    """Wall time per predict(); stops early (after >= 3 runs, and after one warm-up call)
    once ``budget_s`` is spent, so a model that takes seconds per frame does not stall the table."""
    start = time.perf_counter()
    for _ in range(warmup):
        est.predict(left, right)
        if time.perf_counter() - start > budget_s / 4:
            break
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        est.predict(left, right)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 3 and time.perf_counter() - start > budget_s:
            break
    return times


def time_cuda(est, left, right, warmup: int, runs: int) -> tuple[list[float], float]:
    """CUDA events around the batched forward on device tensors (no host transfers)."""
    backend = est.backend
    lt = torch.from_numpy(left).permute(2, 0, 1)[None].float().div(255).to(backend.device)
    rt = torch.from_numpy(right).permute(2, 0, 1)[None].float().div(255).to(backend.device)
    for _ in range(warmup):
        backend.predict_tensors(lt, rt)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        backend.predict_tensors(lt, rt)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times, torch.cuda.max_memory_allocated() / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma list; NAME@onnxruntime for the ONNX runtime")
    ap.add_argument("--sizes", default=DEFAULT_SIZES)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=None, help="timed runs (default 10 on CPU, 100 on GPU)")
    ap.add_argument("--budget-s", type=float, default=30.0,
                    help="CPU: stop timing a model/size after this many seconds (at least 3 runs)")
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print("CUDA requested but not available; run with --device cpu", file=sys.stderr)
        return 2
    runs = args.runs or (100 if on_gpu else 10)
    hw = torch.cuda.get_device_name() if on_gpu else f"{platform.processor() or platform.machine()} CPU, {args.threads} threads"
    print(f"# inference benchmark on {hw}; torch {torch.__version__}; precision {args.precision}; median of {runs} runs")
    rows = []
    for spec in args.models.split(","):
        for size in args.sizes.split(","):
            w, h = map(int, size.lower().split("x"))
            left, right = make_pair(w, h)
            try:
                est, state = build(spec, args.device, args.precision, args.threads)
            except Exception as exc:  # a runtime missing on this machine is reported, not fatal
                print(f"{spec:28s} {size:>9s}  skipped: {exc}")
                continue
            rss0 = rss_mb()
            peak = float("nan")
            if on_gpu and est.device.startswith("cuda") and hasattr(est.backend, "predict_tensors"):
                times, peak = time_cuda(est, left, right, args.warmup, runs)
                clock = "cuda-events"
            else:
                times = time_cpu(est, left, right, args.warmup, runs, args.budget_s)
                clock = "wall"
            med = statistics.median(times)
            row = {"model": spec, "state": state, "size": size, "device": est.device, "clock": clock,
                   "median_ms": round(med, 2), "p90_ms": round(float(np.percentile(times, 90)), 2),
                   "fps": round(1000.0 / med, 1), "runs": len(times), "peak_gpu_mb": round(peak, 1),
                   "rss_delta_mb": round(rss_mb() - rss0, 1)}
            rows.append(row)
            print(f"{spec:28s} {size:>9s}  {med:8.1f} ms  {row['fps']:7.1f} fps  ({state}, {clock}, "
                  f"{len(times)} runs)", flush=True)
            del est
    by_key = {(r["model"], r["size"]): r for r in rows}
    for r in rows:  # runtime speed-ups (issue 8: onnxruntime >= 1.3x PyTorch eager for the student)
        name, _, runtime = r["model"].partition("@")
        base = by_key.get((name, r["size"]))
        if runtime and base is not None:
            r["speedup_vs_torch"] = round(base["median_ms"] / r["median_ms"], 2)
            print(f"# {name} {r['size']}: {runtime} {r['speedup_vs_torch']:.2f}x the speed of torch eager")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"hardware": hw, "torch": torch.__version__, "precision": args.precision, "runs": runs,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_avg": os.getloadavg()}
    (out / "inference.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    if rows:
        with open(out / "inference.csv", "w", newline="") as f:
            fields = list(dict.fromkeys(k for r in rows for k in r))
            wr = csv.DictWriter(f, fieldnames=fields)
            wr.writeheader()
            wr.writerows(rows)
    print(f"# wrote {out / 'inference.json'} and {out / 'inference.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
