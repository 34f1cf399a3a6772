"""The node's runtime policy as plain Python: newest-pair mailbox and worker, frame statistics,
rate-limited warnings, and the shared synchroniser + calibration cache (no ROS, no DDS)."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from madis_ros.frame_sync import LEFT, LEFT_INFO, RIGHT, RIGHT_INFO, CalibrationCache, FrameSync
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


def test_calibration_cache_same_stamp_else_latest_and_waits_for_a_first_one():
    cache = CalibrationCache(keep=2)
    left, right = msg(100), msg(100)
    assert cache.infos_for(left, right) == (None, None)
    threading.Timer(0.1, lambda: (cache.add(0, msg(100, "L100")), cache.add(1, msg(90, "R90")))).start()
    li, ri = cache.infos_for(left, right, wait_s=5)
    assert (li.tag, ri.tag) == ("L100", "R90")  # same stamp on the left, the latest on the right
    for s in (200, 300, 400):
        cache.add(0, msg(s, f"L{s}"))
    assert cache.infos_for(msg(100), msg(100))[0].tag == "L400"  # 100 evicted (keep=2): the latest
    assert cache.infos_for(msg(300), msg(300))[0].tag == "L300"
    cache.close()
    t0 = time.monotonic()
    CalibrationCache().infos_for(left, right, wait_s=0)
    assert time.monotonic() - t0 < 0.5


def test_frame_sync_pairs_images_and_keeps_calibration_apart():
    pairs = []
    fs = FrameSync(lambda l, r: pairs.append((l.tag, r.tag)), approximate=True, slop=0.01, queue_size=5,
                   use_message_filters=False)
    fs.add(LEFT_INFO, msg(1_000_000_000, "li"))
    fs.add(RIGHT_INFO, msg(1_000_000_000, "ri"))
    fs.add(LEFT, msg(1_000_000_000, "l1"))
    fs.add(RIGHT, msg(1_004_000_000, "r1"))  # 4 ms later: within slop
    fs.add(LEFT, msg(2_000_000_000, "l2"))
    fs.add(RIGHT, msg(2_050_000_000, "r2"))  # 50 ms: not a pair
    assert pairs == [("l1", "r1")]
    assert fs.images.dropped(0) == 0 and fs.images.queued(0) == 1
    with pytest.raises(ValueError, match="unknown input role"):
        fs.add("middle", msg(1))
