"""The suite cannot hang (issue 19): a test stuck in C code is ended, and nodes using the
TCP large-data transport exit in bounded time.

The hang that issue 19 reports is a thread blocked on a mutex inside Fast DDS while holding
the GIL, where pytest-timeout's SIGALRM handler never runs. The first two tests reproduce
exactly that shape without DDS (a second ``pthread_mutex_lock`` of a held default mutex,
called through ``ctypes.PyDLL``, which keeps the GIL): under plain pytest-timeout the run is
still stuck at its deadline; under this suite's conftest it ends with the stack dumped.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rosutil import NodeProcess, free_domain, start_publisher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

STUCK_TEST = '''
import ctypes

def test_stuck_in_c_holding_the_gil():
    libc = ctypes.PyDLL(None)               # PyDLL: the GIL stays held during the call
    mutex = ctypes.create_string_buffer(64)  # zeroed = PTHREAD_MUTEX_INITIALIZER (glibc)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)           # blocks forever, like Fast DDS's TCP disconnect
'''


def _stuck_suite(tmp_path: Path, with_conftest: bool) -> Path:
    (tmp_path / "test_stuck.py").write_text(STUCK_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntimeout = 2\n")
    if with_conftest:
        shutil.copy(REPO / "test" / "conftest.py", tmp_path / "conftest.py")
    return tmp_path


def _run(folder: Path, limit: float):
    env = dict(os.environ, PYTHONPATH=str(REPO), MADIS_TEST_HARD_GRACE_S="2")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
        return proc.returncode, time.monotonic() - t0, out.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, time.monotonic() - t0, out.decode(errors="replace")


def test_plain_pytest_timeout_cannot_end_a_test_stuck_in_c(tmp_path):
    """The situation before: pytest-timeout's 2 s limit is long past and the run is still stuck."""
    rc, elapsed, out = _run(_stuck_suite(tmp_path, with_conftest=False), limit=10.0)
    assert rc is None, f"expected a hang, got rc {rc} after {elapsed:.1f} s:\n{out}"


def test_conftest_watchdog_ends_a_test_stuck_in_c_and_dumps_the_stack(tmp_path):
    rc, elapsed, out = _run(_stuck_suite(tmp_path, with_conftest=True), limit=60.0)
    assert rc is not None and rc != 0, f"the run did not end (or passed): rc {rc}\n{out}"
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert "Timeout (0:00:04)!" in out and "test_stuck_in_c_holding_the_gil" in out, out


@pytest.mark.timeout(120)
def test_node_on_the_tcp_large_data_transport_exits_in_bounded_time_with_rc_0():
    """SIGINT while images stream in over FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA: the node
    publishes what it has, skips the DDS teardown that can deadlock, and exits 0 at once."""
    domain = free_domain()
    node = NodeProcess({"model": "sgbm"}, domain, transport="large_data",
                       extra_args=["--log-level", "madis_stereo:=debug"]).start()
    pub = None
    try:
        assert node.wait_for_log(r"model .* sync", 60), node.log_text()
        pub = start_publisher(domain, transport="large_data", width=640, height=480, rate=10, duration=60)
        assert node.wait_for_log(r"frame stamp_ns=\d+", 60), node.log_text() + "\npublisher:\n" + pub.log_text()
        t0 = time.monotonic()
        os.killpg(node.pid, signal.SIGINT)
        rc = node.wait(timeout=10.0)
        elapsed = time.monotonic() - t0
    finally:
        if pub is not None:
            pub.stop()
        node.stop()
    log = node.log_text()
    assert rc == 0, f"rc {rc} after SIGINT\n{log}"
    assert elapsed < 5.0, f"exit took {elapsed:.1f} s"
    assert re.search(r"exiting without destroying the DDS participant.*PR 6066", log), log
    assert "Traceback" not in log and "[ERROR]" not in log, log
