"""rosbag2 (mcap and sqlite3) reading and writing with the `rosbags` library only.

Why this module exists: pip users have no `ros2 bag` and no rosbag2 C++ stack, yet
they want to record a sample, evaluate a model on a recorded drive, and replay it.
`rosbags` reads and writes rosbag2 without a ROS install; this module adds what a
stereo pipeline needs on top of it:

* numpy -> message builders for Image, CameraInfo, DisparityImage, PointCloud2 and
  Clock (rosbags message objects, serialised with the Kilted typestore);
* message -> numpy decoders that are duck-typed, so they work on rosbags objects
  read from a bag and on rclpy messages received over DDS alike;
* stereo topic auto-detection by message type (left/right by name when unambiguous);
* pairing of left/right/camera_info/ground truth by header stamp, streaming, with
  bounded memory and drop counters;
* clear :class:`BagError` messages for missing, truncated or corrupt bags.

Nothing here imports rclpy.
"""
from __future__ import annotations

import bisect
import functools
import os
import posixpath
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from madis_core.camera import StereoCamera
from madis_core.io import millimetres_to_depth

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
DISPARITY = "stereo_msgs/msg/DisparityImage"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
CLOCK = "rosgraph_msgs/msg/Clock"

STORAGES = ("mcap", "sqlite3")
#: substrings that mark a topic as ground truth when auto-detecting it
GT_MARKERS = ("ground_truth", "groundtruth", "gt")


class BagError(RuntimeError):
    """A bag that cannot be read or written, with a message that says why and what to do."""


# --------------------------------------------------------------------------------------
# typestore
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def typestore():
    """The rosbags typestore closest to the ROS distribution the wheels are (Kilted)."""
    from rosbags.typesys import Stores, get_typestore

    for name in ("ROS2_KILTED", "ROS2_JAZZY", "LATEST"):
        store = getattr(Stores, name, None)
        if store is not None:
            return get_typestore(store)
    raise BagError("the installed rosbags has no ROS 2 typestore; upgrade rosbags (>= 0.10)")


def msg_class(msgtype: str):
    try:
        return typestore().types[msgtype]
    except KeyError:
        raise BagError(f"message type {msgtype!r} is not in the rosbags typestore") from None


def serialize(msg: Any, msgtype: Optional[str] = None) -> bytes:
    """rosbags message -> CDR bytes (the same bytes rclpy.serialization produces)."""
    return bytes(typestore().serialize_cdr(msg, msgtype or msg.__msgtype__))


def deserialize(data: bytes, msgtype: str) -> Any:
    return typestore().deserialize_cdr(data, msgtype)


