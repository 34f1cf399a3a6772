"""The demo's processes: its children (node, player) and the receiving rclpy node in the demo itself.

``Child``: a child process in its own session, logging to a file, stopped on every exit path
(SIGINT, then SIGTERM, then SIGKILL to its process group; on Linux it also gets SIGTERM when
the demo dies). ``Receiver``: records the node's outputs, the player's /clock and
/diagnostics with their steady-clock arrival times, so latency is measured on one clock.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from madis_ros.msgkit import stamp_ns
from madis_ros.transport import uses_tcp_transport

NAMESPACE = "/stereo"
OUTPUTS = ("disparity", "depth", "points2")


def _parent_death_signal():
    """Linux: a preexec function that makes the child get SIGTERM when the demo dies, even
    by SIGKILL (no orphaned node or player). libc is looked up here, in the parent: the
    child (forked from a process with an rclpy thread) must not import or lock anything."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG


class Child:
    """A child process in its own session, logging to a file, stopped on every exit path."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str], log_path: Path):
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Child":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_parent_death_signal())
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line for line in lines[-n:])

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGINT, 8.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # grandchildren left in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self._log.closed:
            self._log.close()


class Receiver:
    """rclpy node that records the node's outputs, the player's /clock and /diagnostics,
    each with its steady-clock arrival time."""

    def __init__(self, domain_id: int):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, PointCloud2
        from stereo_msgs.msg import DisparityImage

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id, signal_handler_options=rclpy.SignalHandlerOptions.NO)
        self.node = rclpy.create_node("madis_demo_receiver", context=self.ctx)
        self.lock = threading.Lock()
        #: output -> stamp -> [(t_rx, msg)] (one per pass that came through)
        self.outputs: Dict[str, Dict[int, List[tuple]]] = {k: {} for k in OUTPUTS}
        #: bag time -> [(t_rx, pass)] for every /clock; a pass starts when the clock goes back
        self.clock: Dict[int, List[tuple]] = {}
        self._last_sim = -1
        self.passes = 0
        self.diagnostics: List[tuple] = []  # (t_rx, {key: value})
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        for key, cls in (("disparity", DisparityImage), ("depth", Image), ("points2", PointCloud2)):
            self.node.create_subscription(cls, f"{NAMESPACE}/{key}", self._store(key), reliable)
        self.node.create_subscription(Clock, "/clock", self._on_clock,
                                      QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, reliable)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.ctx.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # context shut down under us at exit
            pass

    def _store(self, key: str):
        def cb(msg: Any) -> None:
            t = time.monotonic()
            with self.lock:
                self.outputs[key].setdefault(stamp_ns(msg.header), []).append((t, msg))
        return cb

    def _on_clock(self, msg: Any) -> None:
        t = time.monotonic()
        ns = int(msg.clock.sec) * 1_000_000_000 + int(msg.clock.nanosec)
        with self.lock:
            if ns < self._last_sim:
                self.passes += 1
            self._last_sim = ns
            self.clock.setdefault(ns, []).append((t, self.passes))

    def _on_diag(self, msg: Any) -> None:
        t = time.monotonic()
        for st in msg.status:
            if "stereo" in st.name:
                with self.lock:
                    self.diagnostics.append((t, {kv.key: kv.value for kv in st.values}))

    def receipts(self, key: str, stamp: int) -> List[Dict[str, Any]]:
        """Every arrival of output ``key`` for ``stamp``: t_rx, msg, and (when the /clock of
        that frame's publication arrived) the pass and the latency in ms."""
        out = []
        with self.lock:
            pubs = list(self.clock.get(stamp, []))
            items = list(self.outputs[key].get(stamp, []))
        for t_rx, msg in items:
            before = [(t, p) for t, p in pubs if t <= t_rx]
            rec = {"t_rx": t_rx, "msg": msg, "pass": None, "latency_ms": None}
            if before:
                t_pub, p = max(before)
                rec.update({"pass": p, "latency_ms": (t_rx - t_pub) * 1e3})
            out.append(rec)
        return out

    def complete(self, stamps: List[int], min_pass: int) -> bool:
        """Every frame has all outputs from a pass >= min_pass."""
        for s in stamps:
            for k in OUTPUTS:
                if not any(r["pass"] is not None and r["pass"] >= min_pass for r in self.receipts(k, s)):
                    return False
        return True

    def count(self) -> Dict[str, int]:
        with self.lock:
            return {k: sum(len(v) for v in d.values()) for k, d in self.outputs.items()}

    def node_ready(self) -> bool:
        """The node has subscribed to its inputs and its outputs are visible here."""
        return (self.node.count_subscribers(f"{NAMESPACE}/left/image_rect") > 0
                and self.node.count_subscribers(f"{NAMESPACE}/right/image_rect") > 0
                and self.node.count_publishers(f"{NAMESPACE}/disparity") > 0)

    def close(self) -> None:
        import rclpy

        rclpy.try_shutdown(context=self.ctx)
        self._thread.join(timeout=5.0)
        if uses_tcp_transport():
            return  # a TCP participant's teardown can deadlock (madis_ros.shutdown): _exit ends it
        try:
            self.node.destroy_node()
        except Exception:
            pass
