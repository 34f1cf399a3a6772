"""The stereo frames of a bag, paired by the node's own synchroniser (``madis_ros.frame_sync``).

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
from madis_ros.frame_sync import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO, FrameSync
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
    dropped_left: int = 0  # images the synchroniser could not pair
    dropped_right: int = 0


class _FrameQueue:
    """Pairs from the synchroniser waiting for their ground truth (bounded by bag time)."""

    def __init__(self, sync: FrameSync, want_gt: bool, window_ns: int):
        self.sync, self.want_gt, self.window_ns = sync, want_gt, window_ns
        self.pending: List[Tuple[int, Any, Any]] = []  # (log_ns, left, right) in pairing order
        self.gt: "OrderedDict[int, Any]" = OrderedDict()
        self.now = 0

    def on_pair(self, left: Any, right: Any) -> None:
        self.pending.append((self.now, left, right))

    def add_gt(self, msg: Any) -> None:
        self.gt[stamp_ns(msg)] = msg
        while len(self.gt) > 64 and (not self.pending or next(iter(self.gt)) < stamp_ns(self.pending[0][1])):
            self.gt.popitem(last=False)

    def release(self, final: bool) -> List[StereoFrame]:
        out: List[StereoFrame] = []
        while self.pending:
            log, left, right = self.pending[0]
            stamp = stamp_ns(left)
            ready = not self.want_gt or stamp in self.gt
            if not (ready or final or self.now - log > self.window_ns):
                break  # frames leave in order
            self.pending.pop(0)
            li, ri = self.sync.calibration.infos_for(left, right)
            out.append(StereoFrame(stamp, log, left, right, li, ri, self.gt.get(stamp)))
        return out


def iter_stereo_frames(bag: BagReader, topics: StereoTopics, approximate: bool = False, slop: float = 0.01,
                       queue_size: int = 5, window_s: float = 1.0,
                       on_message: Optional[Callable[[Any, int, bytes], None]] = None,
                       ) -> Tuple[Iterator[StereoFrame], PairingStats]:
    """Frames of a bag in pairing order; the returned stats fill in as the iterator runs.

    ``approximate``/``slop``/``queue_size``: the node's sync parameters. ``on_message(connection,
    log_ns, raw)`` sees every message of every topic first (eval copies the bag in the same pass)."""
    roles = {topics.left: LEFT, topics.right: RIGHT, topics.left_info: LEFT_INFO, topics.right_info: RIGHT_INFO}
    if topics.gt:
        roles[topics.gt] = "gt"
    stats = PairingStats()
    queue: _FrameQueue
    sync = FrameSync(lambda left, right: queue.on_pair(left, right), approximate=approximate, slop=slop,
                     queue_size=queue_size, use_message_filters=False)
    queue = _FrameQueue(sync, bool(topics.gt), int(round(window_s * 1e9)))

    def count() -> None:
        im = sync.images
        stats.left_in, stats.right_in, stats.pairs = im.received[0], im.received[1], im.matched
        stats.dropped_left, stats.dropped_right = im.dropped(0), im.dropped(1)

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
        count()  # images still queued at the end were never paired: dropped
        stats.dropped_left += sync.images.queued(0)
        stats.dropped_right += sync.images.queued(1)

    return gen(), stats
