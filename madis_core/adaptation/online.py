"""Online adaptation beside live inference: a background thread, never in the way.

    online = OnlineAdapter(estimator_net, AdaptConfig(...), min_interval_s=1.0)
    online.start()
    # per frame, on the inference thread:
    online.sync_into(estimator_net)      # newest adapted weights, if any (a few tensor copies)
    result = estimator.predict(left, right)
    online.offer(left, right)            # non-blocking: replaces any pair not yet used
    # /diagnostics:
    online.stats()                       # steps, pairs offered/used, the self-supervised loss, step time
    online.save("adapted.safetensors")   # weights + card, e.g. on shutdown
    online.stop()

How it stays out of inference's way:
- ``offer`` never blocks: it stores a reference to the newest pair in a one-slot
  mailbox (an older pair not yet used is dropped and counted);
- the thread trains its *own copy* of the network and never touches the inference
  network; ``sync_into`` (called by the inference thread between frames) copies the
  adapted tensors in only when a new version exists, in place, so nothing else of
  the inference path changes;
- the rate is bounded: at most one step per ``min_interval_s`` and per
  ``every_n_pairs`` offered pairs, on a random ``crop`` of the pair;
- on Linux the thread lowers its own scheduling priority (``nice``) and runs its
  torch ops on ``threads`` intra-op threads (``limit_this_thread``: OpenMP's thread
  count is per calling thread), so the kernel serves the inference threads first.
"""
from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from madis_core.adaptation.adapter import AdaptConfig, Adapter
from madis_core.adaptation.sources import UnlabeledPair

log = logging.getLogger(__name__)


def online_config(**overrides: Any) -> AdaptConfig:
    """The offline defaults on random 256x320 crops (one step stays short), with SGBM's
    single-threaded mode for the proxy labels (its 3-way mode would start OpenCV worker
    threads beside inference) and half the learning rate (steps never stop)."""
    kw = dict(crop=(256, 320), proxy_mode="sgbm", lr=1e-4)
    kw.update(overrides)
    return AdaptConfig(**kw)


def limit_this_thread(threads: int) -> bool:
    """Run the calling thread's torch ops on ``threads`` OpenMP threads, leaving every
    other thread alone. ``torch.set_num_threads`` would not do: it also sets the
    process-wide default that any thread running its first parallel op afterwards
    adopts (e.g. an inference thread that starts after the adapter would drop to 1
    thread). OpenMP's thread count is a per-thread setting, so this sets it through
    libgomp directly, after torch's own per-thread initialisation. False (nothing
    changed) where torch does not use libgomp."""
    import ctypes
    import glob

    torch.get_num_threads()  # torch's lazy per-thread init first, or it would overwrite ours later
    libs = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*"))
    try:
        gomp = ctypes.CDLL(libs[0] if libs else "libgomp.so.1")
        gomp.omp_set_num_threads(int(threads))
        return int(gomp.omp_get_max_threads()) == int(threads)
    except (OSError, AttributeError):  # pragma: no cover - torch built with another OpenMP
        log.debug("cannot limit the adaptation thread to %d threads (no libgomp)", threads)
        return False


