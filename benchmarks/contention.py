"""Speed on a shared CPU (issue 18): quiet vs one core busy vs all cores busy.

    python benchmarks/contention.py                    # the README's table (~4 min on 2 cores)
    python benchmarks/contention.py --threads-study    # adaptive vs fixed 1 / fixed N threads (~2 min)
    python benchmarks/contention.py --quick            # fewer frames, for a smoke test

What it runs, per load (quiet; one core busy; every available core busy, where "busy" is
a bounded busy-loop process this script starts and stops itself, unpinned, like any
other process of a robot):

- **Python API**: a fresh interpreter per model doing what a user's script does,
  ``from madis_core import StereoEstimator; est = StereoEstimator.from_pretrained(M,
  device="cpu"); est.predict(left, right)`` on the Motorcycle pair resized to 640x480;
  median (and p90) of ``--rounds`` calls after 3 warm-up calls;
- **madis-bag eval**: ``madis-bag eval BAG --model M`` on the demo bag (``madis-bag
  record-sample`` with ``--synthetic-frames 15``: 16 frames of 741x500); median of the
  per-frame model time (``inference_ms``) and of the whole per-frame processing
  (``latency_ms``: model + depth + cloud), first frame (lazy initialisation) excluded.

Every child starts with NO thread variable in its environment (OMP_*, GOMP_*, KMP_*,
MKL_*, OPENBLAS_*, OPENCV_*THREAD*, ...: removed from this script's own environment), so
the figures are what a user gets from madis' own defaults (``madis_core/runtime.py``).

"other load" is the CPU, in cores, that processes other than this benchmark's used
during the cell (from /proc/stat), as normal + niced (nice > 0: background work that
yields to ours, but still costs a multi-threaded inference a wake-up delay at each
barrier): on a machine shared with other work, read the figures next to it. ``--wait-quiet S`` waits up to S s before each cell for the
machine to be quiet (other processes at nice <= 0 using < 0.25 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

# stdlib only up here: a worker must import madis_core before anything loads OpenMP
REPO = Path(__file__).resolve().parents[1]
THREAD_ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "OPENCV_FOR_", "OPENCV_THREAD_", "NUMEXPR_",
                       "VECLIB_", "MADIS_THREADS")
MODELS = ("student", "student-lite", "sgbm", "sgbm-3way")
# busy for `on` s, idle for `off` s (off 0: always busy), until the limit or the parent is gone
BUSY = ("import os, sys, time\nend = time.monotonic() + float(sys.argv[1]); on, off = map(float, sys.argv[2:4])\n"
        "parent = os.getppid(); t = time.monotonic()\n"
        "while time.monotonic() < end and os.getppid() == parent:\n"
        "    for _ in range(200000): pass\n"
        "    if off and time.monotonic() - t > on:\n        time.sleep(off); t = time.monotonic()\n")
HZ = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# workers (run in a fresh interpreter)
# ---------------------------------------------------------------------------------------------
def worker_api(args: argparse.Namespace) -> None:
    if args.torch_first:
        import torch  # noqa: F401  (a user script that imported torch before madis_core)
    from madis_core import StereoEstimator  # as a user's script does: first

    import cv2
    import numpy as np
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    h, w = args.size
    left, right = cv2.resize(left, (w, h), interpolation=cv2.INTER_AREA), cv2.resize(right, (w, h), interpolation=cv2.INTER_AREA)
    kw = {} if args.threads == "auto" else {"threads": int(args.threads)}
    est = StereoEstimator.from_pretrained(args.model, device="cpu", **kw)
    for _ in range(3):
        est.predict(left, right)
    times, used = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        est.predict(left, right)
        times.append((time.perf_counter() - t0) * 1e3)
        used.append(est.threads.last)
    print(json.dumps({"median_ms": statistics.median(times), "p90_ms": sorted(times)[int(0.9 * (len(times) - 1))],
                      "threads": est.threads.mode, "used": "".join(map(str, used)),
                      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))


def worker_study(args: argparse.Namespace) -> None:
    """Fixed 1 thread, fixed N threads and adaptive ("auto") estimators of one model in one
    process, called in turn, so that all three see the same load at the same moments."""
    from madis_core import StereoEstimator, runtime

    import cv2
    import numpy as np
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    h, w = args.size
    left, right = cv2.resize(left, (w, h), interpolation=cv2.INTER_AREA), cv2.resize(right, (w, h), interpolation=cv2.INTER_AREA)
    n = runtime.available_cpus()
    ests = {"1": StereoEstimator.from_pretrained(args.model, device="cpu", threads=1),
            str(n): StereoEstimator.from_pretrained(args.model, device="cpu", threads=n),
            "auto": StereoEstimator.from_pretrained(args.model, device="cpu")}
    times: Dict[str, List[float]] = {k: [] for k in ests}
    used: List[int] = []
    for i in range(args.rounds + 3):
        for k, est in ests.items():
            t0 = time.perf_counter()
            est.predict(left, right)
            if i >= 3:
                times[k].append((time.perf_counter() - t0) * 1e3)
                if k == "auto":
                    used.append(est.threads.last)
    print(json.dumps({k: {"median_ms": statistics.median(v), "mean_ms": statistics.fmean(v)} for k, v in times.items()}
                     | {"auto_one_thread_share": used.count(1) / max(1, len(used)), "n": n}))


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(THREAD_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def cpu_busy_s(niced: bool = False) -> float:
    """CPU time (s) all CPUs spent busy since boot: at nice <= 0 (user+system+irq+softirq+
    steal), or with ``niced`` in niced processes (nice > 0: background work that yields)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (f[1] if niced else f[0] + sum(f[2:8]) - f[3] - f[4]) / HZ


