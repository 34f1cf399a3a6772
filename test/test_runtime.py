"""The thread policy and thread count on a shared CPU (madis_core/runtime.py, issue 18).

Real interpreters started with a clean environment, real torch, real shipped models.
No timing assertions: what is checked is the environment and thread counts a process
ends up with, and (for the wait policy) whether idle OpenMP threads burn CPU at all.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from madis_core import runtime
from madis_core.inference_threads import AdaptiveThreadCount, candidates

REPO = Path(__file__).resolve().parents[1]
THREAD_PREFIXES = ("OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_")
NCPU = len(os.sched_getaffinity(0))
needs_2_cpus = pytest.mark.skipif(NCPU < 2, reason="needs 2 CPUs in the affinity mask")


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(THREAD_PREFIXES)}
    env.update(extra)
    return env


def run_py(code: str, env: dict | None = None, preexec_fn=None, timeout: float = 240):
    """Run ``code`` in a fresh interpreter; returns (last stdout line as JSON, stderr)."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=clean_env() if env is None else env,
                       capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


# CPU the process burns while it sleeps after some parallel torch work: the OpenMP workers
# spin (ACTIVE) or sleep (PASSIVE) while waiting for the next parallel region.
IDLE_CPU = """
import time, torch
torch.set_num_threads(2)
x = torch.randn(512, 512)
for _ in range(20):
    x = torch.tanh(x @ x)
c0 = time.process_time(); time.sleep(1.0); idle_cpu = time.process_time() - c0
"""


@needs_2_cpus
def test_import_madis_core_sets_passive_waits_and_the_users_environment_wins():
    code = "import os, madis_core\nfrom madis_core import runtime\n" + IDLE_CPU + """
import json; print(json.dumps({"policy": os.environ.get("OMP_WAIT_POLICY"), "set": runtime.STATE["set"],
                               "spinning": runtime.STATE["spinning"], "idle_cpu": idle_cpu}))"""
    ours, err = run_py(code)
    assert ours["policy"] == "PASSIVE" and ours["set"] == {"OMP_WAIT_POLICY": "PASSIVE"}, ours
    assert not ours["spinning"] and "imported after" not in err
    assert ours["idle_cpu"] < 0.05, f"idle OpenMP threads burned {ours['idle_cpu']:.2f} s of CPU in 1 s of sleep"
    users, err = run_py(code, clean_env(OMP_WAIT_POLICY="ACTIVE"))
    assert users["policy"] == "ACTIVE" and users["set"] == {}, users
    # the check above can fail: with the user's ACTIVE policy the idle worker spins through the sleep
    assert users["idle_cpu"] > 0.15, f"ACTIVE policy, yet only {users['idle_cpu']:.2f} s of idle CPU"


PROBE_ESTIMATOR = """
import json, os, torch
from madis_core import runtime
from madis_core.backends.torch_backend import TorchBackend
from madis_core.estimator import StereoEstimator
from skimage import data

class Probe(TorchBackend):  # the real student-lite, recording the thread count its forward ran with
    seen = []
    def predict_tensors(self, left, right):
        Probe.seen.append(torch.get_num_threads())
        return super().predict_tensors(left, right)

left, right, _ = data.stereo_motorcycle()
left, right = left[:240, :320], right[:240, :320]
torch.set_num_threads(2)
est = StereoEstimator(Probe("student-lite", device="cpu"), THREADS)
for _ in range(3):
    est.predict(left, right)
print(json.dumps({"mode": est.threads.mode, "seen": Probe.seen, "after": torch.get_num_threads(),
                  "available": runtime.available_cpus(), "resolved": runtime.resolve_threads(THREADS)}))
"""


def probe(threads=None, first: str = "import madis_core", env=None, preexec_fn=None):
    code = first + "\n" + PROBE_ESTIMATOR.replace("THREADS", repr(threads))
    return run_py(code, env, preexec_fn)


@needs_2_cpus
def test_torch_imported_first_warns_and_runs_one_thread():
    out, err = probe(first="import torch, madis_core")
    assert "imported after torch" in err and "OMP_WAIT_POLICY=PASSIVE" in err, err[-2000:]
    assert out["mode"] == "1" and out["seen"] == [1, 1, 1], out
    assert out["after"] == 2, "the caller's torch thread count must be restored after predict"
    # a user who exported the policy gets no warning and all cores
    out, err = probe(first="import torch, madis_core", env=clean_env(OMP_WAIT_POLICY="PASSIVE"))
    assert "imported after" not in err and out["mode"] == f"adaptive 1..{NCPU}", (out, err[-2000:])


