"""Exact and approximate time synchronisation of N inputs, with drop accounting (no ROS imports).

Public API (stable):
    StereoSynchronizer(callback, n_inputs=2, approximate=False, slop=0.05, queue_size=10,
                       use_message_filters=None)
        .add(index, msg)         feed one message of input ``index`` (header.stamp is used)
        .received[i], .matched   counts; .dropped(i): messages of input i that left the
                                 queue without being matched (evicted by the queue bound)
        .queued(i)               messages waiting now
        .nearest_offset_ms(i, j) smallest |stamp difference| between recent stamps of inputs i
                                 and j (for the "sync drops everything" warnings), or None
        .reset()                 empty the queues (a stream that starts over: a bag loop)
        .backend                 "message_filters" or "madis"
    ExactTimeSynchronizer, ApproximateTimeSynchronizer: the project's own implementations.

Semantics (identical to message_filters' Python TimeSynchronizer /
ApproximateTimeSynchronizer, which are used when importable):
- every input has a queue keyed by stamp, bounded by ``queue_size``; when it overflows
  the oldest stamp is evicted (a drop);
- exact: whenever a stamp is present in all queues, the callback fires with those
  messages in input order and they are removed (older unmatched ones stay until evicted);
- approximate: on each arrival, candidates from the other queues within ``slop`` of the
  new stamp are sorted by distance to it; the first combination (in that order) whose
  spread max - min is < slop and whose messages are all still queued fires once, and
  those messages are removed.
Why own code: message_filters is not on PyPI; the node must behave the same with and
without a ROS install, and it must count what it drops.
"""
from __future__ import annotations

import itertools
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from madis_ros.msgkit import stamp_ns


class _QueuedSynchronizer:
    def __init__(self, n_inputs: int, queue_size: int, callback: Callable[..., None]):
        if n_inputs < 1:
            raise ValueError("n_inputs must be >= 1")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = int(queue_size)
        self.callback = callback
        self.queues: List[Dict[int, Any]] = [{} for _ in range(n_inputs)]
        self.evicted = [0] * n_inputs
        self.lock = threading.Lock()

    def _insert(self, index: int, msg: Any) -> int:
        q = self.queues[index]
        t = stamp_ns(msg)
        if t in q:  # same stamp again on one input: the newer message replaces it (one drop)
            self.evicted[index] += 1
        q[t] = msg
        while len(q) > self.queue_size:
            del q[min(q)]
            self.evicted[index] += 1
        return t


class ExactTimeSynchronizer(_QueuedSynchronizer):
    def add(self, index: int, msg: Any) -> None:
        fired = []
        with self.lock:
            self._insert(index, msg)
            common = set(self.queues[0]).intersection(*self.queues[1:])
            for t in sorted(common):
                fired.append([q.pop(t) for q in self.queues])
        for msgs in fired:  # outside the lock: the callback may be slow or re-enter
            self.callback(*msgs)


class ApproximateTimeSynchronizer(_QueuedSynchronizer):
    def __init__(self, n_inputs: int, queue_size: int, slop: float, callback: Callable[..., None]):
        super().__init__(n_inputs, queue_size, callback)
        if not slop >= 0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop}")
        self.slop_ns = int(round(slop * 1e9))

    def add(self, index: int, msg: Any) -> None:
        msgs = None
        with self.lock:
            t = self._insert(index, msg)
            candidates = []
            for j, q in enumerate(self.queues):
                if j == index:
                    continue
                near = sorted(((s, abs(s - t)) for s in q if abs(s - t) <= self.slop_ns), key=lambda x: x[1])
                if not near:
                    return
                candidates.append([s for s, _ in near])
            for combo in itertools.product(*candidates):
                stamps = list(combo)
                stamps.insert(index, t)
                if max(stamps) - min(stamps) < self.slop_ns and all(s in q for q, s in zip(self.queues, stamps)):
                    msgs = [q.pop(s) for q, s in zip(self.queues, stamps)]
                    break
        if msgs is not None:
            self.callback(*msgs)


def _message_filters():
    try:
        import message_filters  # type: ignore
        return message_filters
    except Exception:
        return None


class StereoSynchronizer:
    """Counting front end over message_filters' synchronisers or the project's own (see module doc)."""

    def __init__(self, callback: Callable[..., None], n_inputs: int = 2, approximate: bool = False,
                 slop: float = 0.05, queue_size: int = 10, use_message_filters: Optional[bool] = None):
        self._user_callback = callback
        self.n_inputs = n_inputs
        self.approximate = bool(approximate)
        self.slop = float(slop)
        self.queue_size = int(queue_size)
        self.received = [0] * n_inputs
        self.matched = 0
        self._recent: List[Deque[int]] = [deque(maxlen=max(4, 2 * queue_size)) for _ in range(n_inputs)]
        self._lock = threading.Lock()
        self._use_message_filters = use_message_filters
        self.reset()

    def reset(self) -> None:
        """Fresh synchroniser queues: what was queued counts as dropped, the counters stay."""
        use_message_filters, n_inputs = self._use_message_filters, self.n_inputs
        with self._lock:
            for d in self._recent:
                d.clear()
        mf = _message_filters() if use_message_filters in (None, True) else None
        if use_message_filters is True and mf is None:
            raise ImportError("message_filters is not importable")
        if mf is not None:
            self._inputs = [mf.SimpleFilter() for _ in range(n_inputs)]
            if self.approximate:
                self._sync = mf.ApproximateTimeSynchronizer(self._inputs, self.queue_size, self.slop)
            else:
                self._sync = mf.TimeSynchronizer(self._inputs, self.queue_size)
            self._sync.registerCallback(self._on_match)
            self.backend = "message_filters"
        else:
            self._inputs = None
            if self.approximate:
                self._sync = ApproximateTimeSynchronizer(n_inputs, self.queue_size, self.slop, self._on_match)
            else:
                self._sync = ExactTimeSynchronizer(n_inputs, self.queue_size, self._on_match)
            self.backend = "madis"

    def _on_match(self, *msgs: Any) -> None:
        with self._lock:
            self.matched += 1
        self._user_callback(*msgs)

    def add(self, index: int, msg: Any) -> None:
        t = stamp_ns(msg)
        with self._lock:
            self.received[index] += 1
            self._recent[index].append(t)
        if self._inputs is not None:
            self._inputs[index].signalMessage(msg)
        else:
            self._sync.add(index, msg)

    def queued(self, index: int) -> int:
        return len(self._sync.queues[index])

    def dropped(self, index: int) -> int:
        """Messages of input ``index`` that left the queue unmatched (received - matched - queued),
        those a ``reset`` discarded included."""
        with self._lock:
            return self.received[index] - self.matched - self.queued(index)

    def nearest_offset_ms(self, i: int, j: int) -> Optional[float]:
        with self._lock:
            a, b = list(self._recent[i]), list(self._recent[j])
        if not a or not b:
            return None
        return min(abs(x - y) for x in a for y in b) / 1e6
