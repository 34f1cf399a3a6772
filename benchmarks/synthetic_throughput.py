"""Throughput of the synthetic stereo generator (and of the full training stream).

    python benchmarks/synthetic_throughput.py                 # 256x512, 2 CPU threads
    python benchmarks/synthetic_throughput.py --device cuda --batch 32
    python benchmarks/synthetic_throughput.py --stream        # + augmentation, as training sees it

Prints samples/s after one untimed warm-up batch (overall, and the best of several
windows, which is the least disturbed by other processes on a shared machine). Target (issue 3): >= 20 samples/s
for 256x512 on 2 CPU threads, so the CPU training of the student is not data-bound.
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--max-disparity", type=float, default=192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--seconds", type=float, default=12.0, help="measure for at least this long in total")
    ap.add_argument("--windows", type=int, default=4, help="split the measurement into this many windows")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stream", action="store_true", help="time build_train_loader (generator + augmentation)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    import madis_core  # noqa: F401  (first: the thread policy, madis_core/runtime.py)
    import torch

    torch.set_num_threads(args.threads)
    from madis_core.data import SyntheticStereoGenerator, build_train_loader

    if args.stream:
        src = {"type": "synthetic", "max_disparity": args.max_disparity}
        stream = build_train_loader({"sources": [src]}, args.batch, (args.height, args.width), seed=0, device=args.device)
        draw = lambda: next(stream)  # noqa: E731
    else:
        gen = SyntheticStereoGenerator(args.height, args.width, args.max_disparity, seed=0, device=args.device)
        draw = lambda: gen.generate(args.batch)  # noqa: E731

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    draw()
    sync()
    rates, n_total, wall_total, cpu_total = [], 0, 0.0, 0.0
    for _ in range(args.windows):  # several windows: the best one is least disturbed by other load
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < args.seconds / args.windows or n == 0:
            draw()
            n += args.batch
        sync()
        wall = time.perf_counter() - t0
        rates.append(n / wall)
        n_total, wall_total, cpu_total = n_total + n, wall_total + wall, cpu_total + time.process_time() - c0
    what = "stream (generator + augmentation)" if args.stream else "generator"
    res = {"what": what, "height": args.height, "width": args.width, "batch": args.batch, "threads": args.threads,
           "device": args.device, "samples": n_total, "seconds": wall_total, "samples_per_s": n_total / wall_total,
           "best_window_samples_per_s": max(rates), "ms_per_sample": 1e3 * wall_total / n_total,
           "cpu_ms_per_sample": 1e3 * cpu_total / n_total, "load_avg_1min": os.getloadavg()[0]}
    print(f"synthetic {what}: {args.height}x{args.width}, batch {args.batch}, {args.threads} threads, {args.device}: "
          f"{res['samples_per_s']:.1f} samples/s (best window {res['best_window_samples_per_s']:.1f}; "
          f"{res['ms_per_sample']:.1f} ms/sample wall, {res['cpu_ms_per_sample']:.1f} ms CPU; "
          f"load average {res['load_avg_1min']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