# --------------------------------------------------------------------------------------
# QoS profiles as recorded in metadata.yaml (offered_qos_profiles)
# --------------------------------------------------------------------------------------
def recorded_qos(reliability: str = "reliable", depth: int = 10):
    """A rosbags Qos as `ros2 bag record` stores it for a publisher with this reliability."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    rel = {"reliable": QosReliability.RELIABLE, "best_effort": QosReliability.BEST_EFFORT}
    if reliability not in rel:
        raise ValueError(f"reliability must be 'reliable' or 'best_effort', got {reliability!r}")
    inf = QosTime(sec=2147483647, nsec=4294967295)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=rel[reliability],
               durability=QosDurability.VOLATILE, deadline=inf, lifespan=inf,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=inf,
               avoid_ros_namespace_conventions=False)


def qos_reliability(profiles: Sequence[Any]) -> Optional[str]:
    """'reliable' / 'best_effort' from a connection's recorded QoS (None when unknown).
    Several publishers: best effort wins, because a reliable subscriber would miss them."""
    names = set()
    for q in profiles or ():
        rel = getattr(getattr(q, "reliability", None), "name", None)
        if rel in ("RELIABLE", "BEST_EFFORT"):
            names.add(rel.lower())
    if "best_effort" in names:
        return "best_effort"
    return "reliable" if names else None


# --------------------------------------------------------------------------------------
# numpy -> rosbags messages
# --------------------------------------------------------------------------------------
def stamp_ns(header: Any) -> int:
    """Header (rosbags or rclpy) -> integer nanoseconds."""
    st = header.stamp
    sec = st.sec
    nsec = getattr(st, "nanosec", None)
    return int(sec) * 1_000_000_000 + int(nsec if nsec is not None else st.nsec)


def make_time(ns: int):
    t = msg_class("builtin_interfaces/msg/Time")
    return t(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def make_header(ns: int, frame_id: str):
    return msg_class("std_msgs/msg/Header")(stamp=make_time(ns), frame_id=frame_id)


def _roi(x: int = 0, y: int = 0, h: int = 0, w: int = 0):
    return msg_class("sensor_msgs/msg/RegionOfInterest")(x_offset=x, y_offset=y, height=h, width=w, do_rectify=False)


def _default_encoding(array: np.ndarray) -> str:
    if array.dtype == np.uint8:
        return "mono8" if array.ndim == 2 else "rgb8"
    if array.dtype == np.uint16:
        return "mono16" if array.ndim == 2 else "rgb16"
    if array.dtype == np.float32 and array.ndim == 2:
        return "32FC1"
    raise ValueError(f"no default image encoding for {array.dtype} array of shape {array.shape}")


def image_msg(array: np.ndarray, ns: int, frame_id: str, encoding: Optional[str] = None):
    """numpy image (HxW or HxWxC, uint8/uint16/float32, little endian) -> sensor_msgs/Image."""
    a = np.ascontiguousarray(array)
    if a.ndim not in (2, 3) or a.size == 0:
        raise ValueError(f"image must be a non-empty HxW or HxWxC array, got shape {a.shape}")
    encoding = encoding or _default_encoding(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h, w = a.shape[:2]
    step = a.strides[0]
    return msg_class(IMAGE)(header=make_header(ns, frame_id), height=h, width=w, encoding=encoding,
                            is_bigendian=0, step=step, data=np.frombuffer(a.tobytes(), dtype=np.uint8))


def camera_info_msgs(camera: StereoCamera, ns: int, left_frame: str, right_frame: str):
    """A rectified pair's two CameraInfo messages (plumb_bob, zero distortion, R = I).
    P_right[0,3] = -fx * baseline and P_right[0,2] = cx_left + doffs, as stereo_image_proc expects."""
    p_left, p_right = camera.projection_matrices()
    cls = msg_class(CAMERA_INFO)
    out = []
    for p, frame in ((p_left, left_frame), (p_right, right_frame)):
        k = p[:, :3].copy()
        out.append(cls(header=make_header(ns, frame), height=camera.height, width=camera.width,
                       distortion_model="plumb_bob", d=np.zeros(5), k=k.reshape(-1).astype(np.float64),
                       r=np.eye(3).reshape(-1), p=p.reshape(-1).astype(np.float64), binning_x=0, binning_y=0,
                       roi=_roi()))
    return out[0], out[1]


def disparity_msg(disparity: np.ndarray, camera: StereoCamera, ns: int, frame_id: str,
                  min_disparity: float = 0.0, max_disparity: float = 192.0, delta_d: float = 1.0 / 16.0):
    """float32 HxW disparity (NaN invalid) -> stereo_msgs/DisparityImage, filled exactly as
    the node fills it (madis_ros.outputs.make_disparity_image): invalid pixels written as
    ``min_disparity - 1``, valid_window = bounding box of the valid pixels, f = fx, t = baseline."""
    from madis_ros.outputs import disparity_body

    d = np.asarray(disparity, dtype=np.float32)
    if d.shape != (camera.height, camera.width):
        raise ValueError(f"disparity {d.shape[1]}x{d.shape[0]} does not match camera {camera.width}x{camera.height}")
    body, (x, y, w, h) = disparity_body(d, min_disparity)
    return msg_class(DISPARITY)(header=make_header(ns, frame_id), image=image_msg(body, ns, frame_id, "32FC1"),
                                f=float(camera.fx), t=float(camera.baseline), valid_window=_roi(x, y, h, w),
                                min_disparity=float(min_disparity), max_disparity=float(max_disparity),
                                delta_d=float(delta_d))


def depth_msg(depth_m: np.ndarray, ns: int, frame_id: str):
    """32FC1 metres with NaN invalid (REP 118), as the node publishes ``depth``."""
    z = np.asarray(depth_m, dtype=np.float32)
    z = np.where(np.isfinite(z) & (z > 0), z, np.float32(np.nan)).astype(np.float32)
    return image_msg(z, ns, frame_id, "32FC1")


def pointcloud2_msg(points: np.ndarray, ns: int, frame_id: str, colors: Optional[np.ndarray] = None):
    """Organized HxWx3 (or unorganized Nx3) float32 points, NaN invalid -> PointCloud2 (x, y, z[, rgb])."""
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[2] != 3:
        raise ValueError(f"points must be HxWx3 or Nx3, got {np.shape(points)}")
    h, w = pts.shape[:2]
    pf = msg_class("sensor_msgs/msg/PointField")
    names = ["x", "y", "z"] + (["rgb"] if colors is not None else [])
    fields = [pf(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate(names)]  # 7 = FLOAT32
    rec = np.empty((h, w, len(names)), dtype="<f4")
    rec[..., :3] = pts
    if colors is not None:
        from madis_ros.outputs import pack_rgb

        rec[..., 3].view(np.uint32)[...] = pack_rgb(np.asarray(colors).reshape(h, w, 3)).view(np.uint32)
    step = 4 * len(names)
    return msg_class(POINTCLOUD2)(header=make_header(ns, frame_id), height=h, width=w, fields=fields,
                                  is_bigendian=False, point_step=step, row_step=step * w,
                                  data=np.frombuffer(rec.tobytes(), dtype=np.uint8),
                                  is_dense=bool(np.all(np.isfinite(pts))))


def clock_msg(ns: int):
    return msg_class(CLOCK)(clock=make_time(ns))


# --------------------------------------------------------------------------------------
# messages (rosbags or rclpy) -> numpy
# --------------------------------------------------------------------------------------
def image_to_numpy(msg: Any) -> np.ndarray:
    """Any sensor_msgs/Image -> numpy (the node's own converter, so bag and DDS agree)."""
    from madis_ros.image_conversion import image_to_numpy as convert

    return convert(msg)


def image_to_estimator_input(msg: Any) -> np.ndarray:
    """Image -> HxW or HxWx3 RGB uint8/uint16, exactly what the node feeds the model."""
    from madis_ros.image_conversion import image_to_estimator_input as convert

    return convert(msg)


def disparity_to_numpy(msg: Any) -> np.ndarray:
    """DisparityImage -> float32 HxW with NaN where invalid (non-finite or < min_disparity)."""
    from madis_ros.outputs import disparity_from_msg

    return disparity_from_msg(msg)


def pointcloud2_to_numpy(msg: Any) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """PointCloud2 with float32 x, y, z (and optional rgb) -> (HxWx3 float32, HxWx3 uint8 or None)."""
    from madis_ros.outputs import pointcloud2_to_numpy as convert

    return convert(msg)


def camera_from_infos(left_info: Any, right_info: Any, image_size: Optional[Tuple[int, int]] = None) -> StereoCamera:
    """CameraInfo pair (rosbags or rclpy) -> validated StereoCamera (the node's own conversion)."""
    from madis_ros.camera_info import stereo_camera_from_infos

    return stereo_camera_from_infos(left_info, right_info, image_size)


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
@dataclass
class TopicInfo:
    name: str
    msgtype: str
    count: int
    reliability: Optional[str]  # recorded offered QoS: 'reliable', 'best_effort' or None


def _describe_bag(path: Path) -> str:
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir())
        return f"bag folder {path} (files: {', '.join(files) or 'none'})"
    return f"bag file {path} ({path.stat().st_size} bytes)" if path.exists() else f"{path}"


