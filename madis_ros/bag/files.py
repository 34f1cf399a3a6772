"""rosbag2 files (mcap and sqlite3) read and written with the ``rosbags`` library only.

    with BagReader(path) as bag:
        bag.topics                      # {name: TopicInfo(name, msgtype, count, reliability)}
        for conn, log_ns, raw in bag.messages(["/left/image_rect"]): deserialize(raw, conn.msgtype)
    with BagWriter(path, storage="mcap") as w:
        w.add_topic("/left/image_rect", IMAGE, reliability="best_effort")
        w.write("/left/image_rect", numpy_to_image(img, "rgb8", header, kit=ROSBAGS), log_ns)

Messages are built with ``madis_ros.messages`` and the ``ROSBAGS`` kit (the Kilted
typestore). Bags that cannot be read or written raise :class:`BagError` with what to do.
Nothing here imports rclpy.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple

from madis_ros.msgkit import ROSBAGS

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
DISPARITY = "stereo_msgs/msg/DisparityImage"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
CLOCK = "rosgraph_msgs/msg/Clock"

STORAGES = ("mcap", "sqlite3")


class BagError(RuntimeError):
    """A bag that cannot be read or written, with a message that says why and what to do."""


def typestore():
    """The rosbags typestore closest to the ROS distribution the wheels are (Kilted)."""
    try:
        return ROSBAGS.typestore
    except RuntimeError as exc:
        raise BagError(str(exc)) from None


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
