"""Stereo frames from four input streams, shared by the node and ``madis-bag eval`` so that a bag is
paired offline exactly as the node pairs it live (no ROS imports; messages are duck-typed).

    sync = FrameSync(on_frame, approximate=False, slop=0.01, queue_size=5, on_event=log)
    sync.add(LEFT, image); sync.add(RIGHT, image); sync.add(LEFT_INFO, info); sync.add(RIGHT_INFO, info)
    # on_frame(StereoInput(left, right, left_info, right_info)) for each synchronised frame

All four inputs go through one ``madis_ros.sync.StereoSynchronizer`` (as stereo_image_proc
does): exact stamps, or all four within ``slop`` seconds. A frame is therefore never
processed with another frame's calibration; images whose camera_info never comes are
dropped by the synchroniser and counted per input (``dropped(role)``).

Stamps per input must increase. A stamp equal to the previous one on that input (a
duplicated message) is dropped and counted; a stamp earlier than the previous one (a bag
that loops, a restarted driver) resets the synchroniser so the new stream pairs from its
start. ``on_event(kind, role, text)`` hears about both ("duplicate_stamp", "stamp_backwards").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from madis_ros.msgkit import stamp_ns
from madis_ros.sync import StereoSynchronizer

LEFT, RIGHT, LEFT_INFO, RIGHT_INFO = "left", "right", "left_info", "right_info"
ROLES = (LEFT, RIGHT, LEFT_INFO, RIGHT_INFO)


@dataclass
class StereoInput:
    left: Any
    right: Any
    left_info: Any
    right_info: Any


class FrameSync:
    def __init__(self, on_frame: Callable[[StereoInput], None], approximate: bool = False, slop: float = 0.01,
                 queue_size: int = 5, use_message_filters: Optional[bool] = None,
                 on_event: Optional[Callable[[str, str, str], None]] = None):
        """``on_frame(StereoInput)`` gets each synchronised frame; ``approximate``/``slop`` (s)/
        ``queue_size`` are the node's sync parameters; ``use_message_filters`` None: when importable;
        ``on_event(kind, role, text)`` hears about duplicated and backward stamps."""
        self._on_frame = on_frame
        self._on_event = on_event or (lambda kind, role, text: None)
        self.sync = StereoSynchronizer(self._matched, n_inputs=4, approximate=approximate, slop=slop,
                                       queue_size=queue_size, use_message_filters=use_message_filters)
        self._last: list = [None] * 4
        self.duplicates = {r: 0 for r in ROLES}
        self.resets = 0

    def _matched(self, left: Any, right: Any, left_info: Any, right_info: Any) -> None:
        self._on_frame(StereoInput(left, right, left_info, right_info))

    def add(self, role: str, msg: Any) -> None:
        try:
            i = ROLES.index(role)
        except ValueError:
            raise ValueError(f"unknown input role {role!r}; one of {', '.join(ROLES)}") from None
        t, last = stamp_ns(msg), self._last[i]
        if last is not None and t == last:
            self.duplicates[role] += 1
            self._on_event("duplicate_stamp", role, f"{role} message with the same stamp as the previous one "
                                                    f"({t} ns) dropped (published twice?)")
            return
        if last is not None and t < last:
            self.resets += 1
            self._on_event("stamp_backwards", role, f"{role} stamps went back by {(last - t) / 1e9:.3f} s (a bag that "
                                                    "loops, or a restarted driver): synchroniser reset")
            self.reset()
        self._last[i] = t
        self.sync.add(i, msg)

    def reset(self) -> None:
        """Start over: the queued messages are dropped (counted) and stamps may start anywhere."""
        self.sync.reset()
        self._last = [None] * 4

    def received(self, role: str) -> int:
        return self.sync.received[ROLES.index(role)] + self.duplicates[role]

    def dropped(self, role: str) -> int:
        """Messages of ``role`` that ended in no frame: never paired, or duplicated stamps."""
        return self.sync.dropped(ROLES.index(role)) + self.duplicates[role]

    def nearest_offset_ms(self, a: str, b: str) -> Optional[float]:
        """Smallest recent stamp difference between two inputs (what the warnings cite)."""
        return self.sync.nearest_offset_ms(ROLES.index(a), ROLES.index(b))
