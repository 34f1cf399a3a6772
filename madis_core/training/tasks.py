"""The interface between the one training engine and what it trains (a "task").

The engine (``madis_core.training.engine.run``) owns everything that is the same for
every model and stage: config, device, DDP, AdamW + warm-up/cosine, gradient
clipping, AMP, the data stream, checkpoints and ``--resume``, TensorBoard, the
progress line, validation and the final weights. A task owns what differs: which
networks exist, what one training step computes, and any state besides the
optimised parameters (an EMA teacher, a frozen teacher's path, a loss schedule).

Writing a task (MaDis MIM is ``madis_core.training.madis_task.MadisTask``; the
student distillation implements ``DistillationTask`` the same way)::

    from madis_core.training.tasks import TrainingTask, register_task

    @register_task("distill")
    class DistillationTask(TrainingTask):
        def __init__(self, cfg: dict, device: torch.device):
            super().__init__(cfg, device)
            self.student = build_model(cfg["model"]["name"], **cfg["model"].get("overrides", {})).to(device)
            self.teacher = ...frozen, eval(), requires_grad_(False)...

        def trainable_module(self):            # optimised, DDP-wrapped, checkpointed as "model"
            return self.student

        def training_step(self, module, batch, step):
            out = module(batch["left"], batch["right"])     # call THROUGH `module` (DDP hooks)
            loss = ...
            return loss, {"gt": gt_loss.detach(), "feat": feat_loss.detach()}

    # engine: madis_core.training.engine.run(cfg, resume=False)  picks cfg["task"]
    #         or run(cfg, task_factory=DistillationTask)

Contract, method by method (the engine calls them in this order):

``__init__(cfg, device)``
    ``cfg`` is the whole merged config dict (YAML + ``key.sub=value`` overrides);
    read your own section (e.g. ``cfg["distill"]``) and ``cfg["model"]``. Build
    every network on ``device`` here. Seed-dependent init is reproducible: the
    engine seeds torch/numpy/random with ``cfg["train"]["seed"]`` before calling
    (the same seed on every rank, so DDP replicas start identical).
``trainable_module() -> nn.Module``
    The one module whose parameters the optimizer updates. The engine moves it to
    the device, wraps it in ``DistributedDataParallel`` when ``WORLD_SIZE > 1`` and
    builds AdamW over its parameters with ``requires_grad`` (no weight decay on
    1-d tensors: norms, biases, tokens; see ``optim.py``). Its ``state_dict`` is
    saved as the checkpoint's ``"model"``.
``find_unused_parameters: bool`` (class attribute, default False)
    Set True when a forward leaves some trainable parameters unused (DDP needs it).
``training_step(module, batch, step) -> (loss, logs)``
    ``module`` is ``trainable_module()`` or its DDP wrapper: run the trainable
    forward through it so gradients are all-reduced. ``batch`` is a dict from
    ``madis_core.data.build_train_loader`` already on the device: ``left``/``right``
    (B x 3 x H x W float in [0, 1]), ``disparity`` (B x 1 x H x W, 0 where invalid),
    ``valid`` (B x 1 x H x W bool). ``step`` is the 0-based optimizer step being
    computed. Return the scalar loss to backpropagate (the engine does backward,
    AMP scaling, clipping, optimizer and scheduler steps) and a dict of detached
    scalars (tensors or floats) that are logged to TensorBoard and the progress line.
    Runs under ``torch.autocast`` when AMP is on. Randomness inside a step (masks)
    should come from a generator seeded by (seed, rank, step) so that ``--resume``
    is exact without saving generator state.
``after_optimizer_step(step)``
    Called after every optimizer step (skipped steps under fp16 included); update an
    EMA teacher, decay loss weights, etc.
``state_dict() -> dict`` / ``load_state_dict(state)``
    Extra state saved in the checkpoint next to the model (e.g. ``{"ema": ...}``).
    Tensors, numbers, strings, lists and dicts only: checkpoints are read with
    ``torch.load(weights_only=True)``.
``export_model() -> nn.Module``
    The network written as the final weights with ``madis_core.checkpoint.save_weights``
    (it must carry ``model_name``/``model_config``, i.e. come from ``build_model``).
    Default: ``trainable_module()``.
``eval_model() -> nn.Module``
    The network validated every ``validation.every`` steps (in eval mode, through
    ``StereoEstimator``/``madis_core.evaluate.evaluate``). Default: ``export_model()``.
``preview(batch) -> dict[str, np.ndarray]``
    Optional: H x W x 3 uint8 images for TensorBoard previews. The default shows the
    left image, the ground truth and the prediction of ``eval_model()`` on the first
    sample. Called on rank 0 only, under ``torch.no_grad``.

Tasks are looked up by the config's ``task`` key through ``get_task(name)``;
``register_task(name)`` registers a class (``madis_core.registry.Registry``: a name
taken by another class is refused). Importing ``madis_core.training`` registers the
built-in tasks: ``madis``, ``madis-supervised`` (``madis_task``), ``distill`` and
``student-supervised`` (``distill``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import numpy as np
import torch
import torch.nn as nn

from madis_core.registry import Registry

TASKS: Registry[Callable[..., "TrainingTask"]] = Registry("training task")


def register_task(name: str):
    """Class decorator: make ``cfg["task"] == name`` build this task."""
    return TASKS.decorator(name)


def get_task(name: str) -> Callable[..., "TrainingTask"]:
    return TASKS.get(name)


class TrainingTask:
    """Base class; see the module docstring for the contract the engine relies on."""

    find_unused_parameters: bool = False

    def __init__(self, cfg: Dict[str, Any], device: torch.device):
        self.cfg = cfg
        self.device = torch.device(device)

    def trainable_module(self) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError

    def training_step(self, module: nn.Module, batch: Dict[str, torch.Tensor], step: int
                      ) -> Tuple[torch.Tensor, Dict[str, Any]]:  # pragma: no cover - interface
        raise NotImplementedError

    def after_optimizer_step(self, step: int) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no extra state but the checkpoint holds keys {sorted(state)}")

    def export_model(self) -> nn.Module:
        return self.trainable_module()

    def eval_model(self) -> nn.Module:
        return self.export_model()

    @torch.no_grad()
    def preview(self, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        """Left image, ground truth and prediction of the first sample, as uint8 RGB."""
        from madis_core.training.previews import disparity_panel, image_panel

        net = self.eval_model()
        was_training = net.training
        net.eval()
        try:
            left, right = batch["left"][:1], batch["right"][:1]
            out = net(left, right)
        finally:
            net.train(was_training)
        gt = batch["disparity"][0, 0].float().cpu().numpy()
        valid = batch["valid"][0, 0].cpu().numpy()
        vmax = float(max(gt[valid].max() if valid.any() else 1.0, 1.0))
        return {
            "left": image_panel(batch["left"][0]),
            "disparity_gt": disparity_panel(np.where(valid, gt, np.nan), vmax),
            "disparity_pred": disparity_panel(out["disparity"][0, 0].float().cpu().numpy(), vmax),
        }
