"""Suite-wide guards: no test may hang the run, and tests never share a DDS domain or TCP transport.

1. A hard per-test deadline that works even when a test is stuck inside C code holding the
   GIL (issue 19: a Fast DDS TCP teardown deadlock in ``Node.destroy_node`` where
   pytest-timeout's SIGALRM handler never ran). ``faulthandler.dump_traceback_later`` runs
   its own C watchdog thread: at ``timeout + HARD_GRACE_S`` it prints every thread's stack
   ("Timeout (h:mm:ss)!") to the real terminal and ends the whole pytest process with exit
   status 1. pytest-timeout (``timeout`` in pytest.ini or a test's mark) still fails an
   ordinary Python-level hang first, and the run goes on.
2. The pytest process talks DDS through ``madis_ros.transport``'s same-host profile
   (UDPv4 discovery + large shared-memory segments, no TCP), set here before any rclpy
   participant exists, so no in-process participant can hit the TCP teardown deadlock.
   Child processes get the same profile from ``rosutil.ros_env`` unless a test asks for
   the large-data transport on purpose.
"""
from __future__ import annotations

import faulthandler
import os
import sys

import pytest

import madis_core  # noqa: F401  (first, as users should: the thread policy before any test imports torch)
from madis_ros.transport import apply_shared_memory_env

#: beyond the pytest-timeout limit, so pytest-timeout reports first when it can (the environment
#: variable exists for test_harness.py, which checks the watchdog on a short limit)
HARD_GRACE_S = float(os.environ.get("MADIS_TEST_HARD_GRACE_S", "60"))

apply_shared_memory_env()
_console = None


def _console_file(config):
    """A file on the terminal pytest writes to (fd 2 is redirected into a capture file during tests)."""
    global _console
    if _console is None:
        fd = None
        capman = config.pluginmanager.getplugin("capturemanager")
        capturing = getattr(capman, "_global_capturing", None)
        err = getattr(capturing, "err", None)
        fd = getattr(err, "targetfd_save", None)
        _console = os.fdopen(os.dup(fd if isinstance(fd, int) else sys.__stderr__.fileno()), "w")
    return _console


def _limit_of(item) -> float:
    mark = item.get_closest_marker("timeout")
    if mark is not None and mark.args:
        return float(mark.args[0])
    if mark is not None and "timeout" in mark.kwargs:
        return float(mark.kwargs["timeout"])
    return float(item.config.getini("timeout") or 300)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    faulthandler.dump_traceback_later(_limit_of(item) + HARD_GRACE_S, exit=True, file=_console_file(item.config))
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
