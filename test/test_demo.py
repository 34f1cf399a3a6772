"""``make demo`` end to end: bag -> player process -> node process -> this demo process,
over real DDS, with the real SGBM model; and the demo's failure path.

ROS_DOMAIN_ID from ``rosutil.free_domain()``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from madis_core.pipeline import ProcessingSettings, StereoFrameProcessor
from madis_ros.params import DEFAULT_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rosutil import free_domain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _run_demo(out: Path, domain: int, *extra: str, timeout: float = 170.0) -> subprocess.CompletedProcess:
    """The demo as `make demo` runs it: the node's default model (the shipped student)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ROS_DOMAIN_ID", None)
    return subprocess.run([sys.executable, "-m", "madis_ros.demo", "--out", str(out), "--domain-id", str(domain),
                           *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _no_leftover_processes(out: Path) -> None:
    """No node or player of this demo survives it (they would keep the domain busy)."""
    mine = str(out)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        assert not (mine in cmd and "madis_ros.bag_tool" in cmd), f"player still running: {cmd}"


def test_demo_end_to_end(tmp_path):
    from madis_core.data import load_motorcycle
    from madis_core.estimator import StereoEstimator
    from madis_core.io import read_image, read_pfm, read_ply
    from madis_core.metrics import compute_metrics

    out = tmp_path / "demo_out"
    t0 = time.monotonic()
    r = _run_demo(out, free_domain())
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert wall < 150, f"demo took {wall:.0f} s"
    text = r.stdout
    assert "FASTDDS_DEFAULT_PROFILES_FILE=" in text  # the same-host profile the suite runs with
    moto_line = next(line for line in text.splitlines() if line.startswith("Motorcycle"))
    for word in ("bad-2", "EPE", "density", "bad-1", "bad-3"):
        assert word in moto_line
    assert "latency camera stamp -> disparity received" in text

    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == DEFAULT_MODEL == "student"
    frames = {f["name"]: f for f in summary["frames"]}
    assert set(frames) == {"synthetic_0", "synthetic_1", "synthetic_2", "motorcycle"}
    moto = frames["motorcycle"]
    assert moto["received"] == ["disparity", "depth", "points2"]
    assert moto["latency_ms"] is not None and 0 < moto["latency_ms"] < 30_000

    # What came back over DDS equals the same model and frame pipeline run here on the same pair
    # (disparities pointing outside the right image invalid): nothing in the bag, the transport
    # or the conversions changed a pixel (float sums may differ in the last bits between thread
    # counts, hence the small tolerance).
    sample = load_motorcycle()
    est = StereoEstimator.from_pretrained(DEFAULT_MODEL, device="cpu")
    ours = StereoFrameProcessor(est, ProcessingSettings()).process(sample["left"], sample["right"], sample["camera"])
    ref = compute_metrics(ours.disparity, sample["disparity"])
    for k in ("bad_1", "bad_2", "bad_3", "density", "n"):
        assert summary["motorcycle"][k] == pytest.approx(ref[k], abs=0.02), k
    assert summary["motorcycle"]["epe"] == pytest.approx(ref["epe"], rel=1e-3)
    # the shipped student beats SGBM's bad-2 on this real pair (holes count as errors)
    sgbm = StereoEstimator.from_pretrained("sgbm")
    sgbm_bad2 = compute_metrics(sgbm.predict(sample["left"], sample["right"]).disparity, sample["disparity"])["bad_2"]
    assert summary["motorcycle"]["bad_2"] < sgbm_bad2

    disp = read_pfm(out / "disparity.pfm")
    color = read_image(out / "disparity_color.png")
    assert disp.shape == (500, 741) and color.shape == (500, 741, 3)
    depth = read_pfm(out / "depth.pfm")
    depth[~np.isfinite(depth)] = np.nan
    cam = sample["camera"]
    ok = np.isfinite(disp) & np.isfinite(depth)
    np.testing.assert_allclose(depth[ok], cam.disparity_to_depth(disp)[ok], rtol=1e-5)
    mm = read_image(out / "depth_mm.png")
    assert mm.dtype == np.uint16 and abs(float(np.median(mm[ok])) - 1000 * float(np.nanmedian(depth[ok]))) < 2
    pts, cols = read_ply(out / "cloud.ply")
    assert len(pts) == int(np.isfinite(depth).sum()) and cols is not None
    assert 1.5 < float(np.median(pts[:, 2])) < 8.0  # the motorcycle is 2-6 m from the rig
    assert (out / "sample_bag" / "metadata.yaml").exists()
    _no_leftover_processes(out)


def test_demo_fails_clearly_when_the_node_produces_nothing(tmp_path):
    """The node runs but never gets a left camera_info (remapped away), so no frame is ever
    synchronised (never another frame's calibration): the node names the missing topic, the
    demo says it got nothing and exits non-zero, in bounded time, leaving no process behind."""
    out = tmp_path / "demo_fail"
    t0 = time.monotonic()
    r = _run_demo(out, free_domain(), "--synthetic-frames", "0", "--play-rate", "2", "--max-passes", "2",
                  "--subscriber-wait", "3", "--node-arg=-r", "--node-arg=left/camera_info:=/nowhere",
                  timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error: the stereo node produced no output" in r.stdout
    assert "node.log" in r.stdout
    assert time.monotonic() - t0 < 100
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"][0]["received"] == []
    assert summary["node"]["pairs_processed"] in ("0", None)
    log = (out / "node.log").read_text()
    assert "images arrive on /stereo/left/image_rect but no camera_info on /nowhere" in log, log[-3000:]
    _no_leftover_processes(out)
