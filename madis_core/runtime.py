"""How madis uses the CPU on a machine it shares with other processes (issue 18).

A robot's computer is never idle: drivers, SLAM and planners hold cores while the
stereo model runs. Two things decide whether CPU inference keeps its speed then:

1. **The OpenMP wait policy.** PyTorch's intra-op threads (GNU OpenMP) spin at every
   barrier by default. A spinning thread that shares a core with another process makes
   each inference 10-50x slower (measured: student at 640x480, 2 threads, one of two
   cores busy: 36 ms -> over 1 s). ``apply_thread_policy`` sets ``OMP_WAIT_POLICY=PASSIVE``
   (idle threads sleep) with ``setdefault``, so a value in the user's own environment
   wins. It runs when ``madis_core`` is imported (first statement of its
   ``__init__``), before anything of madis imports torch or onnxruntime, so every entry
   point (``madis``, ``madis-bag``, the node, the demo, the benchmarks, a user's
   ``import madis_core``) gets it from one place.

   The OpenMP runtime reads its environment once, when it is loaded. A script that
   imported torch *before* madis_core already runs spinning threads and nothing can
   change that from inside the process; ``apply_thread_policy`` detects it (an OpenMP
   library already mapped, no policy in the environment), logs one warning that says
   what to do, and ``threads="auto"`` then runs inference on **one** thread: a lone
   thread never waits at a barrier, so it cannot collapse. Import madis_core first or
   export ``OMP_WAIT_POLICY=PASSIVE`` to get the multi-threaded speed back.

2. **The number of inference threads.** ``available_cpus`` is what the process may
   really use: its CPU affinity (``taskset``, ``cpuset``) and its cgroup CPU quota
   (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), whichever is smaller, at least 1.
   ``threads`` (``StereoEstimator.from_pretrained(..., threads=N)``, the node's
   ``threads`` parameter, ``--threads`` flags) overrides it; ``OMP_NUM_THREADS`` in the
   user's environment is honoured as such an override. See ``madis_core.adaptive`` for
   choosing between 1 and N threads at run time.

The estimator applies the chosen count around each ``predict`` call only (torch's
setting is per calling thread under OpenMP, so a node's worker thread needs it too) and
restores the caller's setting afterwards.
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

log = logging.getLogger(__name__)

#: environment defaults applied before an OpenMP runtime loads (the user's own values win)
POLICY_ENV: Dict[str, str] = {
    "OMP_WAIT_POLICY": "PASSIVE",  # GNU/LLVM/Intel OpenMP: idle threads sleep instead of spinning
}
#: any of these set by the user counts as the user choosing the wait behaviour
_USER_WAIT_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
_OPENMP_LIB = re.compile(r"/lib(?:gomp|iomp5|omp)[^/\s]*\.so[^/\s]*$")

#: what apply_thread_policy found and did (read by the estimator and the benchmarks)
STATE: Dict[str, Any] = {"applied": False, "set": {}, "user": {}, "openmp_preloaded": [], "spinning": False}


def openmp_libraries(maps: str = "/proc/self/maps") -> List[str]:
    """Paths of the OpenMP runtimes already loaded into this process (Linux; [] elsewhere)."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return []
    found = {line.split()[-1] for line in text.splitlines() if _OPENMP_LIB.search(line)}
    return sorted(found)


