"""``madis evaluate``: the Python API on real backends, the table, and the command line
(SGBM always present, JSON written)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from madis_core.data import build_dataset
from madis_core.backends.base import StereoBackend, StereoResult
from madis_core.estimator import StereoEstimator, build_estimator
from madis_core.evaluate import evaluate, format_table, search_range


class GroundTruthBackend(StereoBackend):
    """Answers each pair with its stored ground truth (+ offset, holes where asked):
    checks that evaluate() scores exactly the predictions it is given."""

    name = "ground-truth"

    def __init__(self, samples, offset=0.0, hole_every=0):
        self.lookup = {s["left"].tobytes(): s["disparity"] for s in samples}
        self.offset, self.hole_every = offset, hole_every

    def predict_checked(self, left, right):
        d = np.nan_to_num(self.lookup[left.tobytes()], nan=1.0).astype(np.float32) + self.offset
        if self.hole_every:
            d.reshape(-1)[:: self.hole_every] = np.nan
        return StereoResult(d)


@pytest.fixture(scope="module")
def synth():
    return build_dataset("synthetic-test:2")


def test_evaluate_scores_exactly_what_the_estimator_predicts(synth):
    perfect = evaluate(StereoEstimator(GroundTruthBackend(synth)), synth)
    assert perfect["epe"] == 0 and perfect["bad_0.5"] == 0 and perfect["d1"] == 0 and perfect["density"] == 100
    assert perfect["samples"] == 2 and perfect["latency_ms"] > 0
    assert perfect["n"] == sum(s["valid"].sum() for s in synth)
    off = evaluate(StereoEstimator(GroundTruthBackend(synth, offset=1.5)), synth, max_samples=1)
    assert off["samples"] == 1 and off["epe"] == pytest.approx(1.5, abs=1e-4)
    assert off["bad_1"] == 100 and off["bad_2"] == 0
    holes = evaluate(StereoEstimator(GroundTruthBackend(synth, hole_every=4)), synth)
    assert holes["density"] == pytest.approx(75, abs=0.1) and holes["bad_0.5"] == pytest.approx(25, abs=0.1)
    assert holes["epe"] == 0  # EPE is over the filled pixels


def test_evaluate_sgbm_real_backend(synth):
    est = build_estimator("sgbm", max_disparity=search_range(synth))
    r = evaluate(est, synth)
    assert 0 < r["density"] < 100 and r["epe"] > 0 and 0 < r["bad_2"] <= 100
    assert r["bad_0.5"] >= r["bad_1"] >= r["bad_2"] >= r["bad_3"]
    with pytest.raises(ValueError, match="no samples"):
        evaluate(est, [])


def test_sgbm_search_range_follows_the_dataset(synth):
    assert search_range(synth) == 192
    assert search_range(build_dataset("motorcycle")) == 128
    assert build_estimator("sgbm", max_disparity=search_range(synth)).meta.max_disparity == 191
    assert build_estimator("sgbm-3way", max_disparity=search_range(build_dataset("motorcycle"))).meta.max_disparity == 127


def test_format_table():
    rows = [{"model": "sgbm", "dataset": "motorcycle", "epe": 1.2345, "bad_0.5": 30.0, "bad_1": 25.0, "bad_2": 20.0,
             "bad_3": 18.0, "d1": 17.5, "density": 80.0, "latency_ms": 12.34, "samples": 1},
            {"model": "student", "dataset": "synthetic-test", "epe": math.nan, "bad_0.5": 1.0, "bad_1": 1.0,
             "bad_2": 1.0, "bad_3": 1.0, "d1": 1.0, "density": 0.0, "latency_ms": 5.0, "samples": 16}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["model", "dataset", "EPE", "bad-0.5", "bad-1", "bad-2", "bad-3", "D1", "density",
                                "ms/pair", "pairs"]
    assert lines[2].split()[:3] == ["sgbm", "motorcycle", "1.234"] and lines[2].split()[-2:] == ["12.3", "1"]
    assert lines[3].split()[2] == "-"  # NaN shown as a dash
    assert len({len(l) for l in lines[:2]}) == 1


def _run_cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "madis_core.cli", "evaluate", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_motorcycle_and_synthetic_with_json(tmp_path):
    out = tmp_path / "res.json"
    p = _run_cli("--model", "sgbm", "--dataset", "motorcycle", "--dataset", "synthetic-test:2", "--json", str(out))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("model") and "bad-2" in lines[0] and "ms/pair" in lines[0]
    rows = [l.split() for l in lines[2:4]]
    assert [r[:2] for r in rows] == [["sgbm", "motorcycle"], ["sgbm", "synthetic-test:2"]]
    res = json.loads(out.read_text())["results"]
    moto = res[0]
    # SGBM on the real pair: a plausible classical result (holes counted as errors)
    assert 10 < moto["bad_2"] < 45 and 60 < moto["density"] < 95 and moto["epe"] < 3
    assert res[1]["samples"] == 2 and res[1]["latency_ms"] > 0


def test_cli_adds_sgbm_and_reports_bad_input(tmp_path, capsys):
    from madis_core.cli import main

    assert main(["evaluate", "--model", "sgbm-3way", "--dataset", "synthetic-test:1", "--max-samples", "1"]) == 0
    models = [l.split()[0] for l in capsys.readouterr().out.splitlines()[2:] if l.strip()]
    assert models == ["sgbm-3way"]  # an SGBM variant is already the baseline
    assert main(["evaluate", "--dataset", "synthetic-test:1"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[0] == "sgbm"
    assert main(["evaluate", "--model", str(tmp_path / "missing.safetensors"), "--dataset", "synthetic-test:1"]) != 0
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "kitti2015:/no/such/dir"]) != 0
    assert "not a directory" in capsys.readouterr().err
    assert main(["evaluate", "--dataset", "synthetic-test:1", "--max-samples", "0"]) != 0
