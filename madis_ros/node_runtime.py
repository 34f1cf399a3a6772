"""What the stereo node needs besides ROS plumbing: building its estimator with a clear error,
QoS profiles and their descriptions, the hint for silent inputs, memory tuning and RSS.

    est = load_estimator(settings, logger)        # ModelLoadError with a one-line reason
    online = start_online_adaptation(settings, est, logger)   # adapt:=true; None when off or impossible
    qos_profile("sensor_data"), describe_qos("reliable")
    tune_malloc(), rss_mb()
"""
from __future__ import annotations

import os
import platform
from typing import Any

from madis_core.estimator import build_estimator

QOS_DESCRIPTIONS = {"sensor_data": "sensor_data (best effort, volatile, keep last 5)",
                    "reliable": "reliable (volatile)", "system_default": "system_default (reliable in most RMWs)"}


class ModelLoadError(RuntimeError):
    """The model could not be built; the message says which and why."""


def load_estimator(settings: Any, logger: Any):
    """Build the node's estimator (``madis_core.estimator.build_estimator``); every failure becomes a
    ModelLoadError naming the model, the device and the cause."""
    try:
        est = build_estimator(**settings.estimator_kwargs())
    except Exception as e:  # FileNotFoundError, CheckpointError, ValueError, RuntimeError (CUDA), TypeError
        hint = " (CUDA unavailable: use device:=auto or device:=cpu)" if "cuda" in str(e).lower() else ""
        raise ModelLoadError(f"cannot load model {settings.model!r} on device {settings.device!r}: "
                             f"{type(e).__name__}: {e}{hint}") from e
    if settings.device == "auto" and str(est.device) == "cpu":
        if est.meta.learned:
            logger.warning("device auto: no CUDA device available, running on the CPU (expect much higher latency)")
        else:
            logger.info(f"model {est.name} runs on the CPU")
    from madis_core.runtime import describe  # the thread policy and count (README "On a shared CPU")
    logger.info(f"inference threads: {est.threads.mode} ({describe()})")
    return est


def start_online_adaptation(settings: Any, estimator: Any, logger: Any):
    """With ``adapt:=true`` and a torch model: the started ``OnlineAdapter`` over a copy of the
    inference network (``madis_core.adaptation.online``); None when adaptation is off or the
    backend cannot learn (then an error is logged and the node runs unadapted)."""
    if not settings.adapt:
        return None
    net = estimator.backend.trainable_network()
    if net is None:
        logger.error(f"adapt:=true needs a torch model; {estimator.name} ({type(estimator.backend).__name__}) cannot "
                     "learn, so the node runs without adaptation")
        return None
    from madis_core.adaptation.online import OnlineAdapter, online_config
    from madis_core.adaptation.online_process import OnlineAdapterProcess

    config = online_config(lr=settings.adapt_lr)  # madis_core's online defaults otherwise
    kind = OnlineAdapterProcess if settings.adapt_in_process else OnlineAdapter
    online = kind(net, config, min_interval_s=settings.adapt_interval_sec, threads=settings.adapt_threads,
                  device=str(estimator.device)).start()
    logger.info(f"online adaptation on ({'child process' if settings.adapt_in_process else 'thread'}): at most one "
                f"step per {settings.adapt_interval_sec:g} s on {settings.adapt_threads} thread(s), "
                f"lr {settings.adapt_lr:g}; "
                + (f"weights saved to {settings.adapt_save_path} on shutdown" if settings.adapt_save_path
                   else "not saved (adapt_save_path empty)"))
    return online


def save_online_adaptation(online: Any, path: str, logger: Any) -> None:
    """Stop the adaptation thread and, with a ``path``, write the adapted weights and card."""
    online.stop(timeout=5.0)
    if not path:
        return
    try:
        out = online.save(path)
    except Exception as e:  # a full disk or a bad path must not turn a clean shutdown into a traceback
        logger.error(f"could not save the adapted weights to {path}: {type(e).__name__}: {e}")
        return
    st = online.stats()
    logger.info(f"adapted weights ({st['adapt_steps']} steps on {st['adapt_pairs_used']} pairs) saved to {out}; "
                f"load them with model:={out}")


def qos_profile(name: str, depth: int = 5):
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data,
                           qos_profile_system_default)

    if name == "sensor_data":
        return qos_profile_sensor_data
    if name == "reliable":
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    if name == "system_default":
        return qos_profile_system_default
    raise ValueError(f"unknown QoS {name!r}")


def describe_qos(name: str) -> str:
    return QOS_DESCRIPTIONS[name]


def tune_malloc() -> bool:
    """Make glibc keep freed image-sized buffers for reuse instead of returning them to the OS.

    Each frame allocates and frees some 10-30 MB of arrays (depth, points, message buffers,
    the model's intermediates). With glibc's defaults the worker thread's arena gives that
    memory back after every frame and takes it again on the next one as fresh pages: ~2700
    minor page faults per frame at 640x480. Measured with benchmarks/node_latency.py (node
    process over DDS, SGBM, 3 runs each): node overhead p50 15 -> 4.2 ms, SGBM inference
    p50 148 -> 110 ms, stamp->points2 p50 182 -> 130 ms, for +21 MB resident memory.
    Buffers up to 32 MiB come from the heap (M_MMAP_THRESHOLD) and up to 256 MiB of free heap
    is kept (M_TRIM_THRESHOLD). No-op off glibc or with MADIS_MALLOC_TUNING=0."""
    if os.environ.get("MADIS_MALLOC_TUNING", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return False


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")
