"""Distillation: the losses, adapters, weighting, the frozen teacher and a CPU smoke run."""
from __future__ import annotations

import argparse
import time

import pytest
import torch
import torch.nn as nn
import yaml

from madis_core.checkpoint import read_weights, save_weights
from madis_core.models import build_model
from madis_core.training.config import with_defaults
from madis_core.training.distill_losses import (FeatureAdapter, LossWeighting, cost_volume_distillation_loss,
                                                distribution_distillation_loss, feature_distillation_loss,
                                                ground_truth_loss, laplacian_bin_distribution, make_adapter,
                                                pixel_distillation_loss, tokens_to_map)

torch.set_num_threads(1)


def _pair(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*shape, generator=g)
    return a, a + 0.5 * torch.randn(*shape, generator=g)


def test_each_distillation_loss_is_zero_at_a_match_and_positive_otherwise():
    f, f2 = _pair((2, 8, 6, 7))
    assert feature_distillation_loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_distillation_loss(f2, f).item() > 0.01

    v, v2 = _pair((2, 4, 5, 6, 7), 1)
    assert cost_volume_distillation_loss(v, v.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert cost_volume_distillation_loss(v2, v).item() > 0.01
    v1, v12 = _pair((1, 1, 5, 3, 4), 2)  # one group: compared along the bins
    assert cost_volume_distillation_loss(v1, v1.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert cost_volume_distillation_loss(v12, v1).item() > 0.01

    logits, logits2 = _pair((2, 24, 4, 5), 3)
    teacher_prob = torch.softmax(logits, 1)
    assert distribution_distillation_loss(logits.clone(), teacher_prob).item() == pytest.approx(0.0, abs=1e-5)
    assert distribution_distillation_loss(logits2, teacher_prob).item() > 0.01

    d = torch.rand(2, 1, 8, 9) * 50
    assert pixel_distillation_loss(d.clone(), d).item() == 0.0
    assert pixel_distillation_loss(d + 0.3, d).item() > 0.01

    valid = torch.ones_like(d, dtype=torch.bool)
    assert ground_truth_loss([d, d, d.clone()], d, valid).item() == pytest.approx(0.0, abs=1e-6)
    assert ground_truth_loss([d + 1, d, d], d, valid).item() > 0.1
    assert ground_truth_loss([d + 1], d, torch.zeros_like(valid)).item() == 0.0  # no ground truth: no loss
    with pytest.raises(ValueError, match="differ"):
        feature_distillation_loss(f, f[:, :4])


def test_laplacian_target_over_bins():
    d = torch.tensor([3.0, 50.0, 121.0, 180.0]).view(1, 1, 1, 4)
    sharp = laplacian_bin_distribution(d, torch.full_like(d, -3.0), 24, 8.0)
    wide = laplacian_bin_distribution(d, torch.full_like(d, 2.5), 24, 8.0)
    for p in (sharp, wide):
        torch.testing.assert_close(p.sum(1), torch.ones(1, 1, 4))
    centres = torch.arange(24.0).view(1, -1, 1, 1) * 8.0
    mean = (sharp * centres).sum(1).flatten()
    assert torch.all((mean - d.flatten()).abs() < 4.0), mean  # the floor keeps it from snapping to a bin
    assert torch.all(sharp.amax(1) > wide.amax(1))  # confident teacher -> peakier target
    assert torch.equal(sharp.argmax(1).flatten(), torch.tensor([0, 6, 15, 22]))
    # pooled to a coarse grid: a cell straddling a depth edge gets two peaks
    edge = torch.cat([torch.full((1, 1, 8, 4), 16.0), torch.full((1, 1, 8, 4), 96.0)], -1)
    p = laplacian_bin_distribution(edge, None, 24, 8.0, downsample=8)
    assert p.shape == (1, 24, 1, 1)
    assert p[0, 2, 0, 0] > 0.3 and p[0, 12, 0, 0] > 0.3


def test_adapters_only_when_shapes_differ():
    assert isinstance(make_adapter(24, 24, 4.0, 4.0), nn.Identity)
    a = make_adapter(24, 32, 4.0, 4.0)
    assert isinstance(a, FeatureAdapter) and a.proj.in_channels == 24 and a.proj.out_channels == 32
    assert isinstance(make_adapter(24, 24, 8.0, 16.0), FeatureAdapter)  # same channels, other resolution
    assert isinstance(make_adapter(4, 8, 1, 1, volume=True).proj, nn.Conv3d)


def _task(student: str, teacher: str, crop=(64, 128), **distill):
    from madis_core.training.distill import DistillationTask

    cfg = with_defaults({"task": "distill", "model": {"name": student}, "train": {"crop": list(crop)},
                         "distill": {"teacher": teacher, "teacher_random_init": True, **distill}})
    torch.manual_seed(0)
    return DistillationTask(cfg, torch.device("cpu"))


def _batch(b=2, h=64, w=128, seed=0, with_gt=True):
    g = torch.Generator().manual_seed(seed)
    left = torch.rand(b, 3, h, w, generator=g)
    disp = torch.rand(b, 1, h, w, generator=g) * 30 + 1
    return {"left": left, "right": torch.roll(left, -6, -1), "disparity": disp,
            "valid": torch.full((b, 1, h, w), with_gt, dtype=torch.bool)}


def test_task_builds_adapters_per_teacher():
    same = _task("student", "student")
    assert same.points == [("stem", "stem"), ("f4", "f4")]
    assert all(isinstance(a, nn.Identity) for a in same.module.adapters.values())
    assert isinstance(same.module.volume_adapter, nn.Identity)
    assert same.active == ["distribution", "feature", "gt", "pixel", "volume"] and same.teacher_bins

    thinner = _task("student-lite", "student")
    assert all(isinstance(a, FeatureAdapter) for a in thinner.module.adapters.values())
    assert [(a.proj.in_channels, a.proj.out_channels) for a in thinner.module.adapters.values()] == [(16, 24), (16, 24)]

    vit = _task("student", "croco-vit-tiny")  # transformer tokens at 1/16 -> student f8 at 1/8
    assert vit.points == [("f8", "enc_norm")] and "volume" not in vit.active and not vit.teacher_bins
    (adapter,) = vit.module.adapters.values()
    assert isinstance(adapter, FeatureAdapter) and (adapter.proj.in_channels, adapter.proj.out_channels) == (48, 192)

    madis = _task("student", "madis-tiny")  # the matching transformer: the student's layout one to one
    assert madis.points == [("stem", "stem"), ("f4", "f4")] and madis.teacher_bins
    assert madis.active == ["distribution", "feature", "gt", "pixel", "volume"]
    assert all(isinstance(a, nn.Identity) for a in madis.module.adapters.values())
    lite = _task("student-lite", "madis-tiny")  # thinner student: 1x1 adapters on the student side
    assert "volume" in lite.active and all(isinstance(a, FeatureAdapter) for a in lite.module.adapters.values())


def test_teacher_is_frozen_through_a_step():
    """A BatchNorm teacher in a training step: no gradient, no running-statistics update."""
    task = _task("student-lite", "student")
    before = {k: v.clone() for k, v in task.teacher.model.state_dict().items()}
    module = task.trainable_module()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    student_before = [p.detach().clone() for p in task.student.parameters()]
    for step in range(2):
        loss, logs = task.training_step(module, _batch(seed=step), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not task.teacher.model.training
    assert all(p.grad is None and not p.requires_grad for p in task.teacher.model.parameters())
    for k, v in task.teacher.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(a, b.detach()) for a, b in zip(student_before, task.student.parameters()))
    assert not any(p is q for p in module.parameters() for q in task.teacher.model.parameters())


def test_teacher_alone_without_ground_truth():
    task = _task("student-lite", "madis-tiny", use_ground_truth=False)
    assert "gt" not in task.active
    loss, logs = task.training_step(task.trainable_module(), _batch(with_gt=False), 0)
    assert torch.isfinite(loss) and loss.item() > 0 and "gt" not in logs and logs["pixel"] > 0


def test_loss_weighting_schedules():
    w = LossWeighting({"gt": 1.0, "feature": 1.0, "distribution": 0.2}, "step", milestones=[10, 20, 40])
    assert [w.weight("feature", s) for s in (0, 10, 25, 40)] == pytest.approx([1.0, 0.1, 0.01, 0.001])
    assert w.weight("gt", 100) == 1.0 and w.weight("distribution", 15) == pytest.approx(0.02)
    losses = {"gt": torch.tensor(2.0), "feature": torch.tensor(0.5)}
    total, used = w(losses, 10)
    assert total.item() == pytest.approx(2.0 + 0.05) and used == pytest.approx({"gt": 1.0, "feature": 0.1})

    u = LossWeighting({"gt": 1.0, "pixel": 0.1, "volume": 0.0}, "uncertainty")
    assert sorted(u.log_vars) == ["gt", "pixel"]  # no parameter for a disabled term
    gt = torch.tensor(3.0, requires_grad=True)
    total, _ = u({"gt": gt, "pixel": torch.tensor(1.0)}, 0)
    total.backward()
    assert u.log_vars["gt"].grad.item() == pytest.approx(1.0 - 3.0)  # d/ds [exp(-s) L + s] at s=0
    with pytest.raises(ValueError, match="unknown loss"):
        LossWeighting({"gtt": 1.0})


def test_tokens_to_map_grid():
    tokens = torch.arange(2 * 12 * 3, dtype=torch.float32).view(2, 12, 3)
    m = tokens_to_map(tokens, (40, 60))  # padded to 48x64 -> 3x4 patches of 16
    assert m.shape == (2, 3, 3, 4) and torch.equal(m[1, :, 2, 3], tokens[1, 11])
    with pytest.raises(ValueError, match="patch grid"):
        tokens_to_map(torch.zeros(1, 7, 3), (40, 60))


def test_distill_smoke_run_lowers_the_loss(tmp_path):
    """A few dozen CPU steps of croco-vit-tiny (random init, hooked tokens) -> student through the shared engine."""
    from madis_core.estimator import StereoEstimator
    from madis_core.training import engine

    torch.manual_seed(0)
    teacher_path = save_weights(build_model("croco-vit-tiny"), tmp_path / "teacher.safetensors")
    cfg = with_defaults({
        "task": "distill", "model": {"name": "student"}, "data": {"max_disparity": 32},
        "train": {"steps": 30, "batch_size": 2, "crop": [64, 128], "seed": 1, "device": "cpu", "threads": 1},
        "optim": {"lr": 1e-3, "warmup_steps": 3, "weight_decay": 0.0},
        "output": {"dir": str(tmp_path / "run"), "log_every": 5, "checkpoint_every": 0, "image_every": 30,
                   "tensorboard": True},
        "distill": {"teacher": str(teacher_path), "milestones": [20], "weighting": "step"},
    })
    t0 = time.perf_counter()
    result = engine.run(cfg)
    losses = [h["loss"] for h in result.history]
    print(f"distill smoke run: {time.perf_counter() - t0:.1f} s, loss per 5 steps {losses}")
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
    assert result.history[-1]["pixel"] < result.history[0]["pixel"]
    assert result.history[-1]["w_feature"] == pytest.approx(0.1)  # decayed at step 20
    # the teacher file's weights are exactly what the frozen teacher still holds
    _, _, saved = read_weights(teacher_path)
    for k, v in result.task.teacher.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # the final weights are the student alone, usable by the estimator
    name, _, state = read_weights(result.weights)
    assert name == "student" and not any(k.startswith(("adapters", "weighting")) for k in state)
    est = StereoEstimator.from_pretrained(str(result.weights), device="cpu")
    assert est.name == "student"
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["task"]["teacher"] == "croco-vit-tiny" and ckpt["model_name"] == "student"


def test_student_supervised_task_step():
    from madis_core.training.distill import StudentTask

    cfg = with_defaults({"task": "student-supervised", "model": {"name": "student-lite"},
                         "train": {"crop": [64, 128]}, "distill": {"gt_loss": "smooth_l1"}})
    task = StudentTask(cfg, torch.device("cpu"))
    assert task.trainable_module() is task.export_model()
    loss, logs = task.training_step(task.trainable_module(), _batch(), 0)
    assert loss.item() > 0 and set(logs) == {"gt"}


def test_madis_distill_command_checks_the_config(tmp_path, capsys):
    from madis_core.training.distill import add_arguments, run

    cfg = {"model": {"name": "student"}, "distill": {"teacher": "madis-tiny", "weights": {"pixel": 0.5}}}
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(cfg))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([str(path), "train.steps=7", "--print-config"])) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["task"] == "distill" and printed["train"]["steps"] == 7
    cfg["distill"]["teachr"] = "x"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="teachr"):
        run(parser.parse_args([str(path), "--print-config"]))


