"""Message classes of two worlds behind one interface, so every builder is written once.

    kit.make("sensor_msgs/msg/Image", header=..., height=..., ..., data=numpy_or_bytes)
    kit.header(stamp_ns, frame_id)          a std_msgs/Header of this kit
    kit.copy_header(any_header)             the same stamp and frame_id as a Header of this kit

``RCLPY``: the generated rclpy classes (``sensor_msgs.msg.Image`` ...), for the node and
anything that publishes over DDS. ``ROSBAGS``: the rosbags typestore's dataclasses
(Kilted), for bags written and read without a ROS install. ``make`` takes every field
(rosbags' classes have no defaults); a ``uint8[]`` ``data`` is filled with one copy:
rclpy keeps it as ``array.array('B')`` refilled in place (assigning bytes would copy
twice, and check every element when ROS_PYTHON_CHECK_FIELDS=1), rosbags as a numpy view.
Readers never need a kit: the decoders in ``image_conversion`` and ``messages`` are
duck-typed on field names, which both worlds share.
"""
from __future__ import annotations

import array
import functools
import importlib
from typing import Any

import numpy as np

NS_PER_S = 1_000_000_000


def stamp_ns(obj: Any) -> int:
    """Nanoseconds of a message's ``header.stamp`` or of a header's ``stamp`` (rclpy or rosbags)."""
    s = getattr(obj, "header", obj).stamp
    return int(s.sec) * NS_PER_S + int(s.nanosec)


def set_uint8_data(msg: Any, buf: Any) -> None:
    """Put the bytes of ``buf`` (a C-contiguous array or bytes-like) into an rclpy message's
    ``data`` with a single copy, whatever ROS_PYTHON_CHECK_FIELDS says (see the module doc)."""
    if isinstance(buf, np.ndarray):
        buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    data = getattr(msg, "data", None)
    if isinstance(data, array.array) and data.typecode == "B":
        if len(data):
            del data[:]
        data.frombytes(buf)
        return
    fresh = array.array("B")
    fresh.frombytes(buf)
    msg.data = fresh


class MessageKit:
    name = "kit"

    def cls(self, msgtype: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def make(self, msgtype: str, **fields: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def header(self, ns: int, frame_id: str) -> Any:
        t = self.make("builtin_interfaces/msg/Time", sec=int(ns // NS_PER_S), nanosec=int(ns % NS_PER_S))
        return self.make("std_msgs/msg/Header", stamp=t, frame_id=str(frame_id))

    def copy_header(self, header: Any) -> Any:
        return self.header(stamp_ns(header), header.frame_id)


class RclpyKit(MessageKit):
    name = "rclpy"

    @functools.lru_cache(maxsize=None)
    def cls(self, msgtype: str) -> Any:
        pkg, kind, name = msgtype.split("/")
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)

    def make(self, msgtype: str, **fields: Any) -> Any:
        data = fields.pop("data", None)
        msg = self.cls(msgtype)(**fields)
        if data is not None:
            set_uint8_data(msg, data)
        return msg

    def copy_header(self, header: Any) -> Any:
        if type(header) is self.cls("std_msgs/msg/Header"):
            return self.cls("std_msgs/msg/Header")(stamp=header.stamp, frame_id=header.frame_id)
        return super().copy_header(header)


class RosbagsKit(MessageKit):
    name = "rosbags"

    @functools.cached_property
    def typestore(self) -> Any:
        from rosbags.typesys import Stores, get_typestore

        for store in ("ROS2_KILTED", "ROS2_JAZZY", "LATEST"):
            if hasattr(Stores, store):
                return get_typestore(getattr(Stores, store))
        raise RuntimeError("the installed rosbags has no ROS 2 typestore; upgrade rosbags (>= 0.10)")

    def cls(self, msgtype: str) -> Any:
        try:
            return self.typestore.types[msgtype]
        except KeyError:
            raise ValueError(f"message type {msgtype!r} is not in the rosbags typestore") from None

    def make(self, msgtype: str, **fields: Any) -> Any:
        data = fields.get("data")
        if data is not None and not isinstance(data, np.ndarray):
            fields["data"] = np.frombuffer(bytes(data), dtype=np.uint8)
        elif data is not None:
            fields["data"] = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        return self.cls(msgtype)(**fields)


RCLPY = RclpyKit()
ROSBAGS = RosbagsKit()
