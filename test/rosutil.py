"""Test helpers for real multi-process ROS 2 tests (real rclpy, real DDS, no mocks).

Public API (also used by the bag tool's tests):
    free_domain() -> int                       a ROS_DOMAIN_ID no other process holds (kept until exit)
    ros_env(domain_id, transport="shm", **extra) -> dict   child environment: ROS_DOMAIN_ID, the
                                               same-host shared-memory profile (or "large_data"),
                                               unbuffered Python
    make_scene(...), image_pair_messages(...), Scene   re-exported from scenes.py
    NodeProcess(params, domain_id, namespace="", name=...)     the stereo node in its own process
        .start(), .stop(), .log_text(), .wait_for_log(regex, timeout), .rss_mb(), .returncode
    ChildProcess(argv, domain_id, log_path)     any child (publisher below), same cleanup
    start_publisher(domain_id, **options) -> ChildProcess
                                               runs ``python test/publisher.py`` (a separate
                                               process publishing a scene pair + camera_info)
    RosContext(domain_id)                       an rclpy context + node + background executor inside
                                               the test process: .subscribe(type, topic, qos),
                                               .publisher(type, topic, qos), .wait_for(pred, timeout)
    StereoInputs(rc, qos=RELIABLE, namespace="") publishers for the node's four inputs:
                                               .wait_matched(), .send(msgs, right_offset_ms, infos, images)
                                               -> left stamp, .prime(msgs, collector) (send until output)
    outputs_with_stamp(collector, stamp), to_time(s), clock_msg(s), RELIABLE, BEST_EFFORT
    diagnostics_values(msgs, name_part) -> dict the latest key/values of our DiagnosticStatus
    stop_all()                                  kills every child still running (also at exit)

Discovery is asymmetric: a writer can see a reader before that reader knows the writer,
and a best-effort reader drops data from writers it does not know yet, so the first
message after "matched" may be lost. StereoInputs.wait_matched() waits a little longer
and .prime() confirms the path end to end; the publisher process waits 1.5 s.
Children run in their own session and are stopped with SIGINT, then SIGTERM, then
SIGKILL on their process group, so nothing outlives a test even when it fails.
Transport: with Fast DDS's default transports large best-effort images between processes
are mostly lost (environment.md). Users set FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA (TCP +
shared memory); the tests use ``madis_ros.transport``'s same-host profile instead (UDPv4
discovery + large shared-memory segments, no TCP), for the pytest process (conftest.py)
and for every child unless ``ros_env(..., transport="large_data")`` asks otherwise: a
participant using TCP can deadlock in Fast DDS 3.2.x when it is destroyed (issue 19),
and `benchmarks/dds_transports.py` measured the profile delivering as much.
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST is deliberately NOT set (it replaces the transports).
Domains: ``free_domain()`` hands out a ROS_DOMAIN_ID that no other process of this user
holds (a lock file per id, held until this process exits), so suites running side by side
(two checkouts, a helper's worktree) never see each other's participants.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from madis_ros.transport import apply_shared_memory_env, shared_memory_env  # noqa: E402
from scenes import Scene, image_pair_messages, make_scene  # noqa: E402,F401  (re-exported for the tests)

apply_shared_memory_env()  # the test process itself talks DDS too (conftest.py does it first)
LARGE_DATA_ENV = {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}

_CHILDREN: List["ChildProcess"] = []
_DOMAIN_LOCKS: Dict[int, int] = {}


def free_domain() -> int:
    """A ROS_DOMAIN_ID in 1..100 that no other process of this user holds; it stays this
    process's until it exits (a non-blocking flock on one file per id)."""
    import fcntl

    for domain in range(1, 101):
        if domain in _DOMAIN_LOCKS:
            continue
        path = os.path.join(tempfile.gettempdir(), f"madis_ros_domain_{os.getuid()}_{domain}.lock")
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _DOMAIN_LOCKS[domain] = fd
        return domain
    raise RuntimeError("no free ROS_DOMAIN_ID in 1..100: too many test processes are running")


def _qos(reliable: bool, depth: int = 10):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)


RELIABLE = _qos(True)
BEST_EFFORT = _qos(False)


