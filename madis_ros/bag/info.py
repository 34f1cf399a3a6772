"""``madis-bag info BAG``: topics, message counts, recorded QoS and the detected stereo topics."""
from __future__ import annotations

import argparse

from madis_ros.bag.files import BagError, BagReader
from madis_ros.bag.topics import detect_stereo_topics


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag")


def run(args: argparse.Namespace) -> int:
    with BagReader(args.bag) as bag:
        topics = bag.topics
        print(f"bag: {args.bag} ({bag.storage}, {len(topics)} topics, {bag.duration_ns / 1e9:.2f} s)")
        for t in sorted(topics):
            i = topics[t]
            print(f"  {t:<45} {i.msgtype:<34} {i.count:>6}  qos={i.reliability or '?'}")
        try:
            st = detect_stereo_topics(topics)
            print(f"stereo topics: left={st.left} right={st.right} left_info={st.left_info} "
                  f"right_info={st.right_info} gt={st.gt or '-'}")
        except BagError as exc:
            print(f"stereo topics: not detected ({exc})")
    return 0
