"""Which topics of a bag are the stereo inputs and the ground truth, and how to read the latter.

    st = detect_stereo_topics(bag.topics)          # by message type; left/right by name
    st.left, st.right, st.left_info, st.right_info, st.gt, st.gt_type
    disparity, kind = ground_truth_disparity(msg, st.gt, camera)   # a DisparityImage or a depth/disparity Image
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from madis_core.camera import StereoCamera
from madis_core.io import millimetres_to_depth
from madis_ros.bag.files import CAMERA_INFO, COMPRESSED_IMAGE, DISPARITY, IMAGE, BagError, TopicInfo
from madis_ros.image_conversion import image_to_numpy
from madis_ros.messages import disparity_from_msg

#: substrings that mark a topic as ground truth when auto-detecting it
GT_MARKERS = ("ground_truth", "groundtruth", "gt")


@dataclass
class StereoTopics:
    left: str
    right: str
    left_info: Optional[str]
    right_info: Optional[str]
    gt: Optional[str] = None
    gt_type: Optional[str] = None

    def all(self) -> List[str]:
        return [t for t in (self.left, self.right, self.left_info, self.right_info, self.gt) if t]


def _segments(topic: str) -> List[str]:
    return [s for s in topic.lower().replace("-", "_").split("/") if s]


def _has_side(topic: str, side: str) -> bool:
    return any(side in seg.split("_") or seg.startswith(side) for seg in _segments(topic))


def is_ground_truth_topic(topic: str) -> bool:
    """True for topics named as ground truth (a 'gt' segment part, ground_truth, groundtruth)."""
    return _is_gt(topic)


def _is_gt(topic: str) -> bool:
    segs = _segments(topic)
    return any(m in seg.split("_") or seg == m for seg in segs for m in GT_MARKERS) or any(
        m in topic.lower() for m in ("ground_truth", "groundtruth"))


def _pick(cands: List[str], what: str, flag: str, all_of_type: List[str]) -> str:
    if len(cands) == 1:
        return cands[0]
    rect = [c for c in cands if "rect" in c.lower()]
    if len(rect) == 1:
        return rect[0]
    if not cands:
        raise BagError(f"no {what} topic found among {all_of_type or 'no topics of that type'}; pass {flag}")
    raise BagError(f"several candidate {what} topics {cands}; pass {flag}")


def detect_stereo_topics(topics: Dict[str, TopicInfo], left: Optional[str] = None, right: Optional[str] = None,
                         left_info: Optional[str] = None, right_info: Optional[str] = None,
                         gt: Optional[str] = None) -> StereoTopics:
    """Choose the stereo topics by message type (Image, else CompressedImage); left/right by name
    ('left'/'right' in a path segment, preferring 'rect'); camera_info next to its image (also
    for ``.../image/compressed``); ground truth only when named (gt / ground_truth) or given, so
    a prediction is never taken for it."""
    for given, flag in ((left, "--left-topic"), (right, "--right-topic"), (left_info, "--left-info-topic"),
                        (right_info, "--right-info-topic"), (gt, "--gt-topic")):
        if given is not None and given not in topics:
            raise BagError(f"{flag} {given!r} is not in the bag; topics: {sorted(topics)}")
    raw = sorted(t for t, i in topics.items() if i.msgtype == IMAGE and not _is_gt(t))
    compressed = sorted(t for t, i in topics.items() if i.msgtype == COMPRESSED_IMAGE and not _is_gt(t))
    infos = sorted(t for t, i in topics.items() if i.msgtype == CAMERA_INFO)

    def image_for(side: str) -> str:  # raw images first, compressed ones when a side has no raw topic
        cands = [t for t in raw if _has_side(t, side)] or [t for t in compressed if _has_side(t, side)]
        return _pick(cands, f"{side} image", f"--{side}-topic", raw + compressed)

    left = left or image_for("left")
    right = right or image_for("right")
    for name, t in (("left", left), ("right", right)):
        if topics[t].msgtype not in (IMAGE, COMPRESSED_IMAGE):
            raise BagError(f"{name} topic {t!r} is {topics[t].msgtype}, expected {IMAGE} or {COMPRESSED_IMAGE}")

    def info_for(image_topic: str, side: str) -> Optional[str]:
        base = image_topic[:-len("/compressed")] if image_topic.endswith("/compressed") else image_topic
        sibling = posixpath.join(posixpath.dirname(base), "camera_info")
        if sibling in infos:
            return sibling
        cands = [t for t in infos if _has_side(t, side)]
        return cands[0] if len(cands) == 1 else None

    left_info = left_info or info_for(left, "left")
    right_info = right_info or info_for(right, "right")
    if left_info is None or right_info is None:
        raise BagError(f"cannot find the left/right camera_info topics among {infos}; pass --left-info-topic "
                       "and --right-info-topic (depth and the metrics' camera need them)")
    if gt is None:
        cands = sorted(t for t, i in topics.items() if i.msgtype in (DISPARITY, IMAGE) and _is_gt(t))
        if len(cands) > 1:
            raise BagError(f"several ground-truth candidates {cands}; pass --gt-topic")
        gt = cands[0] if cands else None
    gt_type = topics[gt].msgtype if gt else None
    if gt_type not in (None, DISPARITY, IMAGE):
        raise BagError(f"--gt-topic {gt!r} is {gt_type}; expected {DISPARITY} or a 32FC1/16UC1 {IMAGE}")
    return StereoTopics(left, right, left_info, right_info, gt, gt_type)


def ground_truth_disparity(msg: Any, topic: str, camera: StereoCamera, kind: str = "auto") -> Tuple[np.ndarray, str]:
    """Ground-truth message -> (float32 disparity, NaN invalid; 'disparity' or 'depth').

    DisparityImage is disparity. An Image is depth when it is 16UC1 (mm) or its topic
    names depth (32FC1 metres), else disparity; ``kind`` overrides the guess."""
    if hasattr(msg, "image") and hasattr(msg, "min_disparity"):
        d = disparity_from_msg(msg)
        d[~(d > 0)] = np.nan
        return d, "disparity"
    arr = image_to_numpy(msg)
    if arr.ndim != 2:
        raise BagError(f"ground truth on {topic} has encoding {msg.encoding}; expected one channel (32FC1/16UC1)")
    if kind == "auto":
        kind = "depth" if (msg.encoding in ("16UC1", "mono16") or "depth" in topic.lower()) else "disparity"
    if kind == "depth":
        z = millimetres_to_depth(arr) if arr.dtype == np.uint16 else arr.astype(np.float32)
        z[~np.isfinite(z) | (z <= 0)] = np.nan
        if camera.width != arr.shape[1] or camera.height != arr.shape[0]:
            camera = camera.scaled(arr.shape[1], arr.shape[0])
        return camera.depth_to_disparity(z), "depth"
    d = arr.astype(np.float32)
    d[~np.isfinite(d) | (d <= 0)] = np.nan
    return d, "disparity"


def output_namespace(left_topic: str) -> str:
    """'/stereo/left/image_rect' -> '/stereo' (where a node in that namespace publishes)."""
    parent = posixpath.dirname(posixpath.dirname(left_topic))
    return parent if parent not in ("", "/") else ""
