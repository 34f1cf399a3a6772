"""Online adaptation in a child process: the same contract as ``OnlineAdapter``, no shared GIL.

    online = OnlineAdapterProcess(estimator_net, online_config(), min_interval_s=1.0).start()
    online.sync_into(estimator_net)   # between frames: newest adapted weights, if new ones exist
    online.offer(left, right)         # never blocks
    online.stats(); online.save("adapted.safetensors"); online.stop()

Why a process: ``OnlineAdapter``'s thread shares the interpreter lock with inference.
Every torch op releases it while it computes, but the two threads take it back
between ops, and a nice-19 adapter thread that holds it when the kernel deschedules it
makes the inference thread wait for a thread the kernel rarely runs. A child process
has its own interpreter, so its priority (``nice``) is all the kernel has to weigh.

How the two sides talk (``torch.multiprocessing``, spawn: no fork of a process that
runs DDS and OpenMP threads):
- pairs go parent -> child through a one-item queue: ``offer`` only puts the newest
  pair in a one-slot mailbox (an older one is dropped and counted); a sender thread
  waits until the child raises ``want`` (a step is due) and sends it the newest pair,
  so no pair is copied between steps and ``offer`` never waits;
- weights go child -> parent through a shared-memory copy of the state dict that the
  child overwrites under a lock, bumping a version; ``sync_into`` copies it into the
  inference network only when the version is new and the lock is free at once (a busy
  lock means the next frame gets it: inference never waits);
- figures (steps, pairs, loss, step time, failures, the last error) come back through
  shared values, so ``stats()`` is a read, never a round trip.
The child exits when told to, or on its own when the parent process is gone.
"""
from __future__ import annotations

import copy
import logging
import os
import queue
import threading
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.multiprocessing as tmp
import torch.nn as nn

from madis_core.adaptation.adapter import AdaptConfig
from madis_core.adaptation.online import OnlineAdapter, online_config, write_online_card

log = logging.getLogger(__name__)

#: slots of the shared figures array
_STEPS, _PAIRS, _LOSS, _STEP_MS, _FAILED, _SECONDS, _FIRST_LOSS, _READY = range(8)
_ERROR_BYTES = 300
_POLL_S = 0.05  # how often the child checks for a stop and a pair; the sender for a request (/5)