def ros_env(domain_id: int, transport: str = "shm", **extra: str) -> Dict[str, str]:
    """A child's environment: its domain, unbuffered output, and the transport (``shm``: the
    same-host profile; ``large_data``: FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA, what users set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTDDS_")}
    if transport == "shm":
        env.update(shared_memory_env())
    elif transport == "large_data":
        env.update(LARGE_DATA_ENV)
    else:
        raise ValueError(f"transport must be shm or large_data, got {transport!r}")
    env["ROS_DOMAIN_ID"] = str(int(domain_id))
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


# --- child processes -------------------------------------------------------------------------------------
class ChildProcess:
    """A child in its own session with its output in a log file; always cleaned up."""

    def __init__(self, argv: List[str], domain_id: int, log_path: Optional[str] = None, env_extra=None,
                 transport: str = "shm"):
        self.argv = argv
        self.env = ros_env(domain_id, transport, **(env_extra or {}))
        self.log_path = log_path or tempfile.mktemp(prefix="madis_child_", suffix=".log")
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "ChildProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=str(REPO), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _CHILDREN.append(self)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float) -> Optional[re.Match]:
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text())
            if m or time.monotonic() > end:
                return m
            if not self.running():
                return rx.search(self.log_text())
            time.sleep(0.1)

    def wait(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return float("nan")

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        if self.proc is None:
            return None
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # anything the child left in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self._log.closed:
            self._log.close()
        if self in _CHILDREN:
            _CHILDREN.remove(self)
        return self.proc.poll()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class NodeProcess(ChildProcess):
    """``python -m madis_ros.stereo_node`` with a params file written from ``params``."""

    def __init__(self, params: Dict[str, Any], domain_id: int, namespace: str = "", name: Optional[str] = None,
                 extra_args: Optional[List[str]] = None, log_path: Optional[str] = None, transport: str = "shm"):
        import yaml

        fd, self.params_path = tempfile.mkstemp(prefix="madis_params_", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump({"/**": {"ros__parameters": dict(params)}}, f)
        argv = [sys.executable, "-m", "madis_ros.stereo_node", "--ros-args", "--params-file", self.params_path]
        if namespace:
            argv += ["-r", f"__ns:={namespace}"]
        if name:
            argv += ["-r", f"__node:={name}"]
        argv += list(extra_args or [])
        super().__init__(argv, domain_id, log_path, transport=transport)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        rc = super().stop(timeout)
        try:
            os.unlink(self.params_path)
        except OSError:
            pass
        return rc


@contextlib.contextmanager
def started_nodes(configs: Dict[str, "NodeProcess"], timeout: float = 90.0):
    """Start the node processes together (their start-ups overlap), wait until each is up, yield
    them, stop them all whatever happens."""
    for p in configs.values():
        p.start()
    try:
        for k, p in configs.items():
            assert p.wait_for_log(r"input QoS", timeout), f"node {k} did not start:\n{p.log_text()}"
        yield configs
    finally:
        for p in configs.values():
            p.stop()


def start_publisher(domain_id: int, transport: str = "shm", **options: Any) -> ChildProcess:
    """A separate publisher process (``test/publisher.py``; see it for the options)."""
    argv = [sys.executable, str(Path(__file__).resolve().parent / "publisher.py")]
    for k, v in options.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return ChildProcess(argv, domain_id, transport=transport).start()


def stop_all() -> None:
    for c in list(_CHILDREN):
        c.stop(timeout=3.0)


atexit.register(stop_all)


# --- in-test ROS context --------------------------------------------------------------------------------
class Collector:
    """Messages of one subscription with their steady and wall receipt times."""

    def __init__(self):
        self.items: List[tuple] = []  # (monotonic, time.time(), msg)
        self.lock = threading.Lock()
        self.lost = 0  # messages DDS reports lost on the way to this reader (message_lost event)

    def on_lost(self, info: Any) -> None:
        with self.lock:
            self.lost += info.total_count_change

    def __call__(self, msg: Any) -> None:
        with self.lock:
            self.items.append((time.monotonic(), time.time(), msg))

    @property
    def msgs(self) -> List[Any]:
        with self.lock:
            return [m for _, _, m in self.items]

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)

    def last(self) -> Any:
        with self.lock:
            return self.items[-1][2] if self.items else None

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


class RosContext:
    """An isolated rclpy context on ``domain_id`` with one node spun in a background thread."""

    def __init__(self, domain_id: int, node_name: str = "madis_test"):
        self.domain_id = domain_id
        self.node_name = node_name

    def __enter__(self) -> "RosContext":
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=self.domain_id, signal_handler_options=rclpy.SignalHandlerOptions.NO)
        self.node = rclpy.create_node(self.node_name, context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        while not self._stop.is_set() and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def __exit__(self, *exc) -> None:
        import rclpy

        # stop spinning, then destroy the node (its DDS participant) before the context
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)

    def subscribe(self, msg_type: Any, topic: str, qos: Any = None) -> Collector:
        from rclpy.event_handler import SubscriptionEventCallbacks
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        col = Collector()
        qos = qos or QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(msg_type, topic, col, qos,
                                      event_callbacks=SubscriptionEventCallbacks(message_lost=col.on_lost))
        return col

    def publisher(self, msg_type: Any, topic: str, qos: Any = None) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = qos or QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        return self.node.create_publisher(msg_type, topic, qos)

    def now_msg(self) -> Any:
        return self.node.get_clock().now().to_msg()

    @staticmethod
    def wait_for(pred: Callable[[], bool], timeout: float, period: float = 0.05) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            time.sleep(period)
        return bool(pred())

    def wait_for_subscribers(self, pub: Any, n: int = 1, timeout: float = 20.0) -> bool:
        return self.wait_for(lambda: pub.get_subscription_count() >= n, timeout)


def to_time(t: float):
    """builtin_interfaces/Time from seconds."""
    from builtin_interfaces.msg import Time

    ns = int(round(t * 1e9))
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def clock_msg(t: float):
    """rosgraph_msgs/Clock at ``t`` seconds (for use_sim_time tests)."""
    from rosgraph_msgs.msg import Clock

    return Clock(clock=to_time(t))


def outputs_with_stamp(col: "Collector", stamp: Any) -> List[Any]:
    return [m for m in col.msgs if m.header.stamp == stamp]


class StereoInputs:
    """Publishers for the node's four input topics inside a RosContext (tests craft any message)."""

    def __init__(self, rc: "RosContext", qos: Any = None, namespace: str = "", compressed: bool = False):
        """``compressed``: the images go as sensor_msgs/CompressedImage on ``.../image_rect/compressed``."""
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        qos = qos or RELIABLE
        ns = namespace.rstrip("/")
        t = (lambda name: f"{ns}/{name}" if ns else name)
        self.rc = rc
        cls, suffix = (CompressedImage, "/compressed") if compressed else (Image, "")
        self.img = [rc.publisher(cls, t(f"left/image_rect{suffix}"), qos),
                    rc.publisher(cls, t(f"right/image_rect{suffix}"), qos)]
        self.info = [rc.publisher(CameraInfo, t("left/camera_info"), qos),
                     rc.publisher(CameraInfo, t("right/camera_info"), qos)]
        self.t = time.time()

    def wait_matched(self):
        """Discovery is asymmetric: our writers may see the node's readers before the node's
        readers know our writers, and a best-effort reader drops data from unknown writers.
        So wait for the match and then a little longer; callers still confirm their first pair."""
        for p in self.img + self.info:
            assert self.rc.wait_for_subscribers(p), "the node's subscription was not discovered"
        time.sleep(1.0)

    def prime(self, msgs, outputs, timeout=20.0):
        """Send good pairs until one comes out: the path is then up end to end."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            stamp = self.send(msgs)
            if self.rc.wait_for(lambda: outputs_with_stamp(outputs, stamp), 1.0):
                return stamp
        raise AssertionError("no output for any primed pair")

    def send(self, msgs, right_offset_ms=0.0, infos=True, images=True):
        """Publish one pair (camera_info first); stamps advance by >= 50 ms per pair, and follow
        the wall clock unless ``self.t`` was set to a simulated time."""
        li, ri, lc, rc = msgs
        self.t = self.t + 0.05 if self.t < 1e6 else max(self.t + 0.05, time.time())
        sl, sr = to_time(self.t), to_time(self.t + right_offset_ms / 1e3)
        for m, s in ((li, sl), (ri, sr), (lc, sl), (rc, sr)):
            m.header.stamp = s
        if infos:
            self.info[0].publish(lc)
            self.info[1].publish(rc)
            time.sleep(0.05)  # camera_info first, so the node sees the calibration of this very pair
        if images:
            self.img[0].publish(li)
            self.img[1].publish(ri)
        return sl


def diagnostics_values(msgs: List[Any], name_part: str = "stereo") -> Dict[str, str]:
    """Key/values of the newest DiagnosticStatus whose name contains ``name_part``."""
    for arr in reversed(msgs):
        for st in arr.status:
            if name_part in st.name:
                out = {kv.key: kv.value for kv in st.values}
                out["_level"] = st.level[0] if isinstance(st.level, (bytes, bytearray)) else int(st.level)
                out["_message"] = st.message
                return out
    return {}