def _repair_hint(path: Path) -> str:
    files = [path] if path.is_file() else list(path.iterdir())
    if any(f.suffix == ".mcap" for f in files):
        return ("an interrupted recording leaves an mcap file without its footer; `mcap recover` (the mcap CLI) "
                "can salvage the complete chunks")
    return "a sqlite3 bag with a damaged database cannot be read; `ros2 bag reindex` rebuilds a lost metadata.yaml"


class BagReader:
    """A rosbags Reader with clear errors; use as a context manager.

        with BagReader(path) as bag:
            bag.topics            # {name: TopicInfo}
            for conn, log_ns, raw in bag.messages(["/left/image_rect"]): ...
    """

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        self._reader = None

    def __enter__(self) -> "BagReader":
        from rosbags.rosbag2 import Reader

        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag (give the bag folder with metadata.yaml, or a .mcap/.db3 file)")
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            raise BagError(f"{_describe_bag(self.path)} is not a rosbag2 folder: it has no metadata.yaml (give the "
                           "folder `ros2 bag record` wrote, or a single .mcap/.db3 file)")
        if self.path.is_file() and self.path.suffix not in (".mcap", ".db3"):
            raise BagError(f"{self.path}: not a rosbag2 file (expected a .mcap or .db3 file, or a bag folder)")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # rosbags raises many types for bad files
            raise BagError(f"cannot open {_describe_bag(self.path)}: {type(exc).__name__}: {exc}. "
                           f"It is not a complete rosbag2; {_repair_hint(self.path)}") from exc
        return self

    def __exit__(self, *exc) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except Exception:
                pass
            self._reader = None

    @property
    def storage(self) -> str:
        """'mcap' or 'sqlite3' (from the storage files' suffix)."""
        files = [self.path] if self.path.is_file() else list(self.path.iterdir())
        suffixes = {f.suffix for f in files}
        return "mcap" if ".mcap" in suffixes else "sqlite3" if ".db3" in suffixes else "?"

    @property
    def connections(self) -> list:
        return list(self._reader.connections)

    @property
    def topics(self) -> Dict[str, TopicInfo]:
        out: Dict[str, TopicInfo] = {}
        for c in self._reader.connections:
            prev = out.get(c.topic)
            rel = qos_reliability(getattr(c.ext, "offered_qos_profiles", ()))
            if prev is None:
                out[c.topic] = TopicInfo(c.topic, c.msgtype, int(c.msgcount), rel)
            else:
                prev.count += int(c.msgcount)
                if rel == "best_effort":
                    prev.reliability = rel
        return out

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def duration_ns(self) -> int:
        return int(self._reader.duration)

    def messages(self, topics: Optional[Iterable[str]] = None) -> Iterator[Tuple[Any, int, bytes]]:
        """(connection, log time ns, raw CDR bytes) in log-time order; errors become BagError."""
        wanted = set(topics) if topics is not None else None
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        n = 0
        try:
            for conn, t, raw in self._reader.messages(connections=conns):
                n += 1
                yield conn, int(t), raw
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"{_describe_bag(self.path)} is truncated or corrupt: reading stopped after {n} "
                           f"messages ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------