def test_shipped_distillation_configs_are_valid():
    from pathlib import Path

    from madis_core.models import list_models
    from madis_core.training.config import load_config
    from madis_core.training.distill import distill_section

    root = Path(__file__).resolve().parents[1] / "config" / "train"
    files = sorted(root.glob("distill_*.yaml")) + sorted(root.glob("student_*.yaml"))
    assert len(files) >= 3
    madis_modules = set(dict(build_model("croco-vit-tiny").named_modules()))
    for path in files:
        cfg = load_config(path)
        assert cfg["task"] in ("distill", "student-supervised"), path
        assert cfg["model"]["name"] in list_models() and "student" in cfg["model"]["name"], path
        opts = distill_section(cfg)
        for student_point, teacher_point in ([] if opts["feature_points"] == "auto" else opts["feature_points"]):
            assert student_point in ("stem", "f4", "f8") and teacher_point in madis_modules, (path, teacher_point)
        crop = cfg["train"]["crop"]
        assert crop[0] % 16 == 0 and crop[1] % 16 == 0, path


def test_distill_resume_is_exact(tmp_path):
    """Killed after a checkpoint and resumed: the same student, adapters and learned
    loss weights as an uninterrupted run (the engine's resume with this task's state)."""
    from madis_core.training import engine
    from madis_core.training.distill import DistillationTask

    torch.manual_seed(0)
    teacher = save_weights(build_model("student-lite"), tmp_path / "teacher.safetensors")

    def cfg(out):
        return with_defaults({
            "task": "distill", "model": {"name": "student-lite"}, "data": {"max_disparity": 24},
            "train": {"steps": 6, "batch_size": 1, "crop": [32, 64], "seed": 1, "device": "cpu", "threads": 1},
            "optim": {"warmup_steps": 1},
            "output": {"dir": str(out), "log_every": 1, "checkpoint_every": 2, "image_every": 0, "tensorboard": False},
            "distill": {"teacher": str(teacher), "weighting": "uncertainty"}})

    class KilledAtStep4(DistillationTask):
        def training_step(self, module, batch, step):
            if step == 4:
                raise KeyboardInterrupt
            return super().training_step(module, batch, step)

    whole = engine.run(cfg(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        engine.run(cfg(tmp_path / "b"), task_factory=KilledAtStep4)
    resumed = engine.run(cfg(tmp_path / "b"), resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history][-2:]
    a, b = whole.task.trainable_module().state_dict(), resumed.task.trainable_module().state_dict()
    assert any(k.startswith("weighting.log_vars") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
