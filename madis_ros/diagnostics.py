"""The node's /diagnostics message from its counters (``StereoNode.stats()``).

Every drop reason is always reported (zero included) so dashboards see stable keys; the
level is WARN while pairs are dropped for bad input or errors, or when no input arrives.
"""
from __future__ import annotations

from typing import Any, Dict


def stereo_status(st: Dict[str, Any], settings: Any, estimator: Any, name: str, sync_backend: str,
                  silent: bool):
    """A diagnostic_msgs/DiagnosticStatus for the node ``name`` (``st``: its stats dict)."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    s = settings
    bad = sum(v for k, v in st["drops"].items() if k != "superseded")
    level = DiagnosticStatus.WARN if (bad or silent) else DiagnosticStatus.OK
    msg = "no input" if silent else (f"{bad} pairs dropped for bad input or errors" if bad else "ok")
    values = {
        "model": estimator.name, "device": str(estimator.device),
        "sync": f"approximate slop={s.slop:g}" if s.approximate_sync else "exact", "sync_backend": sync_backend,
        "input_qos": s.input_qos,
        "input_rate_hz": f"{st['input_rate_hz']:.2f}", "output_rate_hz": f"{st['output_rate_hz']:.2f}",
        "pairs_received": st["pairs_received"], "pairs_processed": st["pairs_processed"],
        "pairs_pending": st["pairs_pending"], "pairs_in_progress": st["pairs_in_progress"],
        **{f"dropped_{k}": v for k, v in st["drops"].items()},
        **{f"sync_dropped_{k}": v for k, v in st["sync_dropped"].items()},
        "stamp_resets": st["stamp_resets"],
        **{f"received_{t.replace('/', '_')}": n for t, n in st["received"].items()},
        **{f"rate_hz_{t.replace('/', '_')}": f"{r:.2f}" for t, r in st["topic_rate_hz"].items()},
        **{k: f"{st[k]:.2f}" for k in ("inference_ms_mean", "inference_ms_p95", "overhead_ms_mean",
                                        "overhead_ms_p95", "publish_ms_mean", "latency_ms_mean", "latency_ms_p95",
                                        "stamp_age_ms_p95")},
        "rss_mb": f"{st['rss_mb']:.1f}",
        **{f"subscribers_{t.replace('/', '_')}": n for t, n in st["subscribers"].items()},
    }
    if "adapt_steps" in st:  # adapt:=true: steps done, pairs, the running self-supervised loss
        values.update({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in st.items() if k.startswith("adapt_")})
        if not st.get("adapt_running", True):  # its thread or process ended: inference goes on, unadapted from now
            level = DiagnosticStatus.WARN
            msg = ("online adaptation stopped (the last adapted weights stay in use); " + msg) if msg != "ok" \
                else "online adaptation stopped (the last adapted weights stay in use)"
    status = DiagnosticStatus(level=level, name=f"{name}: stereo", message=msg,
                              hardware_id=f"{estimator.name}@{estimator.device}")
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    return status
