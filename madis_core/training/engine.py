"""The one training engine every model and stage uses (MaDis MIM, supervised, distillation).

    from madis_core.training import engine
    from madis_core.training.config import load_config
    result = engine.run(load_config("config/train/madis_tiny_cpu.yaml", ["train.steps=50"]))
    result = engine.run(cfg, task_factory=DistillationTask, resume=True)

What it does, in order: join the torchrun process group if there is one
(``distributed.py``), seed every RNG with ``train.seed``, build the task
(``tasks.py`` describes the contract), wrap its trainable module in DDP, build AdamW
(no decay on norms/biases) with warm-up + cosine, open the data stream
(``madis_core.data.build_train_loader``), restore ``output.dir/checkpoint.pt`` when
``resume`` is set, then loop: batch -> ``task.training_step`` under autocast ->
backward (GradScaler for fp16) -> clip -> optimizer/scheduler step ->
``task.after_optimizer_step``. Rank 0 prints a progress line, writes TensorBoard
scalars/images, validates with ``madis_core.evaluate.evaluate`` and writes the
checkpoint atomically (temporary file + ``os.replace``). At the end the exported
model is written with ``madis_core.checkpoint.save_weights`` to
``output.dir/model.safetensors``.

Bit-for-bit resume: the checkpoint holds the model, optimizer, scheduler, scaler,
task state (e.g. EMA teacher), every rank's RNG states and data-stream state, and
the step. Randomness inside a step comes from generators seeded by the step, and
validation/previews run with the RNG state saved and restored around them, so a
resumed run computes exactly the same updates as an uninterrupted one (same
hardware, thread count and world size).
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
import torch.nn as nn

from madis_core.training import distributed as dist_utils
from madis_core.training.config import dump_config, with_defaults
from madis_core.training.optim import build_optimizer
from madis_core.training.schedule import build_scheduler, load_scheduler_state
from madis_core.training.tasks import TrainingTask, get_task

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_VERSION = 1


@dataclass
class TrainResult:
    step: int
    output_dir: Path
    weights: Optional[Path]
    task: TrainingTask
    logs: Dict[str, float] = field(default_factory=dict)
    validation: Optional[Dict[str, float]] = None
    history: List[Dict[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> Dict[str, Any]:
    """All global RNG states as weights-only-loadable objects."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def preserved_rng(device: torch.device):
    """Run side work (validation, previews) without disturbing the training RNG stream."""
    saved = rng_state(device)
    try:
        yield
    finally:
        set_rng_state(saved, device)


