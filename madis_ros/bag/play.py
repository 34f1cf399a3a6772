"""``madis-bag play BAG``: the pip user's ``ros2 bag play --clock`` (needs rclpy).

Publishes a bag's messages with their recorded timing (scaled by 1/rate) and their
recorded QoS (``--qos auto``), raw CDR bytes as stored, so any message type the rclpy
install knows is replayed (compressed images included). ``--clock`` publishes /clock
(bag time) for nodes with ``use_sim_time``. Header stamps are never touched.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from madis_ros.bag.files import CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, BagError, BagReader
from madis_ros.bag.topics import is_ground_truth_topic
from madis_ros.messages import clock_msg
from madis_ros.msgkit import RCLPY


def _warn(msg: str) -> None:
    print(f"madis-bag: warning: {msg}", file=sys.stderr, flush=True)


def _rclpy_msg_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image (None when the package is not installed)."""
    try:
        return RCLPY.cls(msgtype)
    except (ImportError, AttributeError):
        return None


def _qos_profile(mode: str, recorded: Optional[str], depth: int = 10):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    rel = {"reliable": "reliable", "sensor_data": "best_effort", "auto": recorded or "reliable"}[mode]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth if rel == "reliable" else 5,
                      reliability=ReliabilityPolicy.RELIABLE if rel == "reliable" else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.VOLATILE)


class _Stop(Exception):
    pass


