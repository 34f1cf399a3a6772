"""The node's own per-frame overhead (issue 8): everything but the network forward at
640x480 with a colour cloud, measured on the real node code path in this process.

``benchmarks/node_latency.py --overhead-only`` gives the precise figure (target <= 10 ms on
the 2-core build machine); this test guards against regressions with a bound that leaves
room for a loaded CI machine, and prints what it measured. The real StereoNode is built in
this process (real rclpy, real SGBM, real messages); its per-frame worker function runs on
640x480 rgb8 pairs and times itself (decode, depth, points, colour, DisparityImage + depth
Image + PointCloud2, minus predict(); publishing is reported apart).
"""
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "test"))
from node_latency import measure_overhead, node_params  # noqa: E402
from rosutil import free_domain  # noqa: E402

from madis_ros.messages import pointcloud2_to_numpy  # noqa: E402

pytestmark = pytest.mark.timeout(120)

DOMAIN = free_domain()
#: issue 8's target is 10 ms on this CPU; the bound allows for a loaded CI machine
BOUND_MS = 25.0


def test_overhead_640x480_colour_cloud_is_bounded():
    r = measure_overhead(node_params("sgbm", False, color_disparity=False), 640, 480, frames=12, warmup=3,
                         domain_id=DOMAIN)
    wall, cpu = r["overhead_ms"], r["overhead_cpu_ms"]
    med, med_cpu = statistics.median(wall), statistics.median(cpu)
    print(f"\nnode overhead at 640x480, colour cloud, disparity + depth + points2 (SGBM forward excluded): "
          f"median {med:.2f} ms wall, {med_cpu:.2f} ms CPU over {len(wall)} frames "
          f"(forward median {statistics.median(r['inference_ms']):.1f} ms, publish median "
          f"{statistics.median(r['publish_ms']):.2f} ms)")
    assert len(wall) == 12 and all(math.isfinite(v) and v > 0 for v in wall + cpu)
    # the measured work really contains the colour cloud: the last points2 the node published
    cloud = r["last_points2"]
    assert cloud is not None, "the node did not publish points2"
    assert (cloud.height, cloud.width) == (480, 640) and [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"]
    pts, colors = pointcloud2_to_numpy(cloud)
    assert np.isfinite(pts[..., 2]).mean() > 0.5 and colors is not None and colors.any()
    assert med < BOUND_MS, f"median node overhead {med:.1f} ms exceeds {BOUND_MS} ms (target 10 ms)"


# --- the fast paths give the straightforward results, bit for bit ---------------------------------------
def _reference_cloud_bytes(pts, colors):
    """The obvious structured-array construction the optimised builder replaced."""
    names = ["x", "y", "z", "rgb"]
    rec = np.empty(pts.shape[:2], dtype=np.dtype({"names": names, "formats": [np.float32] * 4,
                                                   "offsets": [0, 4, 8, 12], "itemsize": 16}))
    rec["x"], rec["y"], rec["z"] = pts[..., 0], pts[..., 1], pts[..., 2]
    c = colors.astype(np.uint32)
    rec["rgb"] = ((c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]).view(np.float32)
    return rec.tobytes()


def test_fast_builders_match_the_reference_computations():
    from std_msgs.msg import Header

    from madis_core.camera import StereoCamera
    from madis_core.io import colorize_disparity
    from madis_ros.image_conversion import image_to_numpy
    from madis_ros.messages import make_color_disparity_image, make_pointcloud2
    from madis_core.pipeline import _points

    rng = np.random.default_rng(3)
    h, w = 61, 83
    cam = StereoCamera(w, h, 90.0, 95.0, 40.3, 29.7, 0.12, doffs=1.5)
    d = (rng.random((h, w)) * 70 - 4).astype(np.float32)
    d[rng.random((h, w)) < 0.1] = np.nan
    d[0, :3] = [np.inf, -np.inf, 0.0]
    for max_d, min_d in ((64.0, 0.0), (10.0, 2.0)):
        got = image_to_numpy(make_color_disparity_image(d, Header(), max_d, min_d))
        assert np.array_equal(got, colorize_disparity(d, max_disparity=max_d, min_disparity=min_d))
    z = cam.disparity_to_depth(d)
    for k in (1, 2, 5):
        assert np.array_equal(_points(cam, z, k), cam.depth_to_points(z)[::k, ::k], equal_nan=True)
    pts = cam.depth_to_points(z)
    colors = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    msg = make_pointcloud2(pts, Header(), colors)
    assert bytes(msg.data) == _reference_cloud_bytes(pts, colors) and msg.is_dense is False
    dense = make_pointcloud2(np.nan_to_num(pts), Header(), colors)
    assert dense.is_dense is True
    assert make_pointcloud2(np.nan_to_num(pts) * np.float32(1e30), Header()).is_dense is True  # sum overflows


def test_message_data_is_filled_with_field_checks_on():
    """ROS_PYTHON_CHECK_FIELDS=1 makes rclpy check every element of a bytes value (~200 ms per
    1.2 MB); the builders (msgkit.set_uint8_data) must stay on the array.array path there too."""
    import time

    from sensor_msgs.msg import Image

    from madis_ros.msgkit import set_uint8_data

    img = np.random.default_rng(0).integers(0, 256, (480, 640), dtype=np.uint8)
    msg = Image(check_fields=True)
    t0 = time.perf_counter()
    set_uint8_data(msg, img.astype(np.float32))
    ms = (time.perf_counter() - t0) * 1e3
    assert bytes(msg.data) == img.astype(np.float32).tobytes()
    assert ms < 50, f"filling a 1.2 MB image took {ms:.0f} ms with field checks on"
    set_uint8_data(msg, img)  # refilling a used message replaces its data
    assert bytes(msg.data) == img.tobytes() and len(msg.data) == 640 * 480
