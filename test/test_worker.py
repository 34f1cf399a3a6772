"""The node's runtime policy as plain Python: newest-pair mailbox and worker, frame statistics,
rate-limited warnings, and the four-input synchroniser shared with madis-bag eval (no ROS, no DDS)."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from madis_ros.frame_sync import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO, FrameSync
from madis_ros.worker import FrameStats, NewestPairWorker, RateLimitedLogger

REASONS = ("superseded", "bad", "inference_error")


def msg(stamp_ns: int, tag: str = ""):
    return SimpleNamespace(header=SimpleNamespace(stamp=SimpleNamespace(sec=stamp_ns // 10**9,
                                                                        nanosec=stamp_ns % 10**9)), tag=tag)


class Gate:
    """A handler that blocks on its first item until released, then records every item."""

    def __init__(self, answer=None):
        self.started, self.release = threading.Event(), threading.Event()
        self.seen, self.answer = [], answer

    def __call__(self, item):
        self.started.set()
        self.release.wait(10)
        self.seen.append(item)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer(item) if callable(self.answer) else self.answer


def wait_until(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def test_newest_pair_wins_and_every_pair_is_accounted_for():
    gate = Gate()
    w = NewestPairWorker(gate, REASONS, on_error=lambda e: None)
    try:
        w.submit(1)
        assert gate.started.wait(5)          # 1 is being processed
        for i in (2, 3, 4):                  # 2 and 3 are superseded while 1 runs; 4 waits
            w.submit(i)
        c = w.counts()
        assert (c["submitted"], c["pending"], c["in_progress"], c["drops"]["superseded"]) == (4, 1, 1, 2)
        gate.release.set()
        assert wait_until(lambda: w.counts()["processed"] == 2)
        assert gate.seen == [1, 4]
        c = w.counts()
        assert c["processed"] + sum(c["drops"].values()) == c["submitted"] and c["pending"] == c["in_progress"] == 0
        assert c["drops"] == {"superseded": 2, "bad": 0, "inference_error": 0}  # every reason reported, zero too
    finally:
        gate.release.set()
        w.stop()


def test_drop_reasons_and_a_raising_handler_keep_the_worker_alive():
    errors = []
    gate = Gate(answer=lambda item: "bad" if item == "x" else None)
    gate.release.set()
    w = NewestPairWorker(gate, REASONS, on_error=errors.append)
    try:
        w.submit("x")
        assert wait_until(lambda: w.counts()["drops"]["bad"] == 1)
        w._handler = Gate(answer=RuntimeError("boom"))  # a bug in the handler
        w._handler.release.set()
        w.submit("y")
        assert wait_until(lambda: w.counts()["drops"]["inference_error"] == 1)
        assert [str(e) for e in errors] == ["boom"]
        w._handler = gate
        w.submit("z")
        assert wait_until(lambda: w.counts()["processed"] == 1)  # still serving
    finally:
        w.stop()


def test_stop_finishes_the_item_in_progress_and_ends_the_thread():
    gate = Gate()
    w = NewestPairWorker(gate, REASONS, on_error=lambda e: None)
    w.submit(1)
    assert gate.started.wait(5)
    w.submit(2)  # waiting: dropped by stop
    threading.Timer(0.2, gate.release.set).start()
    w.stop(timeout=5)
    assert not w._thread.is_alive() and gate.seen == [1] and w.counts()["processed"] == 1


def test_frame_stats_window_and_percentiles():
    fs = FrameStats(keep=3)
    for i, t in enumerate((1.0, 2.0, 3.0, 4.0)):  # the oldest falls out (keep=3)
        fs.add(t, inference=10.0 * (i + 1), latency=100.0, stamp_age=5.0, overhead=1.0, publish=0.5)
    assert len(fs.rows()) == 3
    s = fs.summary(since=2.5)  # frames done at 3.0 and 4.0
    assert s["inference_ms_mean"] == pytest.approx(35.0) and s["inference_ms_p95"] == pytest.approx(39.5)
    assert s["latency_ms_mean"] == 100.0 and s["publish_ms_mean"] == 0.5
    empty = fs.summary(since=10.0)
    assert empty["inference_ms_mean"] != empty["inference_ms_mean"]  # NaN without frames


def test_rate_limited_logger_counts_what_it_suppressed():
    lines = []
    log = SimpleNamespace(warning=lambda t: lines.append(("w", t)), error=lambda t: lines.append(("e", t)),
                          info=lambda t: lines.append(("i", t)))
    rl = RateLimitedLogger(log, period_s=0.2)
    assert rl.warn("a", "first") and not rl.warn("a", "again") and not rl.warn("a", "again")
    assert rl.warn("b", "other key", "error")
    time.sleep(0.25)
    assert rl.warn("a", "later")
    assert lines == [("w", "first"), ("e", "other key"), ("w", "later (2 more like this in the last 0.2 s)")]


def test_frame_sync_needs_all_four_inputs_and_keeps_their_order():
    frames = []
    fs = FrameSync(lambda f: frames.append((f.left.tag, f.right.tag, f.left_info.tag, f.right_info.tag)),
                   approximate=True, slop=0.01, queue_size=5, use_message_filters=False)
    fs.add(LEFT, msg(1_000_000_000, "l1"))
    fs.add(RIGHT, msg(1_004_000_000, "r1"))  # 4 ms later: within slop
    assert frames == []                      # no calibration yet: no frame
    fs.add(LEFT_INFO, msg(1_000_000_000, "li1"))
    fs.add(RIGHT_INFO, msg(1_004_000_000, "ri1"))
    assert frames == [("l1", "r1", "li1", "ri1")]
    fs.add(LEFT, msg(2_000_000_000, "l2"))
    fs.add(LEFT_INFO, msg(2_000_000_000, "li2"))
    fs.add(RIGHT_INFO, msg(2_001_000_000, "ri2"))
    fs.add(RIGHT, msg(2_050_000_000, "r2"))  # 50 ms after the left: not a frame
    assert len(frames) == 1
    assert fs.nearest_offset_ms(LEFT, RIGHT) == pytest.approx(4.0)  # the nearest recent pair of stamps
    with pytest.raises(ValueError, match="unknown input role"):
        fs.add("middle", msg(1))


def test_frame_sync_exact_never_uses_another_frames_calibration():
    """Issue 15: a frame whose camera_info arrives after its images gets that camera_info, not
    the previous frame's (the old cache took the latest and gave t = 0.154 for 0.308)."""
    frames = []
    fs = FrameSync(lambda f: frames.append((f.left.tag, f.left_info.tag)), queue_size=5, use_message_filters=False)
    for k, tag in ((1, "old"), (2, "new")):
        t = k * 1_000_000_000
        fs.add(LEFT, msg(t, f"l{k}"))
        fs.add(RIGHT, msg(t, f"r{k}"))
        if k == 1:
            fs.add(LEFT_INFO, msg(t, tag))
            fs.add(RIGHT_INFO, msg(t, tag))
    assert frames == [("l1", "old")]       # frame 2 waits for its own calibration
    fs.add(LEFT_INFO, msg(2_000_000_000, "new"))
    fs.add(RIGHT_INFO, msg(2_000_000_000, "new"))
    assert frames == [("l1", "old"), ("l2", "new")]


def test_frame_sync_drops_duplicates_and_starts_over_when_stamps_go_back():
    events, frames = [], []
    fs = FrameSync(lambda f: frames.append(f.left.tag), queue_size=5, use_message_filters=False,
                   on_event=lambda kind, role, text: events.append((kind, role)))

    def frame(t, tag):
        for role in (LEFT, RIGHT, LEFT_INFO, RIGHT_INFO):
            fs.add(role, msg(t, tag))
    frame(10, "a")
    fs.add(LEFT, msg(10, "dup"))                 # the same stamp again on one input
    fs.add(LEFT, msg(20, "b"))                   # queued, never completed
    frame(5, "loop")                             # earlier stamps: the bag started over
    assert frames == ["a", "loop"]
    assert ("duplicate_stamp", LEFT) in events and events.count(("stamp_backwards", LEFT)) == 1
    assert fs.resets == 1 and fs.duplicates[LEFT] == 1
    assert fs.dropped(LEFT) == 2 and fs.received(LEFT) == 4  # the duplicate and the orphan "b"


