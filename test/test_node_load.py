"""Overload (issue 6): stereo pairs at 30 Hz for 10 s into a node whose model is slower than 30 Hz.

Three processes over real DDS: a publisher process (640x480 rgb8 pairs + camera_info,
best effort, stamped with the wall clock), the node (OpenCV SGBM with 256 disparities:
~100 ms a pair on one core, so well under 30 Hz) and this process, which receives 'disparity'
and /diagnostics and measures end-to-end latency as receipt time - header stamp.

Checked: latency stays bounded (the last second's p95 is no more than two inference
times plus LATENCY_SLACK_MS for transport), every pair the node received is either
processed or counted in a drop reason, pairs were really dropped (it was an overload),
and the node's memory is flat. The figures are printed (run with -s to see them).
"""
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rosutil import NodeProcess, RosContext, diagnostics_values, free_domain, start_publisher  # noqa: E402

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

DOMAIN = free_domain()
W, H, RATE, DURATION = 640, 480, 30.0, 10.0
#: transport, synchronisation and message building on top of two inference times (ms)
LATENCY_SLACK_MS = 150.0


@pytest.mark.timeout(150)
def test_overload_latency_bounded_drops_counted_memory_flat():
    # 256 disparities: ~1.5x the default's cost, ~100 ms a pair on one core here (single-threaded
    # SGBM), so the node stays well below 30 Hz even on a core twice as fast
    node = NodeProcess({"model": "sgbm", "model_options": '{"num_disparities": 256}', "publish_color_disparity": False,
                        "publish_points": False, "no_input_warn_sec": 60.0}, DOMAIN)
    with node, RosContext(DOMAIN) as rc:
        assert node.wait_for_log(r"input QoS", 60), node.log_text()
        disp = rc.subscribe(DisparityImage, "disparity")
        diags = rc.subscribe(DiagnosticArray, "/diagnostics")
        # Discovery is asymmetric: outputs published before the node's writer knows our reader are
        # never sent to it, and a reader drops data of writers it does not know yet. So the stream
        # starts only once both sides know each other (the node reports our subscription).
        def matched():
            d = diagnostics_values(diags.msgs, "madis_stereo")
            return d.get("subscribers_disparity", "0") != "0" and rc.node.count_publishers("disparity") > 0
        assert rc.wait_for(matched, 30), f"the node never discovered our subscription\n{node.log_text()}"
        pub = start_publisher(DOMAIN, width=W, height=H, rate=RATE, duration=DURATION, qos="best_effort",
                              disparity=40)
        try:
            assert rc.wait_for(lambda: len(disp) > 0, 40), f"no output\n{node.log_text()}\n{pub.log_text()}"
            t_first = time.monotonic()
            rss = []
            while pub.running() and time.monotonic() - t_first < DURATION + 20:
                rss.append((time.monotonic() - t_first, node.rss_mb()))
                time.sleep(0.25)
            assert pub.wait(10) == 0, pub.log_text()
        finally:
            pub.stop()
        summary = json.loads(re.search(r"PUBLISHED (\{.*\})", pub.log_text()).group(1))

        def settled():
            d = diagnostics_values(diags.msgs, "madis_stereo")
            return d and d["pairs_pending"] == "0" and d["pairs_in_progress"] == "0" and d["input_rate_hz"] == "0.00"
        assert rc.wait_for(settled, 10), diagnostics_values(diags.msgs, "madis_stereo")
        final = diagnostics_values(diags.msgs, "madis_stereo")
        running = [diagnostics_values([a], "madis_stereo") for a in diags.msgs]
        running = [d for d in running if d.get("output_rate_hz", "0.00") != "0.00"]
        n_out = len(disp)
        items = list(disp.items)

    # --- latency -----------------------------------------------------------------------------------------
    lat = np.array([(wall - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)) * 1e3 for _, wall, m in items])
    stamps = np.array([m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for _, _, m in items])
    first = lat[stamps < stamps[0] + 1.0]
    last = lat[stamps > stamps[-1] - 1.0]
    inference_ms = float(np.median([float(d["inference_ms_p95"]) for d in running]))
    p95_first, p95_last = np.percentile(first, 95), np.percentile(last, 95)

    # --- accounting --------------------------------------------------------------------------------------
    received, processed = int(final["pairs_received"]), int(final["pairs_processed"])
    drops = {k[len("dropped_"):]: int(v) for k, v in final.items() if k.startswith("dropped_")}
    rss_arr = np.array(rss)
    rss_start = rss_arr[(rss_arr[:, 0] > 2.0) & (rss_arr[:, 0] < 3.0), 1]
    rss_end = rss_arr[-4:, 1]
    report = {"sent": summary["sent"], "publisher_hz": round(summary["achieved_hz"], 1), "received": received,
              "processed": processed, "drops": {k: v for k, v in drops.items() if v},
              "sync_dropped": [final["sync_dropped_left"], final["sync_dropped_right"]], "outputs_received": n_out,
              "outputs_reported_lost": disp.lost,
              "inference_ms_p95": round(inference_ms, 1), "latency_ms_p95_first_s": round(p95_first, 1),
              "latency_ms_p95_last_s": round(p95_last, 1), "latency_ms_max": round(float(lat.max()), 1),
              "rss_mb_at_2s": round(float(rss_start.mean()), 1), "rss_mb_end": round(float(rss_end.mean()), 1)}
    print("\nOVERLOAD " + json.dumps(report))

    assert summary["achieved_hz"] > 0.9 * RATE, f"publisher could not keep {RATE} Hz: {report}"
    assert received >= 0.8 * summary["sent"], f"most pairs must reach the node: {report}"
    assert processed < 0.8 * received and drops["superseded"] > 0, f"the node was not overloaded: {report}"
    assert processed + sum(drops.values()) == received, f"unaccounted pairs: {report}"
    assert set(k for k, v in drops.items() if v) == {"superseded"}, report
    assert n_out >= processed - 2, f"outputs lost between node and subscriber: {report}"
    # Newest pair only: behind the pair in inference waits at most one, so an output is at most
    # about two inference times (plus transport) old, however long the overload lasts. (Comparing
    # with the first second was too tight: the first pairs may find the worker idle, one
    # inference old.) A queue would grow by ~0.8 s per second here and fail this by seconds.
    bound = 2 * inference_ms + LATENCY_SLACK_MS
    assert p95_last <= bound, f"latency grew under load (bound {bound:.0f} ms): {report}"
    assert rss_end.mean() - rss_start.mean() < 25.0, f"node memory grew: {report}"
