"""Speed on a shared CPU (issue 18): quiet vs one core busy vs all cores busy.

    python benchmarks/contention.py                    # the README's table (~5 min on 2 cores)
    python benchmarks/contention.py --threads-study    # adaptive vs fixed 1 / fixed N threads (~2 min)
    python benchmarks/contention.py --quick            # fewer frames, for a smoke test

The load is N busy-loop processes (N = the CPUs this process may use) that this script
starts, pauses (SIGSTOP) and resumes (SIGCONT) to switch between quiet, one core busy
and all cores busy, and kills at the end; each also ends by itself after 15 min or when
this script is gone. They are not pinned, like any other process of a robot.

- **Python API**: one fresh interpreter, started with NO thread variable in its
  environment (OMP_*, GOMP_*, KMP_*, MKL_*, OPENBLAS_*, OPENCV_*THREAD*, ...), does what a
  user's script does, ``from madis_core import StereoEstimator;
  StereoEstimator.from_pretrained(M, device="cpu").predict(left, right)``, for every
  model on the Motorcycle pair resized to 640x480. ``--reps`` times over, it switches
  the load and times ``--rounds`` calls of each model after 3 untimed ones (the
  adaptive thread count re-settles), models and loads in rotating order, so every
  figure is a median over moments spread across the whole run and slow drifts of the
  machine hit all cells alike. Then the same for a script that imported torch before
  madis_core (student).
- **madis-bag eval**: ``madis-bag eval BAG --model M`` (same clean environment) on the
  demo bag (``madis-bag record-sample --synthetic-frames 15``: 16 frames of 741x500), one
  process per model and load, ``--bag-reps`` times in rotating order; the median of the
  per-frame model time (``inference_ms``) over all those frames, each process's first
  frame (lazy initialisation) left out.

"other load" is the CPU, in cores, that processes other than this benchmark's used
while a cell was measured (from /proc/stat), as normal + niced (nice > 0: background
work that yields to ours, but still costs a multi-threaded inference a wake-up delay at
each barrier). On a machine shared with other work, read the figures next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

# stdlib only up here: a worker must import madis_core before anything loads OpenMP
REPO = Path(__file__).resolve().parents[1]
THREAD_ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_", "OPENCV_FOR_", "OPENCV_THREAD_", "NUMEXPR_",
                       "VECLIB_")
MODELS = ("student", "student-lite", "sgbm", "sgbm-3way")
# busy for `on` s, idle for `off` s (off 0: always busy), until the limit or the parent is gone
BUSY = ("import os, sys, time\nend = time.monotonic() + float(sys.argv[1]); on, off = map(float, sys.argv[2:4])\n"
        "parent = os.getppid(); t = time.monotonic()\n"
        "while time.monotonic() < end and os.getppid() == parent:\n"
        "    for _ in range(200000): pass\n"
        "    if off and time.monotonic() - t > on:\n        time.sleep(off); t = time.monotonic()\n")
HZ = os.sysconf("SC_CLK_TCK")


# --- measuring the machine -------------------------------------------------------------------
def cpu_busy_s(niced: bool = False) -> float:
    """CPU time (s) all CPUs spent busy since boot: at nice <= 0 (user+system+irq+softirq+
    steal), or with ``niced`` in niced processes (nice > 0)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (f[1] if niced else f[0] + sum(f[2:8]) - f[3] - f[4]) / HZ


def proc_cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def own_cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class Meter:
    """CPU (cores) used by processes other than ours (``who``: RUSAGE_SELF in a worker,
    RUSAGE_CHILDREN for waited-for children in the driver; plus the busy loops)."""

    def __init__(self, busy_pids: List[int], who: int):
        self.pids, self.who = busy_pids, who
        self.other = self.niced = self.wall = 0.0

    def __enter__(self):
        self._t, self._b, self._n = time.monotonic(), cpu_busy_s(), cpu_busy_s(niced=True)
        self._own = own_cpu_s(self.who) + sum(proc_cpu_s(p) for p in self.pids)
        return self

    def __exit__(self, *exc):
        wall = max(time.monotonic() - self._t, 1e-3)
        own = own_cpu_s(self.who) + sum(proc_cpu_s(p) for p in self.pids) - self._own
        self.other += max(0.0, cpu_busy_s() - self._b - own)
        self.niced += cpu_busy_s(niced=True) - self._n
        self.wall += wall

    def cores(self) -> Dict[str, float]:
        return {"other_load": round(self.other / max(self.wall, 1e-3), 2),
                "niced_load": round(self.niced / max(self.wall, 1e-3), 2)}


