"""A separate process publishing a synthetic stereo pair with camera_info at a rate (tests and
benchmarks start it with ``rosutil.start_publisher``); it keeps the DDS transport its parent
chose and prints a JSON summary (``PUBLISHED {...}``) at the end."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes import image_pair_messages, make_scene  # noqa: E402


def publish_main(argv: Optional[List[str]] = None) -> int:
    """Publish a synthetic stereo pair with camera_info at a rate; print a JSON summary at the end."""
    p = argparse.ArgumentParser(prog="publisher.py")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--kind", default="plane")
    p.add_argument("--disparity", type=float, default=24.0)
    p.add_argument("--encoding", default="rgb8")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=5.0, help="seconds of publishing after the first subscriber")
    p.add_argument("--qos", default="best_effort", choices=["best_effort", "reliable"])
    p.add_argument("--right-offset-ms", type=float, default=0.0, help="right stamps later than left by this")
    p.add_argument("--namespace", default="")
    p.add_argument("--wait-subscribers", type=float, default=20.0)
    p.add_argument("--image-transport", default="raw", choices=["raw", "compressed"],
                   help="compressed: CompressedImage on .../image_rect/compressed (encoded once, sent every frame)")
    p.add_argument("--format", default="jpeg", choices=["jpeg", "png"])
    a = p.parse_args(argv)

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    from madis_ros.image_conversion import numpy_to_compressed

    rclpy.init()
    node = rclpy.create_node("madis_test_publisher")
    rel = ReliabilityPolicy.BEST_EFFORT if a.qos == "best_effort" else ReliabilityPolicy.RELIABLE
    qos = QoSProfile(depth=5, reliability=rel)
    ns = a.namespace.rstrip("/")
    topic = (lambda t: f"{ns}/{t}" if ns else t)
    image_type, suffix = (CompressedImage, "/compressed") if a.image_transport == "compressed" else (Image, "")
    pubs = [node.create_publisher(image_type, topic(f"left/image_rect{suffix}"), qos),
            node.create_publisher(image_type, topic(f"right/image_rect{suffix}"), qos),
            node.create_publisher(CameraInfo, topic("left/camera_info"), qos),
            node.create_publisher(CameraInfo, topic("right/camera_info"), qos)]
    scene = make_scene(a.width, a.height, a.kind, a.disparity)
    msgs = list(image_pair_messages(scene, a.encoding))
    if a.image_transport == "compressed":
        for i, img in enumerate((scene.left, scene.right)):
            msgs[i] = numpy_to_compressed(img, "rgb8", a.format, msgs[i].header)
    sizes = [len(m.data) for m in msgs[:2]]
    t_wait = time.monotonic()
    end = t_wait + a.wait_subscribers
    while min(p.get_subscription_count() for p in pubs) == 0 and time.monotonic() < end:
        time.sleep(0.05)
    # which side a discovery failure is on, when a test's node never hears this process
    print(f"MATCHED {[p.get_subscription_count() for p in pubs]} subscriptions after "
          f"{time.monotonic() - t_wait:.1f} s", flush=True)
    time.sleep(1.5)  # matched here does not mean the reader knows us yet (asymmetric discovery)
    period = 1.0 / a.rate
    t_next = time.monotonic()
    t_end = t_next + a.duration
    sent, late = 0, 0
    offset_ns = int(round(a.right_offset_ms * 1e6))
    while time.monotonic() < t_end:
        now = node.get_clock().now()
        stamp_l = now.to_msg()
        stamp_r = (now + rclpy.duration.Duration(nanoseconds=offset_ns)).to_msg()
        for m, st in zip(msgs, (stamp_l, stamp_r, stamp_l, stamp_r)):
            m.header.stamp = st
        for pub, m in zip(pubs, msgs):
            pub.publish(m)
        sent += 1
        t_next += period
        delay = t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            late += 1
            t_next = time.monotonic()
    print("PUBLISHED " + json.dumps({"sent": sent, "late": late, "rate": a.rate, "image_bytes": sizes,
                                     "achieved_hz": sent / max(a.duration, 1e-9)}), flush=True)
    time.sleep(0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(publish_main())