def apply_thread_policy(environ: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Set the thread policy's environment defaults (user's values win); idempotent.
    Returns :data:`STATE`. Called by ``madis_core/__init__.py`` before anything else."""
    env = os.environ if environ is None else environ
    if STATE["applied"] and environ is None:
        return STATE
    user = {k: env[k] for k in _USER_WAIT_KEYS + tuple(POLICY_ENV) + ("OMP_NUM_THREADS",) if k in env}
    preloaded = openmp_libraries() if sys.platform.startswith("linux") else []
    done = {}
    for key, value in POLICY_ENV.items():
        if key not in env:
            env[key] = value
            done[key] = value
    chose_wait = any(k in user for k in _USER_WAIT_KEYS)
    spinning = bool(preloaded) and not chose_wait
    STATE.update(applied=True, set=done, user=user, openmp_preloaded=preloaded, spinning=spinning)
    if spinning:
        log.warning(
            "madis_core was imported after torch/onnxruntime had loaded OpenMP (%s) with its default spinning "
            "waits, which make inference 10-50x slower when another process holds a core. madis runs inference "
            "on 1 thread in this process unless you pass threads=N. To get the multi-threaded speed back, "
            "import madis_core before torch, or export OMP_WAIT_POLICY=PASSIVE before starting Python.",
            ", ".join(os.path.basename(p) for p in preloaded))
    return STATE


# ---------------------------------------------------------------------------------------------
# How many CPUs this process may use
# ---------------------------------------------------------------------------------------------
def affinity_cpus(pid: int = 0) -> int:
    """CPUs in this process's affinity mask (``taskset``/cpuset); os.cpu_count() where unsupported."""
    try:
        return max(1, len(os.sched_getaffinity(pid)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _mounts(proc: str, fstype: str, option: Optional[str] = None) -> List[tuple]:
    """(root, mount point) of the mounts of ``fstype`` (with ``option`` among super options)."""
    out = []
    try:
        lines = Path(proc, "self", "mountinfo").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 3 or r[0] != fstype:
            continue
        if option is None or option in r[2].split(","):
            out.append((f[3], f[4]))
    return out


def _cgroup_dirs(mount_root: str, mount_point: str, cg_path: str, fs_root: str) -> List[Path]:
    """The cgroup's directory and its ancestors up to the mount point (limits nest)."""
    rel = cg_path
    if mount_root != "/" and (rel == mount_root or rel.startswith(mount_root.rstrip("/") + "/")):
        rel = rel[len(mount_root.rstrip("/")):]
    elif mount_root != "/":
        rel = "/"  # namespaced: /proc/self/cgroup is already relative to the mount
    base = Path(fs_root + mount_point)
    parts = [p for p in rel.split("/") if p]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(proc: str = "/proc", fs_root: str = "") -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), the tightest over the
    cgroup and its ancestors; None when unlimited or unknown. cgroup v2 (``cpu.max``)
    and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``). ``proc``/``fs_root`` let tests
    point it at a copy of the files."""
    try:
        lines = Path(proc, "self", "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: List[float] = []
    for line in lines:
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":  # v2 unified hierarchy
            for root, point in _mounts(proc, "cgroup2"):
                for d in _cgroup_dirs(root, point, path, fs_root):
                    try:
                        quota, period = Path(d, "cpu.max").read_text().split()[:2]
                    except (OSError, ValueError):
                        continue
                    if quota != "max" and float(period) > 0:
                        limits.append(float(quota) / float(period))
        elif "cpu" in controllers.split(","):  # v1 cpu controller
            for root, point in _mounts(proc, "cgroup", "cpu"):
                for d in _cgroup_dirs(root, point, path, fs_root):
                    try:
                        quota = float(Path(d, "cpu.cfs_quota_us").read_text())
                        period = float(Path(d, "cpu.cfs_period_us").read_text())
                    except (OSError, ValueError):
                        continue
                    if quota > 0 and period > 0:
                        limits.append(quota / period)
    return min(limits) if limits else None


def available_cpus() -> int:
    """Whole CPUs this process may use: affinity and cgroup quota, the smaller, >= 1. A
    fractional quota rounds down (1.5 CPUs -> 1 thread): two threads on 1.5 CPUs of quota
    are throttled for part of every period, in the middle of an inference."""
    n = affinity_cpus()
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, int(math.floor(quota + 1e-9))))
    return max(1, n)


def parse_threads(value: Any) -> int:
    """``threads`` as given by a user: None/'auto'/0 -> 0 (auto); a positive int; else ValueError."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return 0
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}") from None
    if n < 0 or (isinstance(value, float) and value != n):
        raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}")
    return n


def user_threads() -> int:
    """``OMP_NUM_THREADS`` as the user set it before madis was imported (0 if not)."""
    raw = STATE["user"].get("OMP_NUM_THREADS", "")
    try:
        return max(0, int(str(raw).split(",")[0]))
    except ValueError:
        return 0


def resolve_threads(requested: Any = None) -> int:
    """The fixed thread count for ``requested`` (see module doc): an explicit count, else
    the user's OMP_NUM_THREADS, else 1 when OpenMP spins (imported too late), else
    :func:`available_cpus`."""
    n = parse_threads(requested) or user_threads()
    if n:
        return n
    if STATE["spinning"]:
        return 1
    return available_cpus()


def describe() -> str:
    """One line for logs and benchmark headers."""
    quota = cgroup_cpu_limit()
    return (f"affinity {affinity_cpus()} CPU(s), cgroup quota {'none' if quota is None else f'{quota:g}'}"
            f" -> {available_cpus()} thread(s); OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
            f" ({'user' if 'OMP_WAIT_POLICY' in STATE['user'] else 'madis'})"
            + ("; OpenMP loaded before madis_core: spinning, 1 thread" if STATE["spinning"] else ""))