def set_load(pids: List[int], k: int) -> None:
    """First ``k`` busy loops running, the others paused."""
    for i, pid in enumerate(pids):
        os.kill(pid, signal.SIGCONT if i < k else signal.SIGSTOP)
    time.sleep(0.3)


class Load:
    """``n`` bounded busy-loop processes, paused until ``set_load``; ``stop`` kills them."""

    def __init__(self, n: int, limit_s: float = 900.0, on_off: tuple = (0.0, 0.0), paused: bool = True):
        self.procs = [subprocess.Popen([sys.executable, "-S", "-c", BUSY, str(limit_s), *map(str, on_off)])
                      for _ in range(n)]
        self.pids = [p.pid for p in self.procs]
        if paused:
            set_load(self.pids, 0)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


# --- workers (fresh interpreters) ------------------------------------------------------------
def _pair(size):
    import cv2
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    h, w = size
    return (cv2.resize(left, (w, h), interpolation=cv2.INTER_AREA),
            cv2.resize(right, (w, h), interpolation=cv2.INTER_AREA))


def worker_api(args: argparse.Namespace) -> None:
    """Every model under every load, interleaved (see module doc); prints JSON."""
    if args.torch_first:
        import torch  # noqa: F401  (a user script that imported torch before madis_core)
    from madis_core import StereoEstimator  # as a user's script does

    left, right = _pair(args.size)
    ests = {m: StereoEstimator.from_pretrained(m, device="cpu") for m in args.models}
    pids = [int(p) for p in args.pids.split(",") if p]
    loads = list(range(len(args.loads)))
    times = {m: {i: [] for i in loads} for m in ests}
    used = {m: {i: [] for i in loads} for m in ests}
    meters = {m: {i: Meter(pids, resource.RUSAGE_SELF) for i in loads} for m in ests}
    for rep in range(args.reps):
        for li in loads[rep % len(loads):] + loads[:rep % len(loads)]:
            set_load(pids, args.loads[li])
            order = list(ests)[rep % len(ests):] + list(ests)[:rep % len(ests)]
            for m in order:
                for _ in range(3):
                    ests[m].predict(left, right)
                with meters[m][li]:
                    for _ in range(args.rounds):
                        t0 = time.perf_counter()
                        ests[m].predict(left, right)
                        times[m][li].append((time.perf_counter() - t0) * 1e3)
                        used[m][li].append(ests[m].threads.last)
    set_load(pids, 0)
    out = {m: {str(i): {"median_ms": statistics.median(times[m][i]), "n": len(times[m][i]),
                        "one_thread_share": round(used[m][i].count(1) / len(used[m][i]), 2),
                        "threads": ests[m].threads.mode, **meters[m][i].cores()} for i in loads} for m in ests}
    print(json.dumps(out))


def worker_study(args: argparse.Namespace) -> None:
    """Fixed 1 thread, fixed N threads and adaptive ("auto") estimators of one model in one
    process, called in turn, so that all three see the same load at the same moments."""
    from madis_core import StereoEstimator, runtime

    left, right = _pair(args.size)
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
    print(json.dumps({k: {"median_ms": statistics.median(v)} for k, v in times.items()}
                     | {"auto_one_thread_share": used.count(1) / max(1, len(used)), "n": n}))


# --- the driver ------------------------------------------------------------------------------
def clean_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(THREAD_ENV_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_child(cmd: List[str], timeout: float) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=clean_env(), cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p


def madis_bag() -> List[str]:
    exe = Path(sys.executable).parent / "madis-bag"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "madis_ros.bag_tool"]


def api_rows(args, load: Load, loads: List[int], models: List[str], torch_first: bool) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "api", "--models", *models,
           "--pids", ",".join(map(str, load.pids)), "--loads", *map(str, loads), "--reps", str(args.reps),
           "--rounds", str(args.rounds), "--size", f"{args.size[0]}x{args.size[1]}"] + (["--torch-first"] if torch_first else [])
    res = json.loads(run_child(cmd, args.timeout).stdout.strip().splitlines()[-1])
    return {f"api|{m}|{int(torch_first)}": r for m, r in res.items()}


