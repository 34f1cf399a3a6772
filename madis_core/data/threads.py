"""Worker threads that run torch ops on a single thread each.

Data generation is many small tensor ops: torch's intra-op parallelism barely helps
them, and under GNU OpenMP an idle team of the calling thread keeps spinning on a
core while other threads work. So the data pipeline runs on its own threads, each
with one torch thread (``torch.set_num_threads`` is per thread under OpenMP).

``torch.set_num_threads`` also changes process-wide state (MKL's thread count, and
the value that threads started later pick up), so the caller's setting is restored
once all workers have made theirs.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch


def _single_threaded_worker() -> None:
    torch.get_num_threads()  # initialise this thread's OpenMP setting first (torch does it lazily, once)
    torch.set_num_threads(1)


def single_threaded_pool(n: int, name: str = "madis-data") -> ThreadPoolExecutor:
    """A pool of ``n`` started worker threads, each running torch ops on one thread."""
    if n < 1:
        raise ValueError(f"a worker pool needs at least one thread, got {n}")
    caller = torch.get_num_threads()
    pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix=name, initializer=_single_threaded_worker)
    barrier = threading.Barrier(n + 1)
    started = [pool.submit(barrier.wait) for _ in range(n)]  # blocking tasks: all n threads start now
    barrier.wait()
    for f in started:
        f.result()
    torch.set_num_threads(caller)
    return pool
