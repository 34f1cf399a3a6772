"""``madis-bag record-sample OUT``: the demo's bag, the real Middlebury Motorcycle pair with its
published calibration and ground truth after a few synthetic frames (same camera)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from madis_ros.bag.files import CAMERA_INFO, DISPARITY, IMAGE, STORAGES, BagWriter
from madis_ros.image_conversion import numpy_to_image
from madis_ros.messages import camera_info_msgs, make_disparity_image
from madis_ros.msgkit import ROSBAGS

#: header stamp of the first sample frame (fixed, so the sample bag is reproducible)
SAMPLE_START_NS = 1_700_000_000_000_000_000
SAMPLE_NAMESPACE = "/stereo"
SAMPLE_LEFT_FRAME = "stereo_left_optical_frame"
SAMPLE_RIGHT_FRAME = "stereo_right_optical_frame"


def _to_uint8(chw: Any) -> np.ndarray:
    a = np.asarray(chw.detach().cpu().numpy() if hasattr(chw, "detach") else chw, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = np.transpose(a, (1, 2, 0))
    return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)


def sample_frames(synthetic_frames: int = 3, seed: int = 0, synthetic_max_disparity: float = 64.0):
    """The demo's frames: (name, left, right, gt disparity, camera); synthetic first, Motorcycle last.

    Motorcycle: skimage's 4x-downscaled Middlebury 2014 pair with the published
    calibration divided by 4 (f 994.978 px, cx 311.193, cy 254.877, doffs 31.086 px,
    baseline 0.193001 m) as madis_core.data.load_motorcycle provides it. Synthetic
    frames come from madis_core.data.SyntheticStereoGenerator at the same image size
    and use the same camera, so the stream looks like one camera. Motorcycle comes last
    so that a replay whose first frames race DDS discovery still delivers it."""
    from madis_core.data import SyntheticStereoGenerator, load_motorcycle

    moto = load_motorcycle()
    cam = moto["camera"]
    frames = []
    if synthetic_frames > 0:
        gen = SyntheticStereoGenerator(height=cam.height, width=cam.width, max_disparity=synthetic_max_disparity,
                                       seed=seed)
        batch = gen.generate(synthetic_frames)
        for i in range(synthetic_frames):
            d = np.asarray(_as_numpy(batch["disparity"][i])[0], dtype=np.float32)
            frames.append((f"synthetic_{i}", _to_uint8(batch["left"][i]), _to_uint8(batch["right"][i]), d, cam))
    frames.append(("motorcycle", moto["left"], moto["right"], np.asarray(moto["disparity"], dtype=np.float32), cam))
    return frames


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def write_sample_bag(out: str | Path, synthetic_frames: int = 3, storage: str = "mcap", rate_hz: float = 2.0,
                     reliability: str = "reliable", namespace: str = SAMPLE_NAMESPACE,
                     start_ns: int = SAMPLE_START_NS, overwrite: bool = False, seed: int = 0) -> List[Dict[str, Any]]:
    """Write the demo bag; returns one dict per frame (name, stamp_ns, size).

    Topics (namespace /stereo by default): left|right/image_rect (rgb8), left|right/
    camera_info, ground_truth/disparity (DisparityImage, invalid below min_disparity).
    Every message's log time equals its header stamp; frames are 1/rate_hz apart.
    ``reliability`` is the offered QoS recorded in the metadata (what `ros2 bag play`
    and `madis-bag play --qos auto` replay with)."""
    if rate_hz <= 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate_hz}")
    ns_ = namespace.rstrip("/")
    t_left, t_right = f"{ns_}/left/image_rect", f"{ns_}/right/image_rect"
    t_li, t_ri = f"{ns_}/left/camera_info", f"{ns_}/right/camera_info"
    t_gt = f"{ns_}/ground_truth/disparity"
    manifest = []
    with BagWriter(out, storage=storage, overwrite=overwrite) as w:
        for t, ty in ((t_li, CAMERA_INFO), (t_ri, CAMERA_INFO), (t_left, IMAGE), (t_right, IMAGE), (t_gt, DISPARITY)):
            w.add_topic(t, ty, reliability=reliability)
        for i, (name, left, right, gt, cam) in enumerate(sample_frames(synthetic_frames, seed)):
            stamp = int(start_ns + round(i * 1e9 / rate_hz))
            hl, hr = ROSBAGS.header(stamp, SAMPLE_LEFT_FRAME), ROSBAGS.header(stamp, SAMPLE_RIGHT_FRAME)
            li, ri = camera_info_msgs(cam, hl, hr, kit=ROSBAGS)
            w.write(t_li, li, stamp)
            w.write(t_ri, ri, stamp)
            w.write(t_left, numpy_to_image(left, "rgb8", hl, kit=ROSBAGS), stamp)
            w.write(t_right, numpy_to_image(right, "rgb8", hr, kit=ROSBAGS), stamp)
            gt_max = float(np.nanmax(gt)) if np.isfinite(gt).any() else 0.0
            w.write(t_gt, make_disparity_image(gt, cam, hl, 0.0, gt_max, 1.0 / 256, kit=ROSBAGS), stamp)
            manifest.append({"name": name, "stamp_ns": stamp, "width": int(left.shape[1]),
                             "height": int(left.shape[0])})
    return manifest


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    manifest = write_sample_bag(args.out, args.synthetic_frames, args.storage, args.rate, args.qos,
                                args.namespace, overwrite=args.overwrite, seed=args.seed)
    print(f"wrote {args.out} ({args.storage}, {len(manifest)} frames at {args.rate:g} Hz, recorded QoS {args.qos}) "
         f"in {time.perf_counter() - t0:.1f} s:")
    for m in manifest:
        print(f"  {m['stamp_ns']}  {m['name']} ({m['width']}x{m['height']})")
    return 0


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("out", help="output bag folder")
    s.add_argument("--synthetic-frames", type=int, default=3)
    s.add_argument("--storage", default="mcap", choices=STORAGES)
    s.add_argument("--rate", type=float, default=2.0, help="frames per second of bag time")
    s.add_argument("--qos", default="reliable", choices=["reliable", "best_effort"], help="recorded offered QoS")
    s.add_argument("--namespace", default=SAMPLE_NAMESPACE)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