# topic detection
# --------------------------------------------------------------------------------------
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
    """Choose the stereo topics by message type; left/right by name ('left'/'right' in a
    path segment, preferring 'rect'); camera_info next to its image; ground truth only
    when named (gt / ground_truth) or given, so a prediction is never taken for it."""
    for given, flag in ((left, "--left-topic"), (right, "--right-topic"), (left_info, "--left-info-topic"),
                        (right_info, "--right-info-topic"), (gt, "--gt-topic")):
        if given is not None and given not in topics:
            raise BagError(f"{flag} {given!r} is not in the bag; topics: {sorted(topics)}")
    images = sorted(t for t, i in topics.items() if i.msgtype == IMAGE and not _is_gt(t))
    infos = sorted(t for t, i in topics.items() if i.msgtype == CAMERA_INFO)
    if left is None:
        left = _pick([t for t in images if _has_side(t, "left")], "left image", "--left-topic", images)
    if right is None:
        right = _pick([t for t in images if _has_side(t, "right")], "right image", "--right-topic", images)
    for name, t in (("left", left), ("right", right)):
        if topics[t].msgtype != IMAGE:
            raise BagError(f"{name} topic {t!r} is {topics[t].msgtype}, expected {IMAGE}")

    def info_for(image_topic: str, side: str) -> Optional[str]:
        sibling = posixpath.join(posixpath.dirname(image_topic), "camera_info")
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
        d = disparity_to_numpy(msg)
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


# --------------------------------------------------------------------------------------
# pairing by stamp
# --------------------------------------------------------------------------------------
@dataclass
class StereoFrame:
    stamp_ns: int
    log_ns: int
    left: Any
    right: Any
    left_info: Any
    right_info: Any
    gt: Any = None


@dataclass
class PairingStats:
    left_in: int = 0
    right_in: int = 0
    pairs: int = 0
    dropped_left: int = 0  # left images without a right partner
    dropped_right: int = 0
    no_camera_info: int = 0  # pairs dropped because no camera_info had arrived yet
    extra: Dict[str, int] = field(default_factory=dict)


