"""The node's runtime policy as plain Python (no ROS imports, unit-tested in test_worker.py).

``NewestPairWorker``: a one-slot mailbox and one worker thread. ``submit`` puts a pair in
the slot; a pair still waiting there when a newer one arrives is dropped and counted
("superseded"), so latency stays at about one processing time whatever the input rate and
no queue can grow. Every submitted pair ends in exactly one of: processed, or one drop
reason (the handler's answer, or ``error_reason`` when it raised).

``FrameStats``: per-frame timings of the last frames and the rates between two reads.
``RateLimitedLogger``: one message per key per period, with the number suppressed.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any, Callable, Deque, Dict, Iterable, Optional, Tuple

import numpy as np


class NewestPairWorker:
    def __init__(self, handler: Callable[[Any], Optional[str]], reasons: Iterable[str],
                 on_error: Callable[[BaseException], None], error_reason: str = "inference_error",
                 name: str = "madis_stereo_worker"):
        """``handler(item)`` returns None when the item was processed, else a drop reason;
        ``reasons`` are reported even at zero; ``on_error(exc)`` hears about a handler that
        raised (a bug), which is counted as ``error_reason``."""
        self._handler, self._on_error, self._error_reason = handler, on_error, error_reason
        self._cond = threading.Condition()
        self._slot: Optional[Any] = None
        self._busy = False
        self._stop = False
        self.submitted = 0
        self.processed = 0
        self.drops: Counter = Counter({r: 0 for r in reasons})
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> None:
        with self._cond:
            self.submitted += 1
            if self._slot is not None:
                self.drops["superseded"] += 1
            self._slot = item
            self._cond.notify()

    def counts(self) -> Dict[str, Any]:
        """A consistent snapshot: submitted, processed, pending, in_progress, drops."""
        with self._cond:
            return {"submitted": self.submitted, "processed": self.processed, "pending": int(self._slot is not None),
                    "in_progress": int(self._busy), "drops": dict(self.drops)}

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the item in progress, drop a waiting one, end the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait(timeout=0.5)
                if self._stop:
                    return
                item, self._slot = self._slot, None
                self._busy = True
            try:
                reason = self._handler(item)
            except Exception as e:  # a bug must not kill the worker silently
                reason = self._error_reason
                self._on_error(e)
            with self._cond:
                self._busy = False
                if reason is None:
                    self.processed += 1
                else:
                    self.drops[reason] += 1


def _pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


class FrameStats:
    """Timings of the last ``keep`` frames: (t_done, inference, latency, stamp age, overhead, publish) ms."""

    FIELDS = ("inference", "latency", "stamp_age", "overhead", "publish")

    def __init__(self, keep: int = 512):
        """``keep``: how many of the latest frames are remembered."""
        self._frames: Deque[Tuple[float, ...]] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, t_done: float, inference: float, latency: float, stamp_age: float, overhead: float,
            publish: float) -> None:
        with self._lock:
            self._frames.append((t_done, inference, latency, stamp_age, overhead, publish))

    def rows(self) -> list:
        with self._lock:
            return list(self._frames)

    def summary(self, since: float) -> Dict[str, float]:
        """Mean and p95 of every field over the frames done after ``since`` (monotonic s)."""
        rows = [r for r in self.rows() if r[0] >= since]
        out: Dict[str, float] = {}
        for i, name in enumerate(self.FIELDS, start=1):
            vals = [r[i] for r in rows]
            out[f"{name}_ms_mean"], out[f"{name}_ms_p95"] = _mean(vals), _pct(vals, 95)
        return out


class RateLimitedLogger:
    """One message per key per period, with the number suppressed in between."""

    def __init__(self, logger: Any, period_s: float):
        self._logger, self._period = logger, float(period_s)  # logger: anything with warning/error/info
        self._last: Dict[str, float] = {}
        self._suppressed: Counter = Counter()
        self._lock = threading.Lock()

    def warn(self, key: str, text: str, level: str = "warning") -> bool:
        """Log ``text`` unless ``key`` was logged less than a period ago; True when logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._suppressed[key] += 1
                return False
            n = self._suppressed.pop(key, 0)
            self._last[key] = now
        text += f" ({n} more like this in the last {self._period:g} s)" if n else ""
        # rclpy remembers the severity per call site and refuses a change: one call per level
        if level == "error":
            self._logger.error(text)
        elif level == "info":
            self._logger.info(text)
        else:
            self._logger.warning(text)
        return True
