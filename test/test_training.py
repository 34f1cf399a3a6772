"""The training engine on the CPU: loss falls, 2-process DDP stays in sync, resume after a kill is exact."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from madis_core.checkpoint import read_weights
from madis_core.training.madis_task import MadisTask

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # robust timing when the 2 CI cores are shared


def tiny_config(out_dir: Path, steps: int, **sections) -> dict:
    """madis-tiny MIM with the EMA teacher on small synthetic crops."""
    cfg = {
        "task": "madis",
        "model": {"name": "madis-tiny"},
        "data": {"sources": [{"type": "synthetic", "max_disparity": 32}]},
        "train": {"steps": steps, "batch_size": 2, "crop": [64, 128], "seed": 3, "device": "cpu", "threads": 1},
        "optim": {"lr": 1.0e-3, "warmup_steps": 5},
        "output": {"dir": str(out_dir), "log_every": 2, "checkpoint_every": 3, "image_every": 0,
                   "tensorboard": False},
        "ema": {"momentum": 0.9},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_madis_tiny_loss_falls_on_cpu(tmp_path):
    from madis_core.checkpoint import load_model
    from madis_core.training import engine

    cfg = tiny_config(tmp_path / "run", 24, optim={"warmup_steps": 3},
                      output={"log_every": 4, "checkpoint_every": 12, "image_every": 24, "tensorboard": True},
                      validation={"dataset": "synthetic-test:1?height=64&width=128&max_disparity=32"})
    t0 = time.perf_counter()
    result = engine.run(cfg)
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in result.history]
    print(f"madis-tiny 24 steps of batch 2 at 64x128: {seconds:.1f} s; loss per 4 steps {losses}")
    assert len(losses) == 6 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.history[-1]["rec_left"] < result.history[0]["rec_left"] + 0.1
    # final weights: the registry model, loadable by the estimator's loader
    assert result.weights == tmp_path / "run" / "model.safetensors"
    net = load_model(result.weights)
    for k, v in net.state_dict().items():
        assert torch.equal(v, result.task.model.state_dict()[k])
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 24 and "ema" in ckpt["task"] and ckpt["model_name"] == "madis-tiny"
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    # final validation through StereoEstimator + madis_core.evaluate (tiled inference)
    assert result.validation["samples"] == 1 and 0 <= result.validation["epe"] < 100
    assert not list((tmp_path / "run").glob(".*.tmp*"))


class _LocalLossTask(MadisTask):
    """MadisTask that remembers this rank's own (not all-reduced) losses."""

    def training_step(self, module, batch, step):
        loss, logs = super().training_step(module, batch, step)
        self.local_losses = getattr(self, "local_losses", []) + [float(loss)]
        return loss, logs


def _ddp_worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    from madis_core.training import engine

    torch.manual_seed(1000 + rank)  # the engine must not depend on what the caller did before
    result = engine.run(cfg, task_factory=_LocalLossTask)
    torch.save({"model": result.task.model.state_dict(), "ema": result.task.teacher.state_dict(),
                "losses": result.task.local_losses}, Path(out) / f"rank{rank}.pt")


