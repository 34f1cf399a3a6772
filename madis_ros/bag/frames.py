"""The stereo frames of a bag, synchronised by the node's own synchroniser (``madis_ros.frame_sync``:
both images and both camera_infos).

    frames, stats = iter_stereo_frames(bag, topics, approximate=False, slop=0.01, queue_size=5)
    for f in frames: f.left, f.right, f.left_info, f.right_info, f.gt, f.stamp_ns, f.log_ns

Messages are fed in log-time order, as ``ros2 bag play`` would deliver them to the node,
so a bag is paired offline exactly as the node pairs it live. Ground truth is not part of
the synchronisation: a frame waits up to ``window_s`` of bag time for the ground truth with
its left stamp (writers often log it after the images), then goes out without it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Tuple

from madis_ros.bag.files import BagError, BagReader, deserialize
from madis_ros.bag.topics import StereoTopics
from madis_ros.frame_sync import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO, FrameSync, StereoInput
from madis_ros.msgkit import stamp_ns


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
    dropped_left: int = 0  # images that ended in no frame (never synchronised, or duplicated stamps)
    dropped_right: int = 0
    dropped_left_info: int = 0
    dropped_right_info: int = 0
    resets: int = 0  # stamps that went back (a recording that starts over)


class _FrameQueue:
    """Pairs from the synchroniser waiting for their ground truth (bounded by bag time)."""

    def __init__(self, want_gt: bool, window_ns: int):
        self.want_gt, self.window_ns = want_gt, window_ns
        self.pending: List[Tuple[int, StereoInput]] = []  # (log_ns, frame) in synchronisation order
        self.gt: "OrderedDict[int, Any]" = OrderedDict()
        self.now = 0

    def on_frame(self, frame: StereoInput) -> None:
        self.pending.append((self.now, frame))

    def add_gt(self, msg: Any) -> None:
        self.gt[stamp_ns(msg)] = msg
        while len(self.gt) > 64 and (not self.pending or next(iter(self.gt)) < stamp_ns(self.pending[0][1].left)):
            self.gt.popitem(last=False)

    def release(self, final: bool) -> List[StereoFrame]:
        out: List[StereoFrame] = []
        while self.pending:
            log, f = self.pending[0]
            stamp = stamp_ns(f.left)
            ready = not self.want_gt or stamp in self.gt
            if not (ready or final or self.now - log > self.window_ns):
                break  # frames leave in order
            self.pending.pop(0)
            out.append(StereoFrame(stamp, log, f.left, f.right, f.left_info, f.right_info, self.gt.get(stamp)))
        return out


def iter_stereo_frames(bag: BagReader, topics: StereoTopics, approximate: bool = False, slop: float = 0.01,
                       queue_size: int = 5, window_s: float = 1.0,
                       on_message: Optional[Callable[[Any, int, bytes], None]] = None,
                       on_event: Optional[Callable[[str, str, str], None]] = None,
                       ) -> Tuple[Iterator[StereoFrame], PairingStats]:
    """Frames of a bag in pairing order; the returned stats fill in as the iterator runs.

    ``approximate``/``slop``/``queue_size``: the node's sync parameters. ``on_message(connection,
    log_ns, raw)`` sees every message of every topic first (eval copies the bag in the same pass);
    ``on_event`` hears about duplicated and backward stamps (``FrameSync``)."""
    roles = {topics.left: LEFT, topics.right: RIGHT, topics.left_info: LEFT_INFO, topics.right_info: RIGHT_INFO}
    if topics.gt:
        roles[topics.gt] = "gt"
    stats = PairingStats()
    queue = _FrameQueue(bool(topics.gt), int(round(window_s * 1e9)))
    sync = FrameSync(queue.on_frame, approximate=approximate, slop=slop, queue_size=queue_size,
                     use_message_filters=False, on_event=on_event)

    def count() -> None:
        stats.left_in, stats.right_in, stats.pairs = sync.received(LEFT), sync.received(RIGHT), sync.sync.matched
        stats.dropped_left, stats.dropped_right = sync.dropped(LEFT), sync.dropped(RIGHT)
        stats.dropped_left_info, stats.dropped_right_info = sync.dropped(LEFT_INFO), sync.dropped(RIGHT_INFO)
        stats.resets = sync.resets

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
            queue.now = log_ns
            if role == "gt":
                queue.add_gt(msg)
            else:
                sync.add(role, msg)
            count()
            yield from queue.release(final=False)
        yield from queue.release(final=True)
        sync.reset()  # what is still queued at the end was never synchronised: dropped
        count()

    return gen(), stats
