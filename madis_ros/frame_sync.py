"""Stereo frames from four input streams: one synchroniser and one calibration cache, shared
by the node and ``madis-bag eval`` so that a bag is paired offline exactly as the node
pairs it live (no ROS imports; messages are duck-typed).

    sync = FrameSync(on_pair, approximate=False, slop=0.01, queue_size=5)
    sync.add(LEFT, image); sync.add(RIGHT, image); sync.add(LEFT_INFO, info); ...
    # on_pair(left, right) fires for each synchronised image pair
    left_info, right_info = sync.calibration.infos_for(left, right, wait_s=0.25)

Images are paired by ``madis_ros.sync.StereoSynchronizer`` (exact stamps, or approximate
within ``slop``; message_filters when importable). camera_info messages go to the
``CalibrationCache``: a pair takes the camera_info with its own stamp, else the latest of
each side. ``wait_s`` covers drivers that publish the first image before its camera_info.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

from madis_ros.msgkit import stamp_ns
from madis_ros.sync import StereoSynchronizer

LEFT, RIGHT, LEFT_INFO, RIGHT_INFO = "left", "right", "left_info", "right_info"
ROLES = (LEFT, RIGHT, LEFT_INFO, RIGHT_INFO)


class CalibrationCache:
    """The recent camera_info messages of each side, by stamp, plus the latest one."""

    def __init__(self, keep: int = 12):
        self.keep = int(keep)  # camera_info messages remembered per side
        self._by_stamp: Dict[int, "OrderedDict[int, Any]"] = {0: OrderedDict(), 1: OrderedDict()}
        self._latest: Dict[int, Any] = {}
        self._cond = threading.Condition()
        self._closed = False

    def add(self, side: int, msg: Any) -> None:
        with self._cond:
            cache = self._by_stamp[side]
            cache[stamp_ns(msg)] = msg
            while len(cache) > self.keep:
                cache.popitem(last=False)
            self._latest[side] = msg
            self._cond.notify_all()

    def close(self) -> None:
        """Wake and end every wait (shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def infos_for(self, left: Any, right: Any, wait_s: float = 0.0) -> Tuple[Optional[Any], Optional[Any]]:
        """camera_info for each image of a pair: the one with its stamp, else the latest; waits up
        to ``wait_s`` while a side has none at all."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while (0 not in self._latest or 1 not in self._latest) and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return tuple(self._by_stamp[side].get(stamp_ns(img), self._latest.get(side))
                         for side, img in ((0, left), (1, right)))  # type: ignore[return-value]


class FrameSync:
    """Images through the synchroniser, camera_info into the cache (see the module doc)."""

    def __init__(self, on_pair: Callable[[Any, Any], None], approximate: bool = False, slop: float = 0.01,
                 queue_size: int = 5, use_message_filters: Optional[bool] = None):
        """``on_pair(left, right)`` gets each synchronised image pair; ``approximate``/``slop`` (s)/
        ``queue_size`` are the node's sync parameters; ``use_message_filters`` None: when importable."""
        self.images = StereoSynchronizer(on_pair, n_inputs=2, approximate=approximate, slop=slop,
                                         queue_size=queue_size, use_message_filters=use_message_filters)
        self.calibration = CalibrationCache(keep=2 * queue_size + 2)

    def add(self, role: str, msg: Any) -> None:
        if role == LEFT or role == RIGHT:
            self.images.add(0 if role == LEFT else 1, msg)
        elif role == LEFT_INFO or role == RIGHT_INFO:
            self.calibration.add(0 if role == LEFT_INFO else 1, msg)
        else:
            raise ValueError(f"unknown input role {role!r}; one of {', '.join(ROLES)}")