def test_ddp_two_processes_keep_parameters_identical(tmp_path):
    import torch.multiprocessing as mp

    cfg = tiny_config(tmp_path / "ddp", 4, output={"log_every": 1, "checkpoint_every": 0})
    mp.start_processes(_ddp_worker, args=(2, free_port(), cfg, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # the ranks saw different data (their own losses differ) yet hold the same parameters:
    # gradients were all-reduced
    assert len(r0["losses"]) == 4 and all(a != b for a, b in zip(r0["losses"], r1["losses"]))
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    for k in r0["ema"]:
        assert torch.equal(r0["ema"][k], r1["ema"][k]), k
    # training happened: parameters moved away from the common initialisation
    torch.manual_seed(3)
    from madis_core.models import build_model

    init = dict(build_model("madis-tiny").named_parameters())  # buffers: frozen BatchNorm statistics
    moved = [k for k in init if not torch.equal(init[k], r0["model"][k])]
    assert len(moved) > 0.9 * len(init)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and len(ckpt["data"]) == 2
    for k, v in ckpt["model"].items():
        assert torch.equal(v, r0["model"][k])


def _train_cmd(config: Path, *extra: str) -> list:
    return [sys.executable, "-m", "madis_core.training.train", str(config), *extra]


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path):
    from madis_core.training import engine

    steps = 10
    # uninterrupted reference, in this process
    ref = engine.run(tiny_config(tmp_path / "ref", steps))
    ref_ckpt = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)

    # the same config from the command line, killed (SIGKILL) once its first checkpoint exists
    run_dir = tmp_path / "killed"
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "unused", steps)))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_train_cmd(config, f"output.dir={run_dir}"), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpt_path = run_dir / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt_path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "model.safetensors").exists()
    killed_at = torch.load(ckpt_path, weights_only=True)["step"]
    assert 0 < killed_at < steps

    done = subprocess.run(_train_cmd(config, f"output.dir={run_dir}", "--resume"), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed from {ckpt_path} at step {killed_at}/{steps}" in done.stdout

    name, _, state = read_weights(run_dir / "model.safetensors")
    assert name == "madis-tiny"
    ref_state = ref.task.model.state_dict()
    for k, v in state.items():
        assert torch.equal(v, ref_state[k]), f"{k} differs after resume"
    ckpt = torch.load(ckpt_path, weights_only=True)
    for k, v in ckpt["task"]["ema"].items():
        assert torch.equal(v, ref_ckpt["task"]["ema"][k]), f"EMA {k} differs after resume"
    for a, b in zip(ckpt["optimizer"]["state"].values(), ref_ckpt["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_supervised_ablation_has_no_masking_and_no_teacher(tmp_path):
    from madis_core.training import engine

    cfg = tiny_config(tmp_path / "sup", 2, output={"log_every": 1})
    cfg["task"] = "madis-supervised"
    result = engine.run(cfg)
    assert result.task.teacher is None and result.task.find_unused_parameters
    assert set(result.history[-1]) >= {"loss", "disp", "epe"} and "rec_left" not in result.history[-1]
    first = result.history[0]
    assert first["loss"] == pytest.approx(first["disp"] + first["coarse"])  # no reconstruction, no pseudo label
    assert result.history[0]["lr"] == pytest.approx(1e-3 / 5)  # first warm-up step
    ckpt = torch.load(tmp_path / "sup" / "checkpoint.pt", weights_only=True)
    assert ckpt["task"] == {}


def test_config_overrides_and_errors(tmp_path):
    from madis_core.training.config import ConfigError, apply_overrides, load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "madis-tiny"}, "train": {"steps": 5}}))
    cfg = load_config(path, ["optim.lr=1e-4", "train.crop=[32,64]", "mim.mask_ratio=0.5", "output.dir=x"])
    assert cfg["optim"]["lr"] == 1e-4 and cfg["train"]["crop"] == [32, 64] and cfg["mim"]["mask_ratio"] == 0.5
    assert cfg["optim"]["weight_decay"] == 0.05 and cfg["train"]["steps"] == 5
    listed = apply_overrides({"data": {"sources": [{"type": "synthetic"}]}}, ["data.sources.0.max_disparity=64"])
    assert listed["data"]["sources"][0] == {"type": "synthetic", "max_disparity": 64}
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(listed, ["data.sources.3.root=/x"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path, ["train.stpes=3"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_adamw_groups_and_schedule():
    from madis_core.models import build_model
    from madis_core.training.optim import build_optimizer
    from madis_core.training.schedule import WarmupCosine

    m = build_model("croco-vit-tiny")
    opt = build_optimizer(m, {"lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.95], "eps": 1e-8})
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(p.ndim > 1 and names[id(p)] != "mask_token" for p in decay["params"])
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "mask_token" in no_decay_names and "enc_norm.weight" in no_decay_names and "recon_head.bias" in no_decay_names
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    s = WarmupCosine(100, 10, 0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0) and s(10) == pytest.approx(1.0)
    assert s(55) == pytest.approx(0.1 + 0.9 * 0.5) and s(100) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(10, 100))


def test_resume_with_more_steps_extends_the_lr_schedule():
    """LambdaLR pickles callable lambdas with their state; resuming with a larger
    train.steps must re-lay the cosine, not stay at min_lr for the extension."""
    from madis_core.training.schedule import build_scheduler, load_scheduler_state

    def fresh(total):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        return opt, build_scheduler(opt, total, 0, 1.0, 0.01)

    opt, sched = fresh(10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    state = sched.state_dict()

    opt2, same = fresh(10)
    assert not load_scheduler_state(same, state, 10)
    assert same.lr_lambdas[0].total_steps == 10

    opt3, longer = fresh(40)
    assert load_scheduler_state(longer, state, 40)
    opt3.step()
    longer.step()  # step 11 of 40: well above min_lr again
    expected = 0.01 + 0.99 * 0.5 * (1 + torch.cos(torch.tensor(11 / 40 * torch.pi)).item())
    assert opt3.param_groups[0]["lr"] == pytest.approx(expected)
    assert opt3.param_groups[0]["lr"] > 0.5


def test_shipped_madis_configs_are_valid():
    """Every config/train/madis_*.yaml and croco_vit_*.yaml loads, names a registered model of
    its family and trains on crops its patch grid and inference tiles agree with."""
    from madis_core.models import get_entry
    from madis_core.training.config import load_config, with_defaults

    for family, pattern in (("madis", "madis_*.yaml"), ("croco-vit", "croco_vit_*.yaml")):
        files = sorted((ROOT / "config" / "train").glob(pattern))
        assert len(files) >= 3, pattern
        for path in files:
            cfg = with_defaults(load_config(path))
            assert get_entry(cfg["model"]["name"]).family == family, path
            _check_madis_config(cfg, path)


def _check_madis_config(cfg: dict, path: Path) -> None:
    assert cfg["task"] in ("madis", "madis-supervised"), path
    crop = [int(v) for v in cfg["train"]["crop"]]
    assert crop[0] % 16 == 0 and crop[1] % 16 == 0, path
    tile = (cfg["model"].get("overrides") or {}).get("tile_size")
    assert tile is None or [int(v) for v in tile] == crop, path
    assert str(cfg["train"]["amp"]).lower() in ("auto", "off", "bf16", "fp16", "false", "none"), path
    init = cfg["model"].get("init")
    assert init is None or init.startswith("runs/") or (ROOT / init).is_file(), path
