"""Writing test bags with the project's own message layer (rosbags kit): shared by test_bag.py
(offline tools) and test_bag_node.py (replays into the node over DDS)."""
from __future__ import annotations

import numpy as np

from madis_ros.bag import files as bagfiles
from madis_ros.image_conversion import numpy_to_image
from madis_ros.messages import camera_info_msgs, make_disparity_image
from madis_ros.msgkit import ROSBAGS

T0 = 1_700_000_000_000_000_000
NS = "/cam"


def hdr(ns, frame):
    return ROSBAGS.header(ns, frame)


def image(arr, ns, frame, encoding=None):
    encoding = encoding or {(np.dtype(np.uint8), 3): "rgb8", (np.dtype(np.uint8), 2): "mono8",
                            (np.dtype(np.uint16), 2): "mono16"}[(arr.dtype, arr.ndim)]
    return numpy_to_image(arr, encoding, hdr(ns, frame), kit=ROSBAGS)


def infos(cam, ns, left, right):
    return camera_info_msgs(cam, hdr(ns, left), hdr(ns, right), kit=ROSBAGS)


def synthetic_frames(n=3, h=160, w=352, max_disp=40.0, seed=3):
    """Synthetic pairs with exact ground truth (uint8 RGB, float32 disparity)."""
    from madis_core.data import SyntheticStereoGenerator

    b = SyntheticStereoGenerator(height=h, width=w, max_disparity=max_disp, seed=seed).generate(n)
    out = []
    for i in range(n):
        to8 = lambda t: np.clip(t.permute(1, 2, 0).numpy() * 255 + 0.5, 0, 255).astype(np.uint8)  # noqa: E731
        out.append((to8(b["left"][i]), to8(b["right"][i]), b["disparity"][i, 0].numpy().astype(np.float32)))
    return out


def write_stereo_bag(path, frames, cam, storage="mcap", reliability="reliable", gt=True, hz=5.0):
    with bagfiles.BagWriter(path, storage=storage) as w:
        for t, ty in ((f"{NS}/left/camera_info", bagfiles.CAMERA_INFO), (f"{NS}/right/camera_info", bagfiles.CAMERA_INFO),
                      (f"{NS}/left/image_rect", bagfiles.IMAGE), (f"{NS}/right/image_rect", bagfiles.IMAGE)):
            w.add_topic(t, ty, reliability=reliability)
        stamps = []
        for i, (left, right, disp) in enumerate(frames):
            s = T0 + int(i * 1e9 / hz)
            li, ri = infos(cam, s, "cam_left", "cam_right")
            w.write(f"{NS}/left/camera_info", li, s)
            w.write(f"{NS}/right/camera_info", ri, s)
            w.write(f"{NS}/left/image_rect", image(left, s, "cam_left"), s)
            w.write(f"{NS}/right/image_rect", image(right, s, "cam_right"), s)
            if gt:
                w.write(f"{NS}/gt/disparity", make_disparity_image(disp, cam, hdr(s, "cam_left"), 0.0, 64.0, 1 / 256, kit=ROSBAGS), s)
            stamps.append(s)
    return stamps
