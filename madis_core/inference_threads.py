"""The thread count of one estimator's ``predict`` calls: fixed, or adapted to the load.

``StereoEstimator`` wraps each backend call in ``InferenceThreads.run(shape)``: it sets
the thread count of the library that does the work (torch for learned models, OpenCV
for SGBM; onnxruntime fixes its count when the session is made) for the calling thread,
times the call, and restores the caller's setting.

Adaptive mode (``threads="auto"`` on the CPU with more than one CPU available, the
default): every candidate count (N, N/2, ..., 1) is timed on real frames and the fastest
by recent median is used; one frame in ``explore_every`` (20, doubling up to 160 while
the current count stays the best; and one soon after a frame much slower than the
recent median, i.e. when load appears) runs on another candidate to keep its figure fresh; a candidate that looked faster is tried again on the next
frames until its recent median says so or not. Why: with two cores and another process holding one of them,
two threads wait at every barrier for the thread that shares a core, and one thread is
faster; on an idle machine two are faster. See ``benchmarks/contention.py --threads-study``
for what it measured.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections import deque
from typing import Any, Deque, Dict, Iterator, List, Optional, Tuple

from madis_core import runtime


def candidates(n: int) -> List[int]:
    """n, n/2, n/4, ..., 1 (at most 4 values)."""
    out = [max(1, n)]
    while out[-1] > 1 and len(out) < 4:
        out.append(max(1, out[-1] // 2))
    if out[-1] != 1:
        out[-1] = 1
    return out


class AdaptiveThreadCount:
    """Timing-based choice between candidate thread counts (see module doc)."""

    def __init__(self, max_threads: int, window: int = 5, explore_every: int = 20, slow_factor: float = 1.5,
                 switch_margin: float = 0.9, warmup: int = 2, min_gap: int = 3, max_backoff: int = 8):
        self.candidates = candidates(max_threads)
        self.window, self.explore_every, self.slow_factor = window, explore_every, slow_factor
        self.gap, self.max_gap = explore_every, explore_every * max_backoff
        self.switch_margin, self.warmup, self.min_gap = switch_margin, warmup, min_gap
        self.samples: Dict[int, Deque[Tuple[int, float]]] = {n: deque(maxlen=window) for n in self.candidates}
        self.current = self.candidates[0]
        self.pending: Optional[int] = None
        self.frames = 0
        self.last_explore = 0
        self.switches = 0
        self.key: Any = None

    def reset(self, key: Any) -> None:
        """New input size: timings of the old one say nothing about it."""
        self.key = key
        for d in self.samples.values():
            d.clear()
        self.frames = self.last_explore = 0
        self.pending = None
        self.gap = self.explore_every

    def choose(self, key: Any = None) -> int:
        if key != self.key:
            self.reset(key)
        return self.pending if self.pending is not None else self.current

    def _median(self, n: int) -> Optional[float]:
        horizon = self.frames - 3 * self.gap  # older figures say little about the load now
        vals = [ms for f, ms in self.samples[n] if f > horizon]
        return statistics.median(vals) if vals else None

    def _explore(self) -> None:
        """Next frame runs on the candidate (not the current one) with the stalest figure."""
        others = [n for n in self.candidates if n != self.current]
        if not others or self.frames - self.last_explore < self.min_gap:
            return
        self.pending = min(others, key=lambda n: self.samples[n][-1][0] if self.samples[n] else -1)
        self.last_explore = self.frames

    def record(self, n: int, ms: float) -> None:
        self.frames += 1
        if self.pending == n:
            self.pending = None
        if self.frames <= self.warmup:  # the first calls include lazy initialisation
            return
        self.samples[n].append((self.frames, ms))
        cur = self._median(self.current)
        best, best_ms = self.current, cur
        for c in self.candidates:
            m = self._median(c)
            if m is not None and (best_ms is None or m < best_ms * self.switch_margin):
                best, best_ms = c, m
        if best != self.current and cur is not None:
            self.current = best
            self.switches += 1
            self.gap = self.explore_every
            return
        untried = [c for c in self.candidates if not self.samples[c]]
        if untried and self.frames - self.warmup >= 2:
            self.pending = untried[0]
        elif n != self.current and cur is not None and ms < self.switch_margin * cur:
            self.pending = n  # looked faster: confirm on the next frames (its older figures may predate the change)
        elif n != self.current:  # the current count is still the best: look again less often
            self.gap = min(2 * self.gap, self.max_gap)
        elif cur is not None and len(self.samples[n]) >= 3 and ms > self.slow_factor * cur:
            self.gap = self.explore_every  # a frame much slower than usual: the load may have changed
            self._explore()
        elif self.frames - self.last_explore >= self.gap:
            self._explore()

    def summary(self) -> Dict[str, Any]:
        return {"current": self.current, "switches": self.switches,
                "median_ms": {n: self._median(n) for n in self.candidates}}


def _torch():
    return sys.modules.get("torch")  # never import torch just for this (SGBM needs none)


class InferenceThreads:
    """Thread count around one estimator's predict calls (see module doc).

    ``requested``: None/"auto"/0 (see ``runtime.resolve_threads``; adaptive when more than
    one CPU is available, the device is the CPU and OpenMP waits passively) or a count.
    ``kind``: "torch", "opencv" or "none" (the backend fixed its own count)."""

    def __init__(self, requested: Any = None, kind: str = "torch", device: str = "cpu", adaptive: bool = True):
        self.requested = runtime.parse_threads(requested)
        self.threads = runtime.resolve_threads(self.requested)
        self.kind = kind
        auto = not self.requested and not runtime.user_threads()
        self.controller: Optional[AdaptiveThreadCount] = None
        if adaptive and auto and kind != "none" and str(device) == "cpu" and self.threads > 1:
            self.controller = AdaptiveThreadCount(self.threads)
        self.last = self.threads

    @classmethod
    def for_backend(cls, backend: Any, requested: Any = None) -> "InferenceThreads":
        """``backend.thread_library`` (the ``StereoBackend`` contract) says which count to set."""
        return cls(requested, backend.thread_library, backend.device)

    @property
    def mode(self) -> str:
        return f"adaptive 1..{self.threads}" if self.controller else f"{self.threads}"

    def _get(self) -> Optional[int]:
        if self.kind == "torch":
            t = _torch()
            return t.get_num_threads() if t is not None else None
        if self.kind == "opencv":
            import cv2
            return cv2.getNumThreads()
        return None

    def _set(self, n: int) -> None:
        if self.kind == "torch":
            t = _torch()
            if t is not None:
                t.set_num_threads(n)
        elif self.kind == "opencv":
            import cv2
            cv2.setNumThreads(n)

    @contextlib.contextmanager
    def run(self, key: Any = None) -> Iterator[int]:
        """Set the count for the calling thread, time the call, restore the caller's count."""
        n = self.controller.choose(key) if self.controller else self.threads
        prev = self._get()
        if prev is not None and prev != n:
            self._set(n)
        t0 = time.perf_counter()
        ok = False
        try:
            yield n
            ok = True
        finally:
            if ok and self.controller:
                self.controller.record(n, (time.perf_counter() - t0) * 1e3)
            if prev is not None and prev != n:
                self._set(prev)
            self.last = n