def proc_cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Load:
    """``n`` busy-loop processes, bounded: each ends by itself after ``limit_s`` or when
    this script dies, and ``stop`` ends them now."""

    def __init__(self, n: int, limit_s: float = 900.0, on_off: tuple = (0.0, 0.0)):
        self.procs = [subprocess.Popen([sys.executable, "-S", "-c", BUSY, str(limit_s), *map(str, on_off)])
                      for _ in range(n)]
        time.sleep(0.3 if n else 0.0)

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


class Cell:
    """Measures the CPU that other processes used while a child of ours ran."""

    def __init__(self, load: Load):
        self.load = load

    def __enter__(self):
        self.t, self.busy, self.ch, self.ld = time.monotonic(), cpu_busy_s(), children_cpu_s(), self.load.cpu_s()
        self.nice = cpu_busy_s(niced=True)
        return self

    def __exit__(self, *exc):
        wall = max(time.monotonic() - self.t, 1e-3)
        ours = (children_cpu_s() - self.ch) + (self.load.cpu_s() - self.ld)
        self.other = max(0.0, (cpu_busy_s() - self.busy - ours) / wall)
        self.niced = (cpu_busy_s(niced=True) - self.nice) / wall


def wait_quiet(load: Load, max_s: float, limit: float = 0.25) -> None:
    """Wait (up to max_s) until processes other than ours use less than ``limit`` cores."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        b, ld, t = cpu_busy_s(), load.cpu_s(), time.monotonic()
        time.sleep(1.0)
        if (cpu_busy_s() - b - (load.cpu_s() - ld)) / (time.monotonic() - t) < limit:
            return


def clean_cell(load: Load, args: argparse.Namespace, measure_once) -> Dict[str, Any]:
    """``measure_once()`` after waiting for a quiet moment (--wait-quiet), with the other
    load during it."""
    if args.wait_quiet:
        wait_quiet(load, args.wait_quiet)
    t0 = time.monotonic()
    with Cell(load) as cell:
        r = measure_once()
    r["other_load"], r["niced_load"] = round(cell.other, 2), round(cell.niced, 2)
    r["seconds"] = round(time.monotonic() - t0, 1)
    return r


def run_child(cmd: List[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=clean_env(), cwd=str(REPO), capture_output=True, text=True, timeout=timeout)


def api_cell(model: str, args: argparse.Namespace, threads: str = "auto", torch_first: bool = False) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "api", "--model", model, "--threads", threads,
           "--rounds", str(args.rounds), "--size", f"{args.size[0]}x{args.size[1]}"] + (["--torch-first"] if torch_first else [])
    p = run_child(cmd, args.timeout)
    if p.returncode != 0:
        raise RuntimeError(f"API worker {model} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def madis_bag() -> List[str]:
    exe = Path(sys.executable).parent / "madis-bag"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "madis_ros.bag_tool"]


def bag_cell(model: str, bag: Path, args: argparse.Namespace) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "eval.json"
        cmd = madis_bag() + ["eval", str(bag), "--model", model, "--json", str(out)]
        if args.bag_frames:
            cmd += ["--max-frames", str(args.bag_frames)]
        p = run_child(cmd, args.timeout)
        if p.returncode != 0:
            raise RuntimeError(f"madis-bag eval {model} failed ({p.returncode}):\n{p.stderr[-2000:]}")
        s = json.loads(out.read_text())
    frames = s["per_frame"][1:]  # the first frame includes lazy initialisation
    return {"median_ms": statistics.median(r["inference_ms"] for r in frames),
            "frame_ms": statistics.median(r["latency_ms"] for r in frames), "frames": len(frames),
            "threads": s.get("threads")}


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from madis_core import runtime  # the driver's own import; children start clean

    ncpu = runtime.available_cpus()
    loads = [("quiet", 0), ("one core busy", 1), (f"all {ncpu} cores busy", ncpu)]
    rows: List[tuple] = [("api", m, "auto", False) for m in args.models]
    if "student" in args.models:
        rows.append(("api", "student", "auto", True))
    rows += [("bag", m, "auto", False) for m in args.models]
    with tempfile.TemporaryDirectory() as d:
        bag = Path(d) / "sample_bag"
        p = run_child(madis_bag() + ["record-sample", str(bag), "--synthetic-frames", str(args.synthetic_frames)], 300)
        if p.returncode != 0:
            raise RuntimeError(f"madis-bag record-sample failed:\n{p.stderr[-2000:]}")
        results: Dict[str, Dict[str, Any]] = {}
        for name, n in loads:
            load = Load(n)
            try:
                for kind, model, threads, torch_first in rows:
                    key = f"{kind}|{model}|{threads}|{int(torch_first)}"
                    r = clean_cell(load, args, lambda: api_cell(model, args, threads, torch_first) if kind == "api"
                                   else bag_cell(model, bag, args))
                    results.setdefault(key, {})[name] = r
                    print(f"  {name:>18} | {kind} {model} threads={threads}{' torch-first' if torch_first else ''}: "
                          f"{r['median_ms']:.1f} ms ({r['threads']}), other load {r['other_load']:.2f}+"
                          f"{r['niced_load']:.2f} ({r['seconds']:.0f} s)", file=sys.stderr)
            finally:
                load.stop()
    return {"loads": [name for name, _ in loads], "results": results, "cpu": runtime.describe(),
            "size": args.size, "rounds": args.rounds}


def threads_study(args: argparse.Namespace, ncpu: int) -> Dict[str, Any]:
    """Adaptive vs fixed thread counts (worker_study), under the loads above and a load
    that comes and goes (one core busy for 1 s, idle for 1 s)."""
    loads = [("quiet", 0, (0.0, 0.0)), ("one core busy", 1, (0.0, 0.0)), (f"all {ncpu} cores busy", ncpu, (0.0, 0.0)),
             ("one core busy 1 s on / 1 s off", 1, (1.0, 1.0))]
    out: Dict[str, Any] = {}
    for name, n, on_off in loads:
        load = Load(n, on_off=on_off)
        try:
            for model in [m for m in args.models if not m.startswith("sgbm")]:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "study", "--model", model,
                       "--rounds", str(args.study_rounds), "--size", f"{args.size[0]}x{args.size[1]}"]

                def once():
                    p = run_child(cmd, args.timeout)
                    if p.returncode != 0:
                        raise RuntimeError(f"study worker {model} failed:\n{p.stderr[-2000:]}")
                    return json.loads(p.stdout.strip().splitlines()[-1])

                r = clean_cell(load, args, once)
                out.setdefault(model, {})[name] = r
                print(f"  study {name} {model}: " + ", ".join(f"{k} {r[k]['median_ms']:.1f}" for k in ("1", str(r["n"]), "auto"))
                      + f" ms, other load {r['other_load']:.2f}", file=sys.stderr)
        finally:
            load.stop()
    return out


def study_table(study: Dict[str, Any]) -> str:
    lines = ["| model | load | 1 thread ms | N threads ms | adaptive ms | adaptive vs best fixed | adaptive frames on 1 "
             "thread | other load |", "|" + " --- |" * 8]
    for model, by_load in study.items():
        for load, r in by_load.items():
            n = str(r["n"])
            best = min(r["1"]["median_ms"], r[n]["median_ms"])
            lines.append(f"| {model} | {load} | {r['1']['median_ms']:.1f} | {r[n]['median_ms']:.1f} (N={n}) | "
                         f"{r['auto']['median_ms']:.1f} | {r['auto']['median_ms'] / best:.2f}x | "
                         f"{100 * r['auto_one_thread_share']:.0f} % | {r['other_load']:.2f}+{r['niced_load']:.2f} |")
    return "\n".join(lines)


def label(key: str) -> str:
    kind, model, threads, torch_first = key.split("|")
    what = "Python API 640x480" if kind == "api" else "madis-bag eval, model"
    extra = "" if threads == "auto" else f", threads={threads}"
    extra += ", torch imported first" if torch_first == "1" else ""
    return f"{model} | {what}{extra}"


def table(res: Dict[str, Any]) -> str:
    loads = res["loads"]
    head = "| model | entry point | " + " | ".join(f"{l} ms" for l in loads) + " | threads | other load, cores |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for key, r in res["results"].items():
        q = r[loads[0]]["median_ms"]
        cells = [f"{r[l]['median_ms']:.1f}" + ("" if i == 0 else f" ({r[l]['median_ms'] / q:.2f}x)")
                 for i, l in enumerate(loads)]
        other = " / ".join(f"{r[l]['other_load']:.2f}+{r[l]['niced_load']:.2f}" for l in loads)
        lines.append(f"| {label(key)} | " + " | ".join(cells) + f" | {r[loads[0]]['threads']} | {other} |")
    return "\n".join(lines)


def targets(res: Dict[str, Any]) -> List[str]:
    loads, R = res["loads"], res["results"]
    one, out = loads[1], []
    for kind, what in (("api", "Python API"), ("bag", "madis-bag eval")):
        s, g = R.get(f"{kind}|student|auto|0"), R.get(f"{kind}|sgbm|auto|0")
        if s and g:
            ratio = s[one]["median_ms"] / g[one]["median_ms"]
            out.append(f"{'PASS' if ratio <= 1.0 else 'FAIL'}  {what}, one core busy: student {s[one]['median_ms']:.1f} ms "
                       f"= {ratio:.2f}x SGBM ({g[one]['median_ms']:.1f} ms); target <= 1.0x")
    worst = max(((r[one]["median_ms"] / r[loads[0]]["median_ms"], k) for k, r in R.items()
                 if k.endswith("|auto|0")), default=None)
    if worst:
        out.append(f"{'PASS' if worst[0] <= 2.2 else 'FAIL'}  one core busy vs quiet, worst default entry point: "
                   f"{label(worst[1])} {worst[0]:.2f}x; target <= 2.2x")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--rounds", type=int, default=20, help="timed predict calls per API cell (after 3 warm-up)")
    ap.add_argument("--size", default="480x640", help="API input HxW (default 480x640)")
    ap.add_argument("--synthetic-frames", type=int, default=15, help="synthetic frames in the bag (+ Motorcycle)")
    ap.add_argument("--bag-frames", type=int, default=0, help="madis-bag eval --max-frames (0 = all)")
    ap.add_argument("--threads-study", action="store_true",
                    help="instead: adaptive vs fixed 1 and fixed N threads, in turn in one process per load")
    ap.add_argument("--study-rounds", type=int, default=30, help="rounds of the threads study (3 calls each)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="wait up to S s before each cell for other processes (nice <= 0) to use < 0.25 cores")
    ap.add_argument("--quick", action="store_true", help="5 rounds, 3 synthetic bag frames")
    ap.add_argument("--timeout", type=float, default=300.0, help="per child process (s)")
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--worker", choices=["api", "study"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--torch-first", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.worker:
        (worker_api if args.worker == "api" else worker_study)(args)
        return 0
    if args.quick:
        args.rounds, args.synthetic_frames = 5, 3
    t0 = time.monotonic()
    if args.threads_study:
        sys.path.insert(0, str(REPO))
        from madis_core import runtime

        study = threads_study(args, runtime.available_cpus())
        print(f"benchmarks/contention.py --threads-study: {runtime.describe()}; adaptive vs fixed thread counts, the "
              f"three estimators called in turn in one fresh process per model and load, {args.study_rounds} rounds; "
              f"median ms at {args.size[1]}x{args.size[0]} ({time.monotonic() - t0:.0f} s)\n")
        print(study_table(study))
        if args.json:
            Path(args.json).write_text(json.dumps({"study": study, "cpu": runtime.describe()}, indent=2))
        return 0
    res = measure(args)
    res["seconds"] = round(time.monotonic() - t0, 1)
    print(f"benchmarks/contention.py: {res['cpu']}; API: median of {res['rounds']} predict calls at "
          f"{res['size'][1]}x{res['size'][0]}; bag: median model time per frame; each in a fresh process with no "
          f"thread variable in its environment ({res['seconds']:.0f} s)\n")
    print(table(res))
    print()
    res["targets"] = targets(res)
    print("\n".join(res["targets"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