def bag_rows(args, load: Load, loads: List[int], bag: Path) -> Dict[str, Any]:
    frames = {m: {i: [] for i in range(len(loads))} for m in args.models}
    meters = {m: {i: Meter(load.pids, resource.RUSAGE_CHILDREN) for i in range(len(loads))} for m in args.models}
    mode: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(args.bag_reps):
            for li in list(range(len(loads)))[rep % len(loads):] + list(range(len(loads)))[:rep % len(loads)]:
                set_load(load.pids, loads[li])
                for m in args.models[rep % len(args.models):] + args.models[:rep % len(args.models)]:
                    out = Path(d) / "eval.json"
                    with meters[m][li]:
                        run_child(madis_bag() + ["eval", str(bag), "--model", m, "--json", str(out)], args.timeout)
                    s = json.loads(out.read_text())
                    frames[m][li] += [r["inference_ms"] for r in s["per_frame"][1:]]
                    mode[m] = s.get("threads")
                    print(f"  bag {m} load {loads[li]}: {statistics.median(r['inference_ms'] for r in s['per_frame'][1:]):.1f}"
                          f" ms", file=sys.stderr)
    set_load(load.pids, 0)
    return {f"bag|{m}|0": {str(i): {"median_ms": statistics.median(v), "n": len(v), "threads": mode[m],
                                    **meters[m][i].cores()} for i, v in by.items()} for m, by in frames.items()}


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from madis_core import runtime  # the driver's own import; children start clean

    ncpu = runtime.available_cpus()
    names, loads = ["quiet", "one core busy", f"all {ncpu} cores busy"], [0, 1, ncpu]
    load = Load(ncpu)
    try:
        results = api_rows(args, load, loads, args.models, False)
        print("  API done", file=sys.stderr)
        if "student" in args.models:
            results |= api_rows(args, load, loads, ["student"], True)
        with tempfile.TemporaryDirectory() as d:
            bag = Path(d) / "sample_bag"
            run_child(madis_bag() + ["record-sample", str(bag), "--synthetic-frames", str(args.synthetic_frames)], 300)
            results |= bag_rows(args, load, loads, bag)
    finally:
        load.stop()
    return {"loads": names, "results": results, "cpu": runtime.describe(), "size": args.size}


def threads_study(args: argparse.Namespace, ncpu: int) -> Dict[str, Any]:
    """Adaptive vs fixed thread counts (worker_study), under the loads above and a load
    that comes and goes (one core busy for 1 s, idle for 1 s)."""
    out: Dict[str, Any] = {}
    load, toggling = Load(ncpu), Load(1, on_off=(1.0, 1.0))
    try:
        for name, k, tog in (("quiet", 0, False), ("one core busy", 1, False), (f"all {ncpu} cores busy", ncpu, False),
                             ("one core busy 1 s on / 1 s off", 0, True)):
            set_load(load.pids, k)
            set_load(toggling.pids, int(tog))
            for model in [m for m in args.models if not m.startswith("sgbm")]:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "study", "--model", model,
                       "--rounds", str(args.study_rounds), "--size", f"{args.size[0]}x{args.size[1]}"]
                with Meter(load.pids + toggling.pids, resource.RUSAGE_CHILDREN) as meter:
                    p = run_child(cmd, args.timeout)
                r = json.loads(p.stdout.strip().splitlines()[-1]) | meter.cores()
                out.setdefault(model, {})[name] = r
                print(f"  study {name} {model}: " + ", ".join(f"{k} {r[k]['median_ms']:.1f}" for k in ("1", str(r["n"]), "auto"))
                      + f" ms, other load {r['other_load']:.2f}+{r['niced_load']:.2f}", file=sys.stderr)
    finally:
        load.stop()
        toggling.stop()
    return out


# --- tables ----------------------------------------------------------------------------------
def study_table(study: Dict[str, Any]) -> str:
    lines = ["| model | load | 1 thread ms | N threads ms | adaptive ms | adaptive vs best fixed | adaptive frames on 1 "
             "thread | other load, cores |", "|" + " --- |" * 8]
    for model, by_load in study.items():
        for load, r in by_load.items():
            n = str(r["n"])
            best = min(r["1"]["median_ms"], r[n]["median_ms"])
            lines.append(f"| {model} | {load} | {r['1']['median_ms']:.1f} | {r[n]['median_ms']:.1f} (N={n}) | "
                         f"{r['auto']['median_ms']:.1f} | {r['auto']['median_ms'] / best:.2f}x | "
                         f"{100 * r['auto_one_thread_share']:.0f} % | {r['other_load']:.2f}+{r['niced_load']:.2f} |")
    return "\n".join(lines)


