"""Which Fast DDS transport setting carries camera images between processes on one host?

Each trial starts two fresh processes (a publisher and a subscriber of sensor_msgs/Image),
as a test, a bag player and the node do, and measures:
- discovery: seconds until the subscriber holds its first image (``never`` after ``--wait``);
- delivery: images received / sent at ``--rate`` Hz for ``--seconds`` (best effort or reliable);
- teardown: seconds each process spends in ``destroy_node`` + ``rclpy.shutdown``; a process
  still there after ``--teardown-limit`` s is killed and counted as hung (the Fast DDS TCP
  deadlock of issue 19).

    python benchmarks/dds_transports.py --trials 10                           # every setting, 640x480
    python benchmarks/dds_transports.py --setting shm --size 3840x2160 --trials 3

Settings: ``default`` (Fast DDS's UDPv4 + SHM with 512 KiB segments), ``large_data``
(``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``: UDP discovery, TCP + SHM data),
``large_data_tcp_wait`` (the same with ``tcp_negotiation_timeout=50``), ``shm``
(``madis_ros.transport``'s profile: UDPv4 discovery + shared memory with large segments,
no TCP).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = ("default", "large_data", "large_data_tcp_wait", "shm")


def setting_env(name: str, domain: int) -> dict:
    from madis_ros.transport import shared_memory_env

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASTDDS_", "FASTRTPS_"))}
    env["ROS_DOMAIN_ID"] = str(domain)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if name == "large_data":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA"
    elif name == "large_data_tcp_wait":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = "LARGE_DATA?tcp_negotiation_timeout=50"
    elif name == "shm":
        env.update(shared_memory_env())
    elif name != "default":
        raise ValueError(f"unknown setting {name!r}; choose from {', '.join(SETTINGS)}")
    return env


def child(role: str, width: int, height: int, rate: float, seconds: float, wait: float, reliable: bool) -> int:
    """One end of a trial; prints a JSON line with its figures."""
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    t_start = time.monotonic()
    rclpy.init()
    node = rclpy.create_node(f"dds_probe_{role}")
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT)
    result: dict = {"role": role}
    if role == "pub":
        pub = node.create_publisher(Image, "probe_image", qos)
        msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
        msg.data = np.random.default_rng(0).integers(0, 255, width * height * 3, dtype=np.uint8).tobytes()
        end = time.monotonic() + wait
        while pub.get_subscription_count() == 0 and time.monotonic() < end:
            time.sleep(0.01)
        result["matched_s"] = time.monotonic() - t_start if pub.get_subscription_count() else None
        sent = 0
        t_next = time.monotonic()
        end = t_next + (seconds + 1.0 if result["matched_s"] is not None else 0.0)
        while time.monotonic() < end:  # the first second finds the reader, then `seconds` are counted
            msg.header.frame_id = str(sent)
            pub.publish(msg)
            sent += 1
            t_next += 1.0 / rate
            time.sleep(max(0.0, t_next - time.monotonic()))
        result["sent"] = sent
    else:
        got: list = []
        node.create_subscription(Image, "probe_image", lambda m: got.append((time.monotonic(), int(m.header.frame_id))), qos)
        end = time.monotonic() + wait
        while not got and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        result["first_s"] = got[0][0] - t_start if got else None
        end = time.monotonic() + seconds + 2.0
        while got and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        result["ids"] = sorted({i for _, i in got})
    print("RESULT " + json.dumps(result), flush=True)
    t0 = time.monotonic()
    node.destroy_node()
    rclpy.try_shutdown()
    print("TEARDOWN " + json.dumps({"role": role, "teardown_s": time.monotonic() - t0}), flush=True)
    return 0


def run_trial(setting: str, domain: int, args) -> dict:
    env = setting_env(setting, domain)
    common = ["--width", str(args.width), "--height", str(args.height), "--rate", str(args.rate),
              "--seconds", str(args.seconds), "--wait", str(args.wait)] + (["--reliable"] if args.reliable else [])
    procs = {}
    logs = {}
    for role in ("sub", "pub"):
        logs[role] = tempfile.TemporaryFile()
        procs[role] = subprocess.Popen([sys.executable, __file__, "--child", role] + common, env=env,
                                       stdout=logs[role], stderr=subprocess.STDOUT, start_new_session=True)
    limit = args.wait + args.seconds + 6.0 + args.teardown_limit
    out = {"setting": setting, "hung": []}
    for role, p in procs.items():
        try:
            p.wait(timeout=max(1.0, limit))
        except subprocess.TimeoutExpired:
            out["hung"].append(role)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        logs[role].seek(0)
        for line in logs[role].read().decode(errors="replace").splitlines():
            if line.startswith(("RESULT ", "TEARDOWN ")):
                out.setdefault(role, {}).update(json.loads(line.split(" ", 1)[1]))
    sub, pub = out.get("sub", {}), out.get("pub", {})
    ids = sub.get("ids") or []
    first = min(ids) if ids else 0
    counted = [i for i in ids if i >= first + int(args.rate)]  # after the first second
    expected = max(0, pub.get("sent", 0) - first - int(args.rate))
    out["discovery_s"] = sub.get("first_s")
    out["delivered"] = (len(counted), expected)
    out["teardown_s"] = max(pub.get("teardown_s", float("nan")), sub.get("teardown_s", float("nan")))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setting", action="append", choices=SETTINGS, help="repeatable; default: all")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the rgb8 images")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--wait", type=float, default=20.0, help="discovery limit per trial (s)")
    p.add_argument("--teardown-limit", type=float, default=15.0)
    p.add_argument("--reliable", action="store_true")
    p.add_argument("--domain", type=int, default=97)
    p.add_argument("--child", choices=("pub", "sub"), help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, help=argparse.SUPPRESS)
    p.add_argument("--height", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.width, args.height, args.rate, args.seconds, args.wait, args.reliable)
    args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    print(f"{args.size} rgb8, {args.rate:g} Hz for {args.seconds:g} s, "
          f"{'reliable' if args.reliable else 'best effort'}, {args.trials} fresh process pairs per setting")
    print("| setting | discovered | discovery s (median / max) | delivered | teardown s (max) | hung |")
    print("| --- | --- | --- | --- | --- | --- |")
    for setting in args.setting or SETTINGS:
        rows = [run_trial(setting, args.domain, args) for _ in range(args.trials)]
        found = sorted(r["discovery_s"] for r in rows if r["discovery_s"] is not None)
        got = sum(r["delivered"][0] for r in rows)
        exp = sum(r["delivered"][1] for r in rows)
        hung = sum(len(r["hung"]) for r in rows)
        tear = max((r["teardown_s"] for r in rows if r["teardown_s"] == r["teardown_s"]), default=float("nan"))
        disc = f"{found[len(found) // 2]:.2f} / {found[-1]:.2f}" if found else "-"
        print(f"| {setting} | {len(found)}/{len(rows)} | {disc} | {got}/{exp} | {tear:.2f} | {hung} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