class StereoPairer:
    """Pairs left/right images by header stamp (exact, or nearest within ``slop`` s),
    attaches camera_info of the same stamp (else the latest seen) and the ground truth
    of the left stamp. Streaming: a pair waits at most ``window_s`` of bag time for its
    camera_info / ground truth, unmatched images are dropped (and counted) after that."""

    def __init__(self, slop: float = 0.0, window_s: float = 1.0, want_gt: bool = False):
        self.slop_ns = int(round(slop * 1e9))
        self.window_ns = int(round(window_s * 1e9))
        self.want_gt = want_gt
        self.stats = PairingStats()
        self._left: "OrderedDict[int, Tuple[int, Any]]" = OrderedDict()
        self._right: "OrderedDict[int, Tuple[int, Any]]" = OrderedDict()
        self._pairs: List[Tuple[int, int, Any, Any]] = []  # (stamp, log, left, right), sorted by stamp
        self._info: Dict[str, "OrderedDict[int, Any]"] = {"left": OrderedDict(), "right": OrderedDict()}
        self._latest_info: Dict[str, Any] = {"left": None, "right": None}
        self._gt: "OrderedDict[int, Any]" = OrderedDict()

    def _match(self, stamp: int, others: "OrderedDict[int, Tuple[int, Any]]") -> Optional[int]:
        if stamp in others:
            return stamp
        if self.slop_ns <= 0 or not others:
            return None
        best = min(others, key=lambda s: abs(s - stamp))
        return best if abs(best - stamp) <= self.slop_ns else None

    def add(self, role: str, msg: Any, log_ns: int) -> List[StereoFrame]:
        """Feed one message ('left', 'right', 'left_info', 'right_info' or 'gt'); returns
        the frames that became complete or timed out."""
        stamp = stamp_ns(msg.header)
        if role in ("left", "right"):
            setattr(self.stats, f"{role}_in", getattr(self.stats, f"{role}_in") + 1)
            mine, other = (self._left, self._right) if role == "left" else (self._right, self._left)
            match = self._match(stamp, other)
            if match is None:
                mine[stamp] = (log_ns, msg)
            else:
                olog, omsg = other.pop(match)
                l_stamp, l_msg, r_msg = (stamp, msg, omsg) if role == "left" else (match, omsg, msg)
                bisect.insort(self._pairs, (l_stamp, max(log_ns, olog), l_msg, r_msg), key=lambda p: p[0])
                self.stats.pairs += 1
        elif role in ("left_info", "right_info"):
            side = role.split("_")[0]
            self._info[side][stamp] = msg
            self._latest_info[side] = msg
        elif role == "gt":
            self._gt[stamp] = msg
        else:
            raise ValueError(f"unknown role {role!r}")
        return self._emit(log_ns, final=False)

    def flush(self) -> List[StereoFrame]:
        """End of bag: emit every pending pair, count the unmatched images as drops."""
        out = self._emit(None, final=True)
        self.stats.dropped_left += len(self._left)
        self.stats.dropped_right += len(self._right)
        self._left.clear()
        self._right.clear()
        return out

    def _ready(self, stamp: int) -> bool:
        have_info = stamp in self._info["left"] and stamp in self._info["right"]
        return have_info and (not self.want_gt or stamp in self._gt)

    def _emit(self, now: Optional[int], final: bool) -> List[StereoFrame]:
        out: List[StereoFrame] = []
        keep = []
        for stamp, log, lmsg, rmsg in self._pairs:
            timed_out = final or (now is not None and now - log > self.window_ns)
            if not (self._ready(stamp) or timed_out):
                keep.append((stamp, log, lmsg, rmsg))
                continue
            li = self._info["left"].get(stamp, self._latest_info["left"])
            ri = self._info["right"].get(stamp, self._latest_info["right"])
            if li is None or ri is None:
                self.stats.no_camera_info += 1
                continue
            out.append(StereoFrame(stamp, log, lmsg, rmsg, li, ri, self._gt.get(stamp)))
        self._pairs = keep
        if now is not None:
            self._expire(now)
        return out

    def _expire(self, now: int) -> None:
        horizon = now - self.window_ns
        for side, buf in (("left", self._left), ("right", self._right)):
            for s in [s for s, (log, _) in buf.items() if log < horizon]:
                del buf[s]
                setattr(self.stats, f"dropped_{side}", getattr(self.stats, f"dropped_{side}") + 1)
        oldest_pending = min((p[0] for p in self._pairs), default=None)
        for store in (self._info["left"], self._info["right"], self._gt):
            while len(store) > 64:
                s = next(iter(store))
                if oldest_pending is not None and s >= oldest_pending:
                    break
                store.popitem(last=False)