class OnlineAdapter:
    """Adapts a copy of a network on a background thread; see the module docstring."""

    def __init__(self, model: nn.Module,                 # the network inference runs (copied, never modified here)
                 config: Optional[AdaptConfig] = None,    # losses and learning rate (steps/time budget ignored)
                 min_interval_s: float = 1.0,             # at most one adaptation step per this many seconds
                 every_n_pairs: int = 1,                  # and per this many offered pairs
                 threads: int = 1,                        # torch intra-op threads of the adaptation thread
                 nice: int = 19,                          # niceness increment of the adaptation thread (Linux)
                 sync_every: int = 1,                     # publish adapted weights every N steps
                 loss_smoothing: float = 0.9,             # running mean of the self-supervised loss (diagnostics)
                 device: str = "cpu"):                    # where the copy trains
        if min_interval_s < 0 or every_n_pairs < 1 or threads < 1 or sync_every < 1:
            raise ValueError("min_interval_s >= 0, every_n_pairs >= 1, threads >= 1 and sync_every >= 1 required")
        self.config = config or online_config()
        self.min_interval_s = float(min_interval_s)
        self.every_n_pairs = int(every_n_pairs)
        self.threads = int(threads)
        self.nice = int(nice)
        self.sync_every = int(sync_every)
        self.loss_smoothing = float(loss_smoothing)
        self.start_name = getattr(model, "model_name", type(model).__name__)
        train_copy = copy.deepcopy(model).to(device)
        self.adapter = Adapter(train_copy, self.config, device)
        self._cond = threading.Condition()
        self._slot: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self._published: Optional[Dict[str, torch.Tensor]] = None
        self._version = 0                # bumped when new weights are published
        self._synced: Dict[int, int] = {}  # id(target model) -> version copied into it
        self.pairs_offered = 0
        self.pairs_dropped = 0           # offered pairs replaced before the thread took them
        self.pairs_used = 0
        self.steps_failed = 0
        self.loss: float = float("nan")  # running mean of the step's photometric loss
        self.last_step_ms: float = float("nan")
        self.last_error: Optional[str] = None
        self._offered_at_last_step = 0
        self._last_step_t = -float("inf")

    # --- inference side ---------------------------------------------------------------
    def offer(self, left: np.ndarray, right: np.ndarray) -> None:
        """Hand the newest pair to the adaptation thread. Never blocks on adaptation;
        the arrays are only referenced, so do not modify them afterwards."""
        with self._cond:
            self.pairs_offered += 1
            if self._slot is not None:
                self.pairs_dropped += 1
            self._slot = (left, right)
            self._cond.notify()

    def sync_into(self, target: nn.Module) -> bool:
        """Copy the newest adapted weights into ``target`` (same architecture) if it does
        not have them yet; True when it copied. Call it between frames."""
        with self._cond:
            version, state = self._version, self._published
        if state is None or self._synced.get(id(target)) == version:
            return False
        with torch.no_grad():
            own = target.state_dict()
            for k, v in state.items():
                own[k].copy_(v)
        self._synced[id(target)] = version
        return True

    def published(self) -> Tuple[int, Optional[Dict[str, torch.Tensor]]]:
        """``(version, state dict)`` of the newest published weights (``(0, None)`` before any)."""
        with self._cond:
            return self._version, self._published

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> "OnlineAdapter":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="madis_adapt", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the thread -----------------------------------------------------------------------
    def _lower_priority(self) -> None:
        limit_this_thread(self.threads)
        if self.nice and hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
            try:  # on Linux a thread id is a valid PRIO_PROCESS target: only this thread is reniced
                tid = threading.get_native_id()
                os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
            except OSError as exc:  # pragma: no cover - platform dependent
                log.debug("could not lower the adaptation thread's priority: %s", exc)

    def _take(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Wait until a step is due and a fresh pair is there; None when stopping."""
        with self._cond:
            while not self._stop:
                wait = self._last_step_t + self.min_interval_s - time.monotonic()
                fresh = self._slot is not None and (self.pairs_offered - self._offered_at_last_step
                                                    >= self.every_n_pairs)
                if fresh and wait <= 0:
                    pair, self._slot = self._slot, None
                    self._offered_at_last_step = self.pairs_offered
                    return pair
                self._cond.wait(timeout=max(wait, 0.05) if fresh else 0.5)
        return None

    def _loop(self) -> None:
        self._lower_priority()
        while True:
            pair = self._take()
            if pair is None:
                return
            self._last_step_t = time.monotonic()
            try:
                self.adapt_on(*pair)
            except Exception as exc:  # adaptation must never take inference down
                self.steps_failed += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("online adaptation step failed: %s", self.last_error)

    def adapt_on(self, left: np.ndarray, right: np.ndarray) -> None:
        """One adaptation step on this pair, then publish the weights when due (the
        thread's work; ``OnlineAdapterProcess`` calls it in its own process)."""
        t0 = time.perf_counter()
        prepared = self.adapter.prepare([UnlabeledPair(left, right, f"online-{self.pairs_used}")])
        logs = self.adapter.step(*self.adapter.sample_batch(prepared))
        self.pairs_used += 1
        a = self.loss_smoothing
        photo = logs["photometric"]
        self.loss = photo if np.isnan(self.loss) else a * self.loss + (1 - a) * photo
        if self.adapter.steps_done % self.sync_every == 0:
            state = {k: v.detach().clone() for k, v in self.adapter.model.state_dict().items()}
            with self._cond:
                self._published = state
                self._version += 1
        self.last_step_ms = (time.perf_counter() - t0) * 1e3

    # --- reporting and saving --------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        """What /diagnostics shows."""
        return {"adapt_steps": self.adapter.steps_done, "adapt_pairs_offered": self.pairs_offered,
                "adapt_pairs_used": self.pairs_used, "adapt_pairs_dropped": self.pairs_dropped,
                "adapt_loss": self.loss, "adapt_step_ms": self.last_step_ms, "adapt_failed_steps": self.steps_failed,
                "adapt_running": self.running, "adapt_weights_version": self._version}

    def save(self, path: str | os.PathLike) -> os.PathLike:
        """Write the adapted weights and their card (``madis_core.adaptation.card``)."""
        with self._cond:
            state = self._published
        first = self.adapter.history[0]["photometric"] if self.adapter.history else float("nan")
        return write_online_card(self.adapter.model, state, path, start=self.start_name, pairs=self.pairs_used,
                                 steps=self.adapter.steps_done, seconds=self.adapter.seconds, threads=self.threads,
                                 device=str(self.adapter.device), config=self.config, first_loss=first,
                                 loss=self.loss)


def write_online_card(model: nn.Module, state: Optional[Dict[str, torch.Tensor]], path: str | os.PathLike, *,
                      start: str, pairs: int, steps: int, seconds: float, threads: int, device: str,
                      config: AdaptConfig, first_loss: float, loss: float) -> os.PathLike:
    """A copy of ``model`` with the published ``state`` (if any) written with its card."""
    from madis_core.adaptation.card import write_adapted

    model = copy.deepcopy(model).eval()
    if state is not None:
        model.load_state_dict(state)
    nan = float("nan")
    facts = {"start": start, "data": "online (node input)", "pairs": pairs, "sizes": "as received", "steps": steps,
             "seconds": seconds, "seconds_total": seconds, "threads": threads, "device": device,
             "config": config.as_dict(), "command": "online adaptation (adapt:=true)",
             "self_supervised_before": {"loss": first_loss, "photometric": first_loss, "smoothness": nan,
                                        "consistent": nan},
             "self_supervised_after": {"loss": loss, "photometric": loss, "smoothness": nan, "consistent": nan}}
    return write_adapted(model, path, facts)
