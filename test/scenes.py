"""Synthetic stereo scenes with exact ground truth for the tests and benchmarks, and their
ROS messages (no DDS): ``make_scene`` and ``image_pair_messages``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Scene:
    left: np.ndarray  # uint8 HxWx3 RGB
    right: np.ndarray
    disparity: np.ndarray  # float32 HxW ground truth (left view)
    camera: Any  # madis_core.camera.StereoCamera

    @property
    def depth(self) -> np.ndarray:
        return self.camera.disparity_to_depth(self.disparity)


def make_scene(width: int = 320, height: int = 240, kind: str = "plane", disparity: float = 24.0,
               seed: int = 0, fx: float = 300.0, baseline: float = 0.1) -> Scene:
    """A textured pair SGBM matches well: ``plane`` (fronto-parallel, constant integer
    disparity) or ``slanted`` (disparity grows linearly with the row, like a floor), or
    ``photo``: a plane textured with a real photograph (scikit-image's Motorcycle, tiled at its
    own scale), which compresses like camera images do (the noise texture does not).
    The right image is the left texture shifted by the disparity, so the truth is exact."""
    import cv2

    from madis_core.camera import StereoCamera

    rng = np.random.default_rng(seed)
    pad = int(disparity * 2 + 8)
    if kind == "photo":
        from skimage import data

        photo = data.stereo_motorcycle()[0]
        reps = (-(-height // photo.shape[0]), -(-(width + pad) // photo.shape[1]), 1)
        tex = np.tile(photo, reps)[:height, :width + pad].astype(np.float32)
    else:
        tex = rng.integers(0, 256, size=(height, width + pad, 3)).astype(np.float32)
        tex = cv2.GaussianBlur(tex, (0, 0), 1.0)
        tex = np.clip((tex - tex.mean()) * 2.5 + 128, 0, 255).astype(np.float32)
    if kind in ("plane", "photo"):
        disp = np.full((height, width), float(disparity), np.float32)
    elif kind == "slanted":
        disp = (0.6 * disparity + 0.8 * disparity * np.arange(height, dtype=np.float32)[:, None] / height
                ) * np.ones((1, width), np.float32)
    else:
        raise ValueError(f"unknown scene kind {kind!r}")
    xs = np.arange(width, dtype=np.float32)[None, :].repeat(height, 0) + pad // 2
    ys = np.arange(height, dtype=np.float32)[:, None].repeat(width, 1)
    left = cv2.remap(tex, xs, ys, cv2.INTER_LINEAR)
    # right(u) = left(u + d): the point at left column u appears d px further left in the right view
    right = cv2.remap(tex, xs + disp, ys, cv2.INTER_LINEAR)
    cam = StereoCamera(width, height, fx, fx, (width - 1) / 2.0, (height - 1) / 2.0, baseline)
    return Scene(left.round().astype(np.uint8), right.round().astype(np.uint8), disp.astype(np.float32), cam)


def image_pair_messages(scene: Scene, encoding: str = "rgb8", frame: str = "left_optical", stamp: Any = None):
    """(left Image, right Image, left CameraInfo, right CameraInfo) rclpy messages for ``scene``."""
    from madis_ros.image_conversion import numpy_to_image
    from madis_ros.messages import camera_info_msgs

    imgs = []
    for img in (scene.left, scene.right):
        if encoding == "bgr8":
            img = img[..., ::-1]
        elif encoding == "mono8":
            img = (img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
        imgs.append(numpy_to_image(np.ascontiguousarray(img), encoding, frame_id=frame, stamp=stamp))
    imgs[1].header.frame_id = frame.replace("left", "right")
    li, ri = camera_info_msgs(scene.camera, imgs[0].header, imgs[1].header)
    return imgs[0], imgs[1], li, ri
