"""``madis-bag``: rosbag2 tools for pip users who have no ``ros2 bag``.

    madis-bag info BAG                       topics, counts, recorded QoS, detected stereo topics
    madis-bag eval BAG --model NAME          offline: the node's processing on every synchronised
                                             frame, latency, metrics against ground truth, optional
                                             output bag
    madis-bag play BAG [--rate R] [--loop] [--clock] [--qos auto|reliable|sensor_data]
                                             replay over DDS with the recorded timing (needs rclpy)
    madis-bag record-sample OUT              the demo bag: Middlebury Motorcycle + synthetic frames

``info``, ``eval`` and ``record-sample`` use the ``rosbags`` library only (no rclpy, no
ROS install); ``play`` imports rclpy. Bags are rosbag2 folders (or single .mcap/.db3
files) in mcap or sqlite3 storage. Each subcommand is a module of ``madis_ros.bag``.

Exit status: 0 success, 1 nothing could be processed/played, 2 bad arguments or a bag
that cannot be read (the message says why).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from madis_ros.bag.files import BagError

SUBCOMMANDS = {
    "info": ("madis_ros.bag.info", "topics, counts, recorded QoS and detected stereo topics"),
    "eval": ("madis_ros.bag.evaluate", "offline: run the node's processing on every synchronised frame of a bag"),
    "play": ("madis_ros.bag.play", "replay a bag over DDS with its recorded timing (needs rclpy)"),
    "record-sample": ("madis_ros.bag.sample", "write the demo bag (Motorcycle + synthetic frames, with ground truth)"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="madis-bag", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        s = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(s)
        s.set_defaults(func=mod.run)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BagError as exc:
        print(f"madis-bag: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as exc:  # bad parameters, model files, devices
        print(f"madis-bag: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