def iter_stereo_frames(bag: BagReader, topics: StereoTopics, slop: float = 0.0, window_s: float = 1.0,
                       on_message: Optional[Callable[[Any, int, bytes], None]] = None,
                       ) -> Tuple[Iterator[StereoFrame], PairingStats]:
    """Frames of a bag in stamp order; the returned stats fill in as the iterator runs.

    ``on_message(connection, log_ns, raw)`` sees every message of every topic first
    (eval uses it to copy the bag into its output bag in the same single pass)."""
    roles = {topics.left: "left", topics.right: "right", topics.left_info: "left_info",
             topics.right_info: "right_info"}
    if topics.gt:
        roles[topics.gt] = "gt"
    pairer = StereoPairer(slop=slop, window_s=window_s, want_gt=bool(topics.gt))

    def gen() -> Iterator[StereoFrame]:
        for conn, log_ns, raw in bag.messages(None if on_message else list(roles)):
            if on_message is not None:
                on_message(conn, log_ns, raw)
            role = roles.get(conn.topic)
            if role is None:
                continue
            try:
                msg = deserialize(raw, conn.msgtype)
            except Exception as exc:
                raise BagError(f"{bag.path}: message on {conn.topic} at {log_ns} ns cannot be decoded as "
                               f"{conn.msgtype} ({type(exc).__name__}: {exc}); the bag may be corrupt") from exc
            yield from pairer.add(role, msg, log_ns)
        yield from pairer.flush()

    return gen(), pairer.stats


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
class BagWriter:
    """rosbags Writer for mcap or sqlite3 with topics added on first use.

        with BagWriter(path, storage="mcap") as w:
            w.add_topic("/left/image_rect", IMAGE, reliability="best_effort")
            w.write("/left/image_rect", image_msg(img, ns, "left"), ns)
    """

    def __init__(self, path: os.PathLike | str, storage: str = "mcap", overwrite: bool = False):
        from rosbags.rosbag2 import StoragePlugin, Writer

        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            if not overwrite:
                raise BagError(f"{self.path} exists already; remove it or choose another output path")
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._conns: Dict[str, Any] = {}
        self.storage = storage

    def __enter__(self) -> "BagWriter":
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def add_topic(self, topic: str, msgtype: str, reliability: str = "reliable", qos: Optional[list] = None,
                  msgdef: Optional[str] = None, rihs01: Optional[str] = None) -> Any:
        if topic in self._conns:
            return self._conns[topic]
        profiles = list(qos) if qos is not None else [recorded_qos(reliability)]
        kw: Dict[str, Any] = {"offered_qos_profiles": profiles}
        if msgtype in typestore().types:
            kw["typestore"] = typestore()
        else:
            kw.update(msgdef=msgdef, rihs01=rihs01)
        self._conns[topic] = self._writer.add_connection(topic, msgtype, **kw)
        return self._conns[topic]

    def copy_topic(self, conn: Any) -> Any:
        """Add a topic with the type, definition and recorded QoS of a reader's connection."""
        msgdef = getattr(getattr(conn, "msgdef", None), "data", None)
        return self.add_topic(conn.topic, conn.msgtype, qos=list(getattr(conn.ext, "offered_qos_profiles", ()) or [])
                              or None, msgdef=msgdef, rihs01=conn.digest or None)

    def write(self, topic: str, msg: Any, log_ns: int) -> None:
        if topic not in self._conns:
            self.add_topic(topic, msg.__msgtype__)
        self._writer.write(self._conns[topic], int(log_ns), serialize(msg))

    def write_raw(self, topic: str, data: bytes, log_ns: int) -> None:
        if topic not in self._conns:
            raise BagError(f"topic {topic!r} was not added before write_raw")
        self._writer.write(self._conns[topic], int(log_ns), data)


def output_namespace(left_topic: str) -> str:
    """'/stereo/left/image_rect' -> '/stereo' (where a node in that namespace publishes)."""
    parent = posixpath.dirname(posixpath.dirname(left_topic))
    return parent if parent not in ("", "/") else ""