# ----------------------------------------------------------------------------- data
class DataStream:
    """Wraps ``madis_core.data.build_train_loader``: device transfer, checks, resumable position.

    If the loader object offers ``state_dict()``/``load_state_dict()`` those carry the
    position; otherwise the stream counts batches and a resume rebuilds the loader
    and skips that many (the loader is deterministic for a given seed and rank).
    """

    REQUIRED = ("left", "right", "disparity", "valid")

    def __init__(self, cfg: Dict[str, Any], info: dist_utils.DistInfo):
        self.cfg, self.info = cfg, info
        self._build()

    def _build(self) -> None:
        from madis_core.data import build_train_loader

        t = self.cfg["train"]
        self.loader = build_train_loader(self.cfg.get("data") or {}, batch_size=int(t["batch_size"]),
                                         crop=tuple(t["crop"]), seed=int(t["seed"]), rank=self.info.rank,
                                         world_size=self.info.world_size, device=str(self.info.device))
        self.iterator: Iterator = iter(self.loader)
        self.consumed = 0

    def next(self) -> Dict[str, torch.Tensor]:
        try:
            batch = next(self.iterator)
        except StopIteration:
            raise RuntimeError("the training data stream ended; build_train_loader should be infinite") from None
        self.consumed += 1
        missing = [k for k in self.REQUIRED if k not in batch]
        if missing:
            raise RuntimeError(f"training batch lacks {missing}; got keys {sorted(batch)}")
        dev = self.info.device
        return {k: (v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    def state_dict(self) -> Dict[str, Any]:
        if hasattr(self.loader, "state_dict"):
            return {"loader": self.loader.state_dict(), "consumed": self.consumed}
        return {"consumed": self.consumed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "loader" in state and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["loader"])
            self.iterator = iter(self.loader)
            self.consumed = int(state["consumed"])
            return
        self._build()
        for _ in range(int(state["consumed"])):
            next(self.iterator)
        self.consumed = int(state["consumed"])

    def close(self) -> None:
        close = getattr(self.loader, "close", None)
        if close is not None:
            close()


# ----------------------------------------------------------------------------- AMP
def resolve_amp(setting: str, device: torch.device) -> Optional[torch.dtype]:
    """``auto``: bf16 on CUDA when supported, else fp16; always off on the CPU."""
    setting = str(setting).lower()
    if setting not in ("auto", "off", "bf16", "fp16", "false", "none"):
        raise ValueError(f"train.amp must be auto, off, bf16 or fp16, got {setting!r}")
    if setting in ("off", "false", "none"):
        return None
    if device.type != "cuda":
        if setting != "auto":
            log.warning("train.amp=%s needs CUDA; training in fp32 on %s", setting, device)
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


# ----------------------------------------------------------------------------- checkpoints
def write_atomically(payload: Dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> Dict[str, Any]:
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"cannot read training checkpoint {path}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION or "step" not in ckpt:
        raise RuntimeError(f"{path} is not a madis training checkpoint (version {CHECKPOINT_VERSION})")
    return ckpt


def _scalar(v: Any) -> float:
    return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------- validation
def validate(task: TrainingTask, cfg: Dict[str, Any], device: torch.device, cache: Dict[str, Any]) -> Optional[Dict[str, float]]:
    """Metrics of ``task.eval_model()`` on ``validation.dataset`` (the ``madis evaluate`` metrics)."""
    spec = cfg["validation"]["dataset"]
    if not spec:
        return None
    from madis_core.backends.torch_backend import TorchBackend
    from madis_core.estimator import StereoEstimator
    from madis_core.evaluate import evaluate

    if "samples" not in cache:
        from madis_core.data import build_dataset

        cache["samples"] = build_dataset(spec)
    net = task.eval_model()
    was_training = net.training
    try:
        est = StereoEstimator(TorchBackend(net, device=str(device)))
        with torch.no_grad():
            return evaluate(est, cache["samples"], max_samples=cfg["validation"]["max_samples"], warmup=False)
    finally:
        net.train(was_training)


# ----------------------------------------------------------------------------- main loop
def run(cfg: Dict[str, Any], task_factory: Optional[Callable[..., TrainingTask]] = None,
        resume: bool = False) -> TrainResult:
    """Train as ``cfg`` says; returns the final step, output folder, weights path and task."""
    cfg = with_defaults(cfg)
    tcfg, ocfg, vcfg = cfg["train"], cfg["output"], cfg["validation"]
    info = dist_utils.setup(tcfg["device"])
    device = info.device
    try:
        if device.type == "cpu" and int(tcfg["threads"]) > 0:
            torch.set_num_threads(int(tcfg["threads"]))
        out_dir = Path(ocfg["dir"])
        ckpt_path = out_dir / CHECKPOINT_NAME
        total = int(tcfg["steps"])
        seed = int(tcfg["seed"])

        seed_everything(seed)  # identical on every rank: replicas start identical
        factory = task_factory or get_task(cfg.get("task", "madis"))
        task = factory(cfg, device)
        module = task.trainable_module().to(device)
        module.train()
        seed_everything(seed + 7919 * info.rank)

        optimizer = build_optimizer(module, cfg["optim"])
        scheduler = build_scheduler(optimizer, total, int(cfg["optim"]["warmup_steps"]), float(cfg["optim"]["lr"]),
                                    float(cfg["optim"]["min_lr"]))
        amp_dtype = resolve_amp(tcfg["amp"], device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        wrapped: nn.Module = module
        if info.distributed:
            wrapped = nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=task.find_unused_parameters)
        data = DataStream(cfg, info)

        start = 0
        if resume:
            if ckpt_path.is_file():
                ckpt = read_checkpoint(ckpt_path)
                if int(ckpt["world_size"]) != info.world_size:
                    raise RuntimeError(f"{ckpt_path} was written by {ckpt['world_size']} processes; resuming with "
                                       f"{info.world_size} cannot continue the same data streams")
                module.load_state_dict(ckpt["model"])
                optimizer.load_state_dict(ckpt["optimizer"])
                if load_scheduler_state(scheduler, ckpt["scheduler"], total) and info.is_main:
                    print(f"train.steps changed to {total}: the lr schedule continues over the new length", flush=True)
                scaler.load_state_dict(ckpt["scaler"])
                task.load_state_dict(ckpt["task"])
                data.load_state_dict(ckpt["data"][info.rank])
                set_rng_state(ckpt["rng"][info.rank], device)
                start = int(ckpt["step"])
                if info.is_main:
                    print(f"resumed from {ckpt_path} at step {start}/{total}", flush=True)
            elif info.is_main:
                print(f"--resume: no checkpoint at {ckpt_path}; starting from step 0", flush=True)

        writer = None
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.yaml").write_text(dump_config(cfg))
            if ocfg["tensorboard"]:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(out_dir / "tb"), purge_step=start if start else None)
            name = task.export_model().model_name
            n_params = sum(p.numel() for p in module.parameters() if p.requires_grad)
            print(f"training {name} ({n_params / 1e6:.2f} M trainable) task={cfg.get('task', 'madis')} "
                  f"on {info.world_size} x {device} amp={amp_dtype} steps {start}->{total} "
                  f"batch {tcfg['batch_size']}x{info.world_size} crop {tcfg['crop']} -> {out_dir}", flush=True)

        def save_checkpoint(step: int) -> None:
            rngs = dist_utils.all_gather_objects(info, rng_state(device))
            streams = dist_utils.all_gather_objects(info, data.state_dict())
            if info.is_main:
                export = task.export_model()
                write_atomically({
                    "version": CHECKPOINT_VERSION, "step": step, "world_size": info.world_size,
                    "model_name": export.model_name, "model_config": export.model_config,
                    "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "task": task.state_dict(),
                    "rng": rngs, "data": streams, "config": cfg,
                }, ckpt_path)
            dist_utils.barrier(info)

        val_cache: Dict[str, Any] = {}
        history: List[Dict[str, float]] = []
        window: Dict[str, float] = {}
        window_n, window_t0, window_samples = 0, time.perf_counter(), 0
        last_logs: Dict[str, float] = {}
        val_metrics = None
        log_every, ckpt_every = int(ocfg["log_every"]), int(ocfg["checkpoint_every"])
        img_every, val_every = int(ocfg["image_every"]), int(vcfg["every"])
        params = [p for p in module.parameters() if p.requires_grad]
        clip = float(cfg["optim"]["grad_clip"])
        autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext())

        for step in range(start, total):
            batch = data.next()
            with autocast:
                loss, logs = task.training_step(wrapped, batch, step)
            if not torch.isfinite(loss.detach()):
                raise FloatingPointError(f"non-finite loss {float(loss)} at step {step} "
                                         f"({ {k: _scalar(v) for k, v in logs.items()} })")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else \
                torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            lr_used = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            task.after_optimizer_step(step)
            done = step + 1

            scalars = {"loss": _scalar(loss), "grad_norm": _scalar(grad_norm)}
            scalars.update({k: _scalar(v) for k, v in logs.items()})
            for k, v in scalars.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            window_samples += int(batch["left"].shape[0]) * info.world_size

            if done % log_every == 0 or done == total:
                keys = sorted(window)
                avg = dist_utils.mean_over_ranks(info, torch.tensor([window[k] / window_n for k in keys],
                                                                    dtype=torch.float64, device=device))
                last_logs = dict(zip(keys, avg.cpu().tolist()))
                elapsed = time.perf_counter() - window_t0
                rate = window_samples / max(elapsed, 1e-9)
                lr = lr_used
                last_logs.update({"lr": lr, "samples_per_s": rate, "step": done})
                history.append(dict(last_logs))
                if info.is_main:
                    eta = (total - done) * elapsed / max(window_n, 1)
                    parts = " ".join(f"{k} {last_logs[k]:.4g}" for k in keys if k not in ("loss",))
                    print(f"step {done}/{total} [{100.0 * done / total:5.1f}%] loss {last_logs['loss']:.4f} | {parts} | "
                          f"lr {lr:.3g} | {rate:.1f} samples/s | eta {_fmt_eta(eta)}", flush=True)
                    if writer is not None:
                        for k in keys:
                            writer.add_scalar(f"train/{k}", last_logs[k], done)
                        writer.add_scalar("train/lr", lr, done)
                        writer.add_scalar("train/samples_per_s", rate, done)
                window, window_n, window_samples, window_t0 = {}, 0, 0, time.perf_counter()

            if writer is not None and img_every > 0 and (done % img_every == 0 or done == total):
                with preserved_rng(device), torch.no_grad():
                    for tag, img in task.preview(batch).items():
                        writer.add_image(f"preview/{tag}", img, done, dataformats="HWC")

            if val_every > 0 and done % val_every == 0 and done != total:
                if info.is_main:
                    with preserved_rng(device):
                        val_metrics = validate(task, cfg, device, val_cache)
                    _report_validation(val_metrics, done, writer)
                dist_utils.barrier(info)

            if ckpt_every > 0 and done % ckpt_every == 0 and done != total:
                save_checkpoint(done)

        final_step = max(start, total)
        save_checkpoint(final_step)
        weights = None
        if info.is_main:
            from madis_core.checkpoint import save_weights

            weights = save_weights(task.export_model(), out_dir / WEIGHTS_NAME,
                                   extra_metadata={"step": str(final_step), "task": str(cfg.get("task", "madis"))})
            with preserved_rng(device):
                val_metrics = validate(task, cfg, device, val_cache)
            _report_validation(val_metrics, final_step, writer)
            print(f"wrote {weights}", flush=True)
            if writer is not None:
                writer.close()
        data.close()
        dist_utils.barrier(info)
        return TrainResult(final_step, out_dir, weights, task, last_logs, val_metrics, history)
    finally:
        dist_utils.teardown(info)


def _report_validation(metrics: Optional[Dict[str, float]], step: int, writer) -> None:
    if not metrics:
        return
    shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v))
    print(f"validation @ {step}: {shown}", flush=True)
    if writer is not None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                writer.add_scalar(f"val/{k}", v, step)