def label(key: str) -> str:
    kind, model, torch_first = key.split("|")
    what = "Python API 640x480" if kind == "api" else "madis-bag eval (741x500), model time"
    return f"{model} | {what}{', torch imported first' if torch_first == '1' else ''}"


def table(res: Dict[str, Any]) -> str:
    names = res["loads"]
    head = "| model | entry point | " + " | ".join(f"{n} ms" for n in names) + " | threads | other load, cores |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for key, r in res["results"].items():
        q = r["0"]["median_ms"]
        cells = [f"{r[str(i)]['median_ms']:.1f}" + ("" if i == 0 else f" ({r[str(i)]['median_ms'] / q:.2f}x)")
                 for i in range(len(names))]
        other = " / ".join(f"{r[str(i)]['other_load']:.2f}+{r[str(i)]['niced_load']:.2f}" for i in range(len(names)))
        lines.append(f"| {label(key)} | " + " | ".join(cells) + f" | {r['0']['threads']} | {other} |")
    return "\n".join(lines)


def targets(res: Dict[str, Any]) -> List[str]:
    R, out = res["results"], []
    for kind, what in (("api", "Python API"), ("bag", "madis-bag eval")):
        s, g = R.get(f"{kind}|student|0"), R.get(f"{kind}|sgbm|0")
        if s and g:
            ratio = s["1"]["median_ms"] / g["1"]["median_ms"]
            out.append(f"{'PASS' if ratio <= 1.0 else 'FAIL'}  {what}, one core busy: student {s['1']['median_ms']:.1f} ms "
                       f"= {ratio:.2f}x SGBM ({g['1']['median_ms']:.1f} ms); target <= 1.0x")
    worst = max(((r["1"]["median_ms"] / r["0"]["median_ms"], k) for k, r in R.items()), default=None)
    if worst:
        out.append(f"{'PASS' if worst[0] <= 2.2 else 'FAIL'}  one core busy vs quiet, worst entry point: "
                   f"{label(worst[1])} {worst[0]:.2f}x; target <= 2.2x")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--reps", type=int, default=3, help="API: passes over all loads and models")
    ap.add_argument("--rounds", type=int, default=8, help="API: timed predict calls per model, load and pass")
    ap.add_argument("--bag-reps", type=int, default=2, help="madis-bag eval runs per model and load")
    ap.add_argument("--size", default="480x640", help="API input HxW (default 480x640)")
    ap.add_argument("--synthetic-frames", type=int, default=15, help="synthetic frames in the bag (+ Motorcycle)")
    ap.add_argument("--threads-study", action="store_true",
                    help="instead: adaptive vs fixed 1 and fixed N threads, in turn in one process per load")
    ap.add_argument("--study-rounds", type=int, default=30, help="rounds of the threads study (3 calls each)")
    ap.add_argument("--quick", action="store_true", help="1 pass of 3 rounds, 1 bag run of 4 frames")
    ap.add_argument("--timeout", type=float, default=600.0, help="per child process (s)")
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--worker", choices=["api", "study"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--pids", default="", help=argparse.SUPPRESS)
    ap.add_argument("--loads", nargs="+", type=int, default=[0], help=argparse.SUPPRESS)
    ap.add_argument("--torch-first", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.worker:
        (worker_api if args.worker == "api" else worker_study)(args)
        return 0
    if args.quick:
        args.reps, args.rounds, args.bag_reps, args.synthetic_frames, args.study_rounds = 1, 3, 1, 3, 5
    t0 = time.monotonic()
    sys.path.insert(0, str(REPO))
    from madis_core import runtime

    if args.threads_study:
        study = threads_study(args, runtime.available_cpus())
        print(f"benchmarks/contention.py --threads-study: {runtime.describe()}; the three estimators called in turn "
              f"in one fresh process per model and load, {args.study_rounds} rounds; median ms at "
              f"{args.size[1]}x{args.size[0]} ({time.monotonic() - t0:.0f} s)\n")
        print(study_table(study))
        if args.json:
            Path(args.json).write_text(json.dumps({"study": study, "cpu": runtime.describe()}, indent=2))
        return 0
    res = measure(args)
    res["seconds"] = round(time.monotonic() - t0, 1)
    print(f"benchmarks/contention.py: {res['cpu']}; fresh processes with no thread variable in their environment; "
          f"API: median of {args.reps} x {args.rounds} predict calls per cell at {args.size[1]}x{args.size[0]}, "
          f"loads and models interleaved; madis-bag eval: median model time per frame over {args.bag_reps} runs "
          f"({res['seconds']:.0f} s)\n")
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