def _child_main(model: nn.Module, config: AdaptConfig, device: str, threads: int, min_interval_s: float,
                loss_smoothing: float, shared: Dict[str, torch.Tensor], lock, version, figures, error, want, pairs,
                stop) -> None:
    """The child's loop: raise ``want`` when a step is due, adapt on the pair that comes,
    publish the weights into ``shared``. Its niceness was set by the parent at spawn."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(1)  # SGBM proxy labels: no OpenCV worker pool beside inference
    except ImportError:  # pragma: no cover
        pass
    parent = tmp.parent_process()
    worker = OnlineAdapter(model, config, min_interval_s=0.0, threads=threads, nice=0, sync_every=1,
                           loss_smoothing=loss_smoothing, device=device)
    figures[_READY] = 1.0
    last = -float("inf")
    published = 0
    while not stop.value and (parent is None or parent.is_alive()):
        wait = last + min_interval_s - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, _POLL_S))
            continue
        want.value = 1
        try:
            left, right = pairs.get(timeout=_POLL_S)
        except queue.Empty:
            continue
        last = time.monotonic()
        try:
            worker.adapt_on(left, right)
        except Exception as exc:  # adaptation must never take inference down
            figures[_FAILED] += 1
            error.value = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:_ERROR_BYTES - 1]
            continue
        new, state = worker.published()
        if new != published and state is not None:
            with lock:
                for k, v in state.items():
                    shared[k].copy_(v)
                version.value += 1
            published = new
        hist = worker.adapter.history
        figures[_STEPS] = worker.adapter.steps_done
        figures[_PAIRS] = worker.pairs_used
        figures[_LOSS] = worker.loss
        figures[_STEP_MS] = worker.last_step_ms
        figures[_SECONDS] = worker.adapter.seconds
        figures[_FIRST_LOSS] = hist[0]["photometric"] if hist else float("nan")


class OnlineAdapterProcess:
    """``OnlineAdapter``'s interface, the training in a child process; see the module docstring."""

    def __init__(self, model: nn.Module,                 # the network inference runs (copied, never modified here)
                 config: Optional[AdaptConfig] = None,    # losses and learning rate (steps/time budget ignored)
                 min_interval_s: float = 1.0,             # at most one adaptation step per this many seconds
                 every_n_pairs: int = 1,                  # and per this many offered pairs
                 threads: int = 1,                        # torch intra-op threads of the child
                 nice: int = 19,                          # niceness increment of the child (POSIX)
                 loss_smoothing: float = 0.9,             # running mean of the self-supervised loss (diagnostics)
                 device: str = "cpu"):                    # where the copy trains (cuda works: spawn, not fork)
        if min_interval_s < 0 or every_n_pairs < 1 or threads < 1:
            raise ValueError("min_interval_s >= 0, every_n_pairs >= 1 and threads >= 1 required")
        self.config = config or online_config()
        self.min_interval_s = float(min_interval_s)
        self.every_n_pairs = int(every_n_pairs)
        self.threads = int(threads)
        self.nice = int(nice)
        self.loss_smoothing = float(loss_smoothing)
        self.device = str(device)
        self.start_name = getattr(model, "model_name", type(model).__name__)
        self._template = copy.deepcopy(model).cpu().eval()  # the child's start and save()'s architecture
        self._shared = {k: v.detach().cpu().clone().share_memory_() for k, v in model.state_dict().items()}
        ctx = tmp.get_context("spawn")
        self._ctx = ctx
        self._lock = ctx.Lock()
        self._version = ctx.Value("q", 0, lock=False)  # written only by the child, under _lock
        self._figures = ctx.Array("d", [0.0, 0.0, float("nan"), float("nan"), 0.0, 0.0, float("nan"), 0.0],
                                  lock=False)
        self._error = ctx.Array("c", _ERROR_BYTES, lock=False)
        # flags, not Events: an Event's set() waits for every waiter to wake, and a killed
        # waiter never does (stop() hung for good after the child was SIGKILLed)
        self._want = ctx.Value("b", 0, lock=False)   # the child: a step is due, send a pair
        self._stop_flag = ctx.Value("b", 0, lock=False)
        self._pairs = ctx.Queue(maxsize=1)
        self._proc: Optional[Any] = None
        self._sender: Optional[threading.Thread] = None
        self._cond = threading.Condition()
        self._slot: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._closing = False
        self._synced: Dict[int, int] = {}
        self.pairs_offered = 0
        self.pairs_dropped = 0  # offered pairs replaced before they were sent
        self._offered_at_last_send = 0

    # --- inference side ---------------------------------------------------------------
    def offer(self, left: np.ndarray, right: np.ndarray) -> None:
        """Hand the newest pair over (a one-slot mailbox, as ``OnlineAdapter.offer``: an older
        pair not yet sent is dropped and counted). Never blocks: the sender thread copies
        the pair to the child when the child wants one."""
        with self._cond:
            self.pairs_offered += 1
            if self._slot is not None:
                self.pairs_dropped += 1
            self._slot = (left, right)
            self._cond.notify()

    def _send_loop(self) -> None:
        """Wait for the child to want a pair, then send it the newest fresh one."""
        while not self._closing:
            if not self._want.value:
                time.sleep(_POLL_S / 5)
                continue
            with self._cond:
                while not self._closing and not (self._slot is not None and self.pairs_offered
                                                 - self._offered_at_last_send >= self.every_n_pairs):
                    self._cond.wait(0.5)
                if self._closing:
                    return
                pair, self._slot = self._slot, None
                self._offered_at_last_send = self.pairs_offered
            self._want.value = 0
            item = (np.ascontiguousarray(pair[0]), np.ascontiguousarray(pair[1]))
            while not self._closing:  # full only if the child died before taking the last one
                try:
                    self._pairs.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue

    def sync_into(self, target: nn.Module) -> bool:
        """Copy the newest adapted weights into ``target`` if it does not have them yet and
        the child is not writing them right now; True when it copied."""
        if self._version.value == self._synced.get(id(target), 0):
            return False
        lock = self._lock  # None once stopped: nobody writes any more
        if lock is not None and not lock.acquire(block=False):
            return False  # the child is publishing: the next frame gets them
        try:
            version = self._version.value
            with torch.no_grad():
                own = target.state_dict()
                for k, v in self._shared.items():
                    own[k].copy_(v)
        finally:
            if lock is not None:
                lock.release()
        self._synced[id(target)] = version
        return True

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> "OnlineAdapterProcess":
        if self._proc is None:
            args = (self._template, self.config, self.device, self.threads, self.min_interval_s,
                    self.loss_smoothing, self._shared, self._lock, self._version, self._figures, self._error,
                    self._want, self._pairs, self._stop_flag)
            self._proc = self._ctx.Process(target=_child_main, args=args, name="madis_adapt", daemon=True)
            self._proc.start()
            self._renice_child()
            self._sender = threading.Thread(target=self._send_loop, name="madis_adapt_send", daemon=True)
            self._sender.start()
        return self

    def _renice_child(self) -> None:
        """Lower the child's priority from here, the moment it exists: a spawned child first
        starts an interpreter and imports torch and the model's modules (seconds of CPU)
        before ``_child_main`` runs, and at normal priority that start-up competes with
        inference. (Threads the child starts later inherit the niceness.)"""
        if not self.nice or not hasattr(os, "setpriority"):
            return
        try:
            target = min(19, os.getpriority(os.PRIO_PROCESS, 0) + self.nice)
            os.setpriority(os.PRIO_PROCESS, self._proc.pid, target)
        except OSError:  # pragma: no cover - the child is gone already, or not permitted
            pass

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout)
        self._stop_flag.value = 1
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():  # a step in a long op: it has no state worth waiting for
                self._proc.terminate()
                self._proc.join(2.0)
        if self._pairs is not None and not self.running:
            self._release()

    def _release(self) -> None:
        """Free the semaphores of the queue, lock and events now. Python unlinks them at exit
        only when its finalisation runs, and a node ends with ``os._exit`` (process_signals),
        which would leave them to the resource tracker's 'leaked semaphore' warning."""
        import gc

        self._pairs.cancel_join_thread()  # a pair nobody will take must not hold up our exit
        self._pairs.close()
        self._pairs = self._lock = None
        gc.collect()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> Optional[int]:
        """The adaptation process's id (None before start)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def ready(self) -> bool:
        """The child has built its network and waits for pairs."""
        return bool(self._figures[_READY])

    @property
    def last_error(self) -> Optional[str]:
        return self._error.value.decode("utf-8", "replace") or None

    # --- reporting and saving --------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        """What /diagnostics shows (the same keys as ``OnlineAdapter.stats``)."""
        f = self._figures
        return {"adapt_steps": int(f[_STEPS]), "adapt_pairs_offered": self.pairs_offered,
                "adapt_pairs_used": int(f[_PAIRS]), "adapt_pairs_dropped": self.pairs_dropped,
                "adapt_loss": float(f[_LOSS]), "adapt_step_ms": float(f[_STEP_MS]),
                "adapt_failed_steps": int(f[_FAILED]), "adapt_running": self.running,
                "adapt_weights_version": int(self._version.value)}

    def save(self, path: str | os.PathLike) -> os.PathLike:
        """Write the newest published weights and their card."""
        lock = self._lock if self.running else None  # a dead child may have died holding it
        if lock is not None and not lock.acquire(timeout=10.0):
            raise RuntimeError("the adaptation process holds its weights' lock for more than 10 s")
        try:
            state = {k: v.clone() for k, v in self._shared.items()} if self._version.value else None
        finally:
            if lock is not None:
                lock.release()
        f = self._figures
        return write_online_card(self._template, state, path, start=self.start_name, pairs=int(f[_PAIRS]),
                                 steps=int(f[_STEPS]), seconds=float(f[_SECONDS]), threads=self.threads,
                                 device=self.device, config=self.config, first_loss=float(f[_FIRST_LOSS]),
                                 loss=float(f[_LOSS]))