@needs_2_cpus
def test_thread_count_follows_affinity_and_explicit_settings():
    cpu = min(os.sched_getaffinity(0))
    out, _ = probe(preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert out["available"] == 1 and out["mode"] == "1" and out["seen"] == [1, 1, 1], out
    out, _ = probe()
    assert out["available"] == NCPU and out["mode"] == f"adaptive 1..{NCPU}", out
    assert set(out["seen"]) <= set(candidates(NCPU)) and out["after"] == 2, out
    out, _ = probe(env=clean_env(OMP_NUM_THREADS="1"))  # the user's environment is an explicit choice
    assert out["mode"] == "1" and out["resolved"] == 1, out
    # taskset on a running interpreter's child process: the same through the command line
    r = subprocess.run(["taskset", "-c", str(cpu), sys.executable, "-c",
                        "from madis_core import runtime; print(runtime.available_cpus(), runtime.resolve_threads())"],
                       env=clean_env(), capture_output=True, text=True, timeout=60)
    if r.returncode == 0:  # taskset is util-linux; os.sched_setaffinity above covers machines without it
        assert r.stdout.split() == ["1", "1"], r.stdout


def test_explicit_threads_apply_during_predict_only_and_are_validated():
    import torch
    from skimage import data

    from madis_core import StereoEstimator
    from madis_core.backends.torch_backend import TorchBackend

    class Probe(TorchBackend):  # the real student-lite, recording the thread count its forward ran with
        seen: list = []

        def predict_tensors(self, left, right):
            Probe.seen.append(torch.get_num_threads())
            return super().predict_tensors(left, right)

    left, right, _ = data.stereo_motorcycle()
    caller = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        est = StereoEstimator(Probe("student-lite", device="cpu"), 1)
        est.predict(left[:96, :160], right[:96, :160])
        assert est.threads.mode == "1" and Probe.seen == [1] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(caller)
    assert StereoEstimator.from_pretrained("sgbm", threads=1).threads.mode == "1"

    # the backend contract says whose count to set (``thread_library``), subclasses included
    import cv2
    from madis_core.backends.sgbm import SGBMBackend

    class SgbmProbe(SGBMBackend):
        seen: list = []

        def predict_checked(self, left, right):
            SgbmProbe.seen.append(cv2.getNumThreads())
            return super().predict_checked(left, right)

    cv_caller = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        StereoEstimator(SgbmProbe(num_disparities=16), 1).predict(left[:96, :160], right[:96, :160])
        assert SgbmProbe.seen == [1] and cv2.getNumThreads() == 3, SgbmProbe.seen
    finally:
        cv2.setNumThreads(cv_caller)
    assert runtime.parse_threads("auto") == 0 and runtime.parse_threads(None) == 0 and runtime.parse_threads(3) == 3
    for bad in (-1, "two", 1.5):
        with pytest.raises(ValueError, match="threads"):
            StereoEstimator.from_pretrained("sgbm", threads=bad)


def _fake_fs(tmp_path: Path, cgroup: str, mountinfo: str, files: dict) -> str:
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text(cgroup)
    (tmp_path / "proc" / "self" / "mountinfo").write_text(mountinfo)
    for rel, text in files.items():
        p = tmp_path / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(tmp_path / "proc")


def test_cgroup_quota_v2_v1_nesting_and_namespaces(tmp_path):
    v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    proc = _fake_fs(tmp_path / "a", "0::/robot/stereo\n", v2, {
        "/sys/fs/cgroup/cpu.max": "max 100000\n", "/sys/fs/cgroup/robot/cpu.max": "150000 100000\n",
        "/sys/fs/cgroup/robot/stereo/cpu.max": "max 100000\n"})
    assert runtime.cgroup_cpu_limit(proc, str(tmp_path / "a")) == 1.5  # the parent's limit applies
    proc = _fake_fs(tmp_path / "b", "0::/\n", v2, {"/sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert runtime.cgroup_cpu_limit(proc, str(tmp_path / "b")) is None
    # a container: the cgroup namespace shows "/" and the mount's root is the container's cgroup
    v2ns = "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    proc = _fake_fs(tmp_path / "c", "0::/\n", v2ns, {"/sys/fs/cgroup/cpu.max": "50000 100000\n"})
    assert runtime.cgroup_cpu_limit(proc, str(tmp_path / "c")) == 0.5
    v1 = ("32 31 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
          "33 31 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    proc = _fake_fs(tmp_path / "d", "4:memory:/x\n3:cpu,cpuacct:/kube/pod1\n", v1, {
        "/sys/fs/cgroup/cpu,cpuacct/kube/pod1/cpu.cfs_quota_us": "250000\n",
        "/sys/fs/cgroup/cpu,cpuacct/kube/pod1/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert runtime.cgroup_cpu_limit(proc, str(tmp_path / "d")) == 2.5


def _writable_cpu_cgroup():
    """A real cgroup with a CPU quota this test may create (root, cgroup v1 cpu or v2), else None."""
    for base, quota_file, value in ((Path("/sys/fs/cgroup/cpu"), "cpu.cfs_quota_us", "50000"),
                                    (Path("/sys/fs/cgroup"), "cpu.max", "50000 100000")):
        if not (base / quota_file).exists() and not (base / "cgroup.controllers").exists():
            continue
        d = base / f"madis-test-{uuid.uuid4().hex[:8]}"
        try:
            d.mkdir()
            (d / quota_file).write_text(value)
            return d
        except OSError:
            if d.exists():
                d.rmdir()
    return None


@needs_2_cpus
def test_a_real_cgroup_quota_caps_the_thread_count():
    d = _writable_cpu_cgroup()
    if d is None:
        pytest.skip("cannot create a CPU-limited cgroup here (needs root and a cgroup cpu controller)")
    try:
        def enter():
            (d / "cgroup.procs").write_text(str(os.getpid()))
        out, _ = run_py("""
            import json
            from madis_core import runtime
            print(json.dumps({"quota": runtime.cgroup_cpu_limit(), "n": runtime.available_cpus()}))""",
                        preexec_fn=enter)
        assert out == {"quota": 0.5, "n": 1}, out
    finally:
        d.rmdir()


def test_adaptive_count_follows_the_faster_setting():
    ctl = AdaptiveThreadCount(2, explore_every=10)
    assert ctl.candidates == [2, 1] and candidates(8) == [8, 4, 2, 1] and candidates(1) == [1]
    speed = {2: 40.0, 1: 60.0}  # idle machine: 2 threads faster

    def frames(k):
        used = []
        for _ in range(k):
            n = ctl.choose((480, 640))
            ctl.record(n, speed[n])
            used.append(n)
        return used

    used = frames(200)
    assert 1 in used and ctl.current == 2, used
    assert used[-100:].count(1) <= 2, "exploration must back off while the current count stays the best"
    speed.update({2: 100.0, 1: 55.0})  # another process takes a core: 1 thread is now faster
    used = frames(12)
    assert ctl.current == 1 and used[-6:].count(1) >= 5, used
    speed.update({2: 40.0, 1: 60.0})  # and leaves again: periodic exploration finds 2 again
    used = frames(40)
    assert ctl.current == 2 and used[-10:].count(2) >= 9, used
    n_before = ctl.frames
    ctl.choose((240, 320))  # a new input size starts over
    assert ctl.frames == 0 and n_before > 0


def test_node_parameter_and_bag_flag(tmp_path):
    from madis_ros.params import ParameterError, settings_from_dict

    assert settings_from_dict({"threads": 1}).estimator_kwargs()["threads"] == 1
    assert settings_from_dict({}).estimator_kwargs()["threads"] is None  # auto
    with pytest.raises(ParameterError, match="threads"):
        settings_from_dict({"threads": -1})
    bag = tmp_path / "bag"
    env = clean_env()
    base = [sys.executable, "-m", "madis_ros.bag_tool"]
    r = subprocess.run(base + ["record-sample", str(bag), "--synthetic-frames", "0"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for flag, mode in ((["--threads", "1"], "1"), ([], f"adaptive 1..{NCPU}" if NCPU > 1 else "1")):
        out = tmp_path / f"eval{len(flag)}.json"
        r = subprocess.run(base + ["eval", str(bag), "--model", "student-lite", "--json", str(out)] + flag, cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr
        assert json.loads(out.read_text())["threads"] == mode
