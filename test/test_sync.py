"""The synchroniser pairs and drops exactly as message_filters does (exact, approximate, queue bound)."""
import pytest
from sensor_msgs.msg import Image

from madis_ros.sync import (ApproximateTimeSynchronizer, ExactTimeSynchronizer, StereoSynchronizer, _message_filters,
                            stamp_ns)

MS = 1_000_000


def img(t_ms, tag=""):
    m = Image()
    ns = int(round(t_ms * MS))
    m.header.stamp.sec, m.header.stamp.nanosec = ns // 1_000_000_000, ns % 1_000_000_000
    m.header.frame_id = tag
    return m


def ms(m):
    return stamp_ns(m) / MS


class Recorder:
    def __init__(self):
        self.pairs = []

    def __call__(self, *msgs):
        self.pairs.append(tuple((m.header.frame_id, ms(m)) for m in msgs))


def test_exact_pairs_identical_stamps_in_input_order():
    rec = Recorder()
    s = ExactTimeSynchronizer(2, queue_size=5, callback=rec)
    s.add(1, img(100, "R"))   # right first
    s.add(0, img(100, "L"))
    s.add(0, img(200, "L"))
    s.add(1, img(200.001, "R"))  # 1 us off: no pair in exact mode
    assert rec.pairs == [(("L", 100.0), ("R", 100.0))]
    s.add(1, img(200, "R"))
    assert rec.pairs[-1] == (("L", 200.0), ("R", 200.0))


def test_exact_keeps_older_unmatched_until_the_queue_bound_evicts_them():
    rec = Recorder()
    s = ExactTimeSynchronizer(2, queue_size=3, callback=rec)
    for t in (10, 20, 30):
        s.add(0, img(t))
    s.add(1, img(30))
    assert [p[0][1] for p in rec.pairs] == [30.0]
    assert sorted(s.queues[0]) == [10 * MS, 20 * MS]  # older ones stay, as in message_filters
    s.add(1, img(10))  # still matchable
    assert [p[0][1] for p in rec.pairs] == [30.0, 10.0]
    for t in (40, 50, 60):  # bound 3: 20 is evicted when the fourth arrives
        s.add(0, img(t))
    assert sorted(s.queues[0]) == [40 * MS, 50 * MS, 60 * MS]
    assert s.evicted == [1, 0]
    s.add(1, img(20))
    assert len(rec.pairs) == 2  # 20 was dropped


def test_approximate_pairs_within_slop_and_not_beyond():
    rec = Recorder()
    s = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.010, callback=rec)
    for k in range(5):
        s.add(0, img(100 * k, "L"))
        s.add(1, img(100 * k + 5, "R"))  # 5 ms apart
    assert rec.pairs == [(("L", 100.0 * k), ("R", 100.0 * k + 5)) for k in range(5)]
    rec2 = Recorder()
    s2 = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.003, callback=rec2)
    for k in range(5):
        s2.add(0, img(100 * k))
        s2.add(1, img(100 * k + 5))
    assert rec2.pairs == []


def test_approximate_picks_the_closest_candidate_and_removes_only_the_pair():
    rec = Recorder()
    s = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.010, callback=rec)
    s.add(1, img(104, "far"))
    s.add(1, img(101, "near"))
    s.add(0, img(100, "L"))
    assert rec.pairs == [(("L", 100.0), ("near", 101.0))]
    assert list(s.queues[1]) == [104 * MS]  # the other candidate stays queued
    assert s.queues[0] == {}


def test_approximate_spread_must_be_strictly_below_slop():
    rec = Recorder()
    s = ApproximateTimeSynchronizer(2, queue_size=5, slop=0.010, callback=rec)
    s.add(0, img(100))
    s.add(1, img(110))  # exactly slop apart: within the candidate filter but not < slop
    assert rec.pairs == []
    s.add(1, img(109.5))
    assert len(rec.pairs) == 1


def test_approximate_three_inputs_fire_once_with_a_consistent_set():
    rec = Recorder()
    s = ApproximateTimeSynchronizer(3, queue_size=5, slop=0.010, callback=rec)
    s.add(0, img(100, "a"))
    s.add(1, img(96, "b"))
    s.add(2, img(104, "c1"))  # spread 8 ms < 10: fires
    assert rec.pairs == [(("a", 100.0), ("b", 96.0), ("c1", 104.0))]
    s.add(0, img(200, "a"))
    s.add(1, img(194, "b"))
    s.add(2, img(205, "c"))  # 205-194 = 11 ms spread: no set, although each is within slop of the new one
    assert len(rec.pairs) == 1


def test_queue_bound_drops_are_counted_by_the_front_end():
    got = []
    s = StereoSynchronizer(lambda l, r: got.append((ms(l), ms(r))), approximate=False, queue_size=2,
                           use_message_filters=False)
    for t in range(10):  # left runs ahead, right never matches: 10 - 2 queued = 8 dropped
        s.add(0, img(t))
    assert s.received == [10, 0] and s.matched == 0
    assert s.queued(0) == 2 and s.dropped(0) == 8
    s.add(1, img(9))
    assert got == [(9.0, 9.0)]
    assert s.dropped(0) == 8 and s.dropped(1) == 0 and s.queued(0) == 1


def test_front_end_reports_the_offset_of_unsynchronised_cameras():
    s = StereoSynchronizer(lambda *m: None, approximate=False, queue_size=5, use_message_filters=False)
    assert s.nearest_offset_ms(0, 1) is None
    for k in range(20):
        s.add(0, img(33.3 * k))
        s.add(1, img(33.3 * k + 5))
    assert s.matched == 0
    assert s.nearest_offset_ms(0, 1) == pytest.approx(5.0, abs=0.01)
    assert s.dropped(0) == 15 and s.dropped(1) == 15
    s.reset()  # a stream that starts over: the queued ones count as dropped
    assert s.dropped(0) == 20 and s.queued(0) == 0 and s.nearest_offset_ms(0, 1) is None


def test_front_end_approximate_pairs_5ms_offsets():
    got = []
    s = StereoSynchronizer(lambda l, r: got.append(ms(r) - ms(l)), approximate=True, slop=0.01, queue_size=5,
                           use_message_filters=False)
    for k in range(20):
        s.add(0, img(33.3 * k))
        s.add(1, img(33.3 * k + 5))
    assert len(got) == 20 and all(abs(d - 5) < 1e-3 for d in got)
    assert s.dropped(0) == 0 and s.dropped(1) == 0


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="queue_size"):
        ExactTimeSynchronizer(2, queue_size=0, callback=print)
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimeSynchronizer(2, queue_size=3, slop=-1, callback=print)


@pytest.mark.skipif(_message_filters() is None, reason="message_filters is not importable here (it is on ROS installs)")
@pytest.mark.parametrize("approximate", [False, True])
def test_same_pairs_as_message_filters(approximate):  # pragma: no cover - needs a ROS install
    seq = [(i % 2, img(t)) for i, t in enumerate([0, 4, 30, 36, 61, 66, 100, 100, 130, 131, 150, 170, 171])]
    results = []
    for use_mf in (True, False):
        got = []
        s = StereoSynchronizer(lambda l, r: got.append((ms(l), ms(r))), approximate=approximate, slop=0.006,
                               queue_size=3, use_message_filters=use_mf)
        for i, m in seq:
            s.add(i, m)
        results.append((got, s.dropped(0), s.dropped(1)))
    assert results[0] == results[1]