def play_bag(path: str, rate: float = 1.0, loop: bool = False, clock: bool = False, clock_hz: float = 40.0,
             qos: str = "auto", topics: Optional[Sequence[str]] = None, remap: Optional[Dict[str, str]] = None,
             wait_for_subscribers: float = 0.0, delay: float = 0.0, ros_args: Optional[List[str]] = None,
             verbose: bool = True) -> int:
    """Publish a bag's messages with their recorded timing (scaled by 1/rate); returns how
    many were published. Header stamps are not touched; with ``clock`` /clock carries the
    bag time (for nodes with use_sim_time), at ``clock_hz`` and at every new message time.
    ``wait_for_subscribers`` (s) waits until every camera topic (Image and CameraInfo, ground
    truth excluded), and /clock when it is played, has a subscriber: each topic is discovered on its own, and a frame sent
    before its camera_info subscription matched would reach the node without calibration."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    if rate <= 0:
        raise ValueError(f"--rate must be > 0, got {rate}")
    remap = remap or {}
    with BagReader(path) as bag:
        info = bag.topics
        wanted = list(topics) if topics else sorted(info)
        missing = [t for t in wanted if t not in info]
        if missing:
            raise BagError(f"topics {missing} are not in the bag; it has {sorted(info)}")
        context = rclpy.Context()
        rclpy.init(args=["--ros-args", *ros_args] if ros_args else None, context=context)
        node = rclpy.create_node("madis_bag_player", context=context)
        try:
            pubs: Dict[str, Any] = {}
            for t in wanted:
                cls = _rclpy_msg_class(info[t].msgtype)
                if cls is None:
                    _warn(f"skipping {t}: message type {info[t].msgtype} is not installed for rclpy")
                    continue
                prof = _qos_profile(qos, info[t].reliability)
                pubs[t] = node.create_publisher(cls, remap.get(t, t), prof)
            if not pubs:
                raise BagError("no topic of the bag can be published (message packages missing)")
            clock_pub = None
            if clock:
                from rosgraph_msgs.msg import Clock

                clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(depth=1,
                                                  reliability=ReliabilityPolicy.BEST_EFFORT))
            if verbose:
                print(f"playing {path}: {len(pubs)} topics, rate {rate:g}, qos {qos}"
                     + (f" (recorded: {', '.join(sorted({info[t].reliability or '?' for t in pubs}))})" if qos == "auto" else "")
                     + (", publishing /clock" if clock else ""), flush=True)
            camera = [t for t in pubs if info[t].msgtype in (IMAGE, COMPRESSED_IMAGE, CAMERA_INFO)
                      and not is_ground_truth_topic(t)] or list(pubs)
            if wait_for_subscribers > 0:
                # the camera topics, and /clock when it is played: a sim-time node (or anyone who
                # reads bag time) that has not matched /clock yet would miss the first frames' time
                waited = {remap.get(t, t): pubs[t] for t in camera}
                if clock_pub is not None:
                    waited["/clock"] = clock_pub
                deadline = time.monotonic() + wait_for_subscribers
                while any(p.get_subscription_count() == 0 for p in waited.values()):
                    if time.monotonic() > deadline:
                        lonely = [t for t, p in waited.items() if p.get_subscription_count() == 0]
                        _warn(f"no subscriber on {lonely} after {wait_for_subscribers:g} s; playing anyway")
                        break
                    time.sleep(0.05)
                else:
                    # Discovery completes on each side on its own: the subscriber may not know this
                    # publisher yet although we see it. Give it a moment before the first frame.
                    time.sleep(1.0)
            if delay > 0:
                time.sleep(delay)
            return _play_loop(bag, pubs, clock_pub, rate, loop, clock_hz, verbose)
        finally:
            node.destroy_node()
            rclpy.try_shutdown(context=context)


def _play_loop(bag: BagReader, pubs: Dict[str, Any], clock_pub: Any, rate: float, loop: bool,
               clock_hz: float, verbose: bool, ack_timeout: float = 10.0) -> int:
    def send_clock(ns: int) -> None:
        clock_pub.publish(clock_msg(ns))

    period = 1.0 / clock_hz if clock_hz > 0 else float("inf")
    published = 0
    t_wall0 = time.monotonic()
    start_wall = t_wall0
    while True:
        bag_start = None
        last_clock_ns = None
        times: set = set()
        next_tick = start_wall
        for conn, log_ns, raw in bag.messages(list(pubs)):
            times.add(log_ns)
            if bag_start is None:
                bag_start = log_ns
            target = start_wall + (log_ns - bag_start) / 1e9 / rate
            while True:
                now = time.monotonic()
                if clock_pub is not None and now >= next_tick:
                    send_clock(bag_start + int(min(now - start_wall, (target - start_wall)) * rate * 1e9))
                    next_tick = now + period
                if now >= target:
                    break
                time.sleep(max(0.0, min(target, next_tick if clock_pub is not None else target) - now))
            if clock_pub is not None and log_ns != last_clock_ns:
                send_clock(log_ns)  # sim time == this message's bag time when it goes out
                last_clock_ns = log_ns
            pubs[conn.topic].publish(bytes(raw))
            published += 1
        if not loop or bag_start is None:
            break
        # Next pass one mean message interval (1 s for a single-instant bag) after the last
        # message, as if the recording went on: starting at once would make the first frame
        # supersede the last one in a node, and a one-frame bag would be sent in a busy loop.
        span = (max(times) - bag_start) / 1e9 / rate
        end_wall = start_wall + span
        start_wall = end_wall + (span / (len(times) - 1) if len(times) > 1 else 1.0 / rate)
        while time.monotonic() < start_wall:
            if clock_pub is not None:  # bag time runs on past the end, then jumps back
                send_clock(max(times) + int(max(0.0, time.monotonic() - end_wall) * rate * 1e9))
            time.sleep(min(period, max(0.0, start_wall - time.monotonic())))
    # Reliable messages a late-discovering subscriber has not acknowledged yet would be lost
    # when this process exits: wait for the acknowledgements (best-effort publishers return at once).
    from rclpy.duration import Duration

    unacked = [t for t, pub in pubs.items() if not pub.wait_for_all_acked(Duration(seconds=ack_timeout))]
    if unacked:
        _warn(f"subscribers did not acknowledge everything on {unacked} within {ack_timeout:g} s")
    if verbose:
        print(f"published {published} messages in {time.monotonic() - t_wall0:.2f} s", flush=True)
    return published


def run(args: argparse.Namespace) -> int:
    remap = {}
    for r in args.remap or []:
        if ":=" not in r:
            raise BagError(f"--remap takes FROM:=TO, got {r!r}")
        a, b = r.split(":=", 1)
        remap[a] = b

    def on_term(signum, frame):  # the demo and users stop the player with SIGTERM/SIGINT
        raise _Stop()

    signal.signal(signal.SIGTERM, on_term)
    try:
        n = play_bag(args.bag, args.rate, args.loop, args.clock, args.clock_hz, args.qos, args.topics, remap,
                     args.wait_for_subscribers, args.delay, args.ros_args)
    except (_Stop, KeyboardInterrupt):
        print("playback stopped", flush=True)
        return 0
    return 0 if n > 0 else 1


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("bag")
    s.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    s.add_argument("--loop", action="store_true", help="start over at the end")
    s.add_argument("--clock", action="store_true", help="publish /clock (bag time) for use_sim_time nodes")
    s.add_argument("--clock-hz", type=float, default=40.0, help="/clock rate between messages")
    s.add_argument("--qos", default="auto", choices=["auto", "reliable", "sensor_data"],
                   help="publisher reliability: auto = as recorded (best effort stays best effort), reliable, "
                        "or sensor_data (best effort)")
    s.add_argument("--topics", nargs="+", help="play only these topics")
    s.add_argument("--remap", nargs="+", metavar="FROM:=TO", help="publish a topic under another name")
    s.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds until every Image/CameraInfo topic (ground truth excluded) "
                        "and, with --clock, /clock has a subscriber")
    s.add_argument("--delay", type=float, default=0.0, help="sleep this long before playing (s)")
    s.add_argument("--ros-args", nargs=argparse.REMAINDER, default=None, help="passed to rclpy (e.g. -r __ns:=/x)")
