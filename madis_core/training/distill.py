"""``madis distill CONFIG.yaml``: distil any registry model (MaDis first) into the fast student.

The training engine (``engine.run``) does the loop, resume, DDP, AMP, logging and
validation; this module provides two tasks for it:

- ``distill`` (``DistillationTask``): a frozen teacher (eval mode, no gradients, its
  weights never change) supervises the student with the losses of
  ``distill_losses``: ground truth (where the batch has it), feature distillation at
  chosen points, cost-volume distillation when the teacher has a comparable volume,
  output-distribution distillation over the student's disparity bins (from the
  teacher's own bins, or a Laplacian built from a regressed disparity + confidence),
  and a pixel loss to the teacher's disparity. ``use_ground_truth: false`` trains on
  pairs without ground truth, from the teacher alone.
- ``student-supervised`` (``StudentTask``): the same student with the ground-truth
  loss only (the ablation the distillation is compared with).

Config section ``distill`` (defaults in ``DISTILL_DEFAULTS``)::

    task: distill
    model: {name: student}
    distill:
      teacher: madis-small            # registry name with shipped weights, or a weights file
      teacher_random_init: false      # untrained teacher (smoke tests only)
      feature_points: auto            # or [[student_point, teacher_point], ...]
      weights: {gt: 1.0, feature: 1.0, volume: 5.0, distribution: 0.2, pixel: 0.1}
      weighting: step                 # fixed | step (paper) | uncertainty (learned)
      milestones: [2000, 4000, 8000]  # steps at which feature/distribution weights x0.1

Feature points: a student point is a key of the student's ``features`` (``stem``,
``f4``, ``f8``; both views are distilled); a teacher point is a key of the teacher's
``features`` output (CNN teachers such as a bigger student) or the dotted name of a
teacher submodule whose output is captured with a forward hook (transformer tokens
``B x N x C`` are arranged on the patch grid, and a ``2B`` batch is split into the
two views). ``auto`` picks ``stem``/``f4`` for a student-family teacher (the paper's
early features) and ``f8`` <- ``enc_norm`` (the encoder output) for MaDis. A 1x1
adapter is created on the student side only for points whose channels or
resolution differ; the teacher map is resized to the student's resolution.

The optimised module (``DistillationModule``) holds the student, the adapters and the
learned loss weights, so the engine's ``checkpoint.pt`` stores all of them under
``model`` (keys prefixed ``student.``); the final ``model.safetensors`` is the student
alone and loads with ``StereoEstimator.from_pretrained``.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from madis_core.checkpoint import load_registry_model
from madis_core.models import build_model, meta_of
from madis_core.training.distill_losses import (LossWeighting, cost_volume_distillation_loss,
                                                distribution_distillation_loss, feature_distillation_loss,
                                                ground_truth_loss, laplacian_bin_distribution, make_adapter,
                                                match_resolution, pixel_distillation_loss, tokens_to_map)
from madis_core.training.tasks import TrainingTask, register_task

log = logging.getLogger(__name__)

DISTILL_DEFAULTS: Dict[str, Any] = {
    "teacher": None,                 # registry name (shipped weights) or weights file; None only for student-supervised
    "teacher_random_init": False,    # build the teacher untrained (tests and smoke runs)
    "teacher_overrides": {},         # registry overrides for the teacher (with teacher_random_init)
    "use_ground_truth": True,        # False: pairs without ground truth, teacher losses only
    "gt_loss": "log",                # log | smooth_l1
    "output_weights": [0.5, 0.7, 1.0],        # ground truth on the student's outputs, coarse to fine
    "distribution_weights": [0.5, 1.0],       # distribution loss on the last bin outputs (middle, last)
    "feature_points": "auto",
    "weights": {"gt": 1.0, "feature": 1.0, "volume": 5.0, "distribution": 0.2, "pixel": 0.1},
    "weighting": "step",             # fixed | step | uncertainty
    "milestones": [],                # optimizer steps at which the decayed weights are multiplied by decay_factor
    "decay_factor": 0.1,
    "decay_losses": ["feature", "distribution"],
    "laplacian_min_scale": 0.5,      # floor of the Laplacian target's scale, in bins
    "max_disparity": None,           # ground truth above this is ignored; None: the student's max_disparity
}


def distill_section(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg['distill']`` over the defaults; unknown keys are rejected."""
    given = cfg.get("distill") or {}
    if not isinstance(given, dict):
        raise ValueError("config section 'distill' must be a mapping")
    unknown = sorted(set(given) - set(DISTILL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown key(s) in section 'distill': {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(DISTILL_DEFAULTS))}")
    out = copy.deepcopy(DISTILL_DEFAULTS)
    weights = dict(out["weights"])
    weights.update(given.get("weights") or {})
    out.update(given)
    out["weights"] = weights
    return out


def build_student(cfg: Dict[str, Any], device: torch.device) -> nn.Module:
    """The registry model of ``cfg['model']`` (optionally initialised from ``model.init``), in train mode."""
    from madis_core.checkpoint import read_weights

    mcfg = cfg["model"]
    model = build_model(mcfg["name"], **dict(mcfg.get("overrides") or {}))
    init = mcfg.get("init")
    if init:
        _, _, state = read_weights(init)
        model.load_state_dict(state, strict=True)
    return model.to(device).train()


def _valid_gt(batch: Dict[str, torch.Tensor], max_disparity: float) -> torch.Tensor:
    gt = batch["disparity"]
    return batch["valid"].bool() & (gt > 0) & (gt < max_disparity)


@register_task("student-supervised")
class StudentTask(TrainingTask):
    """The student trained on ground truth alone (the ablation of the distillation)."""

    def __init__(self, cfg: Dict[str, Any], device: torch.device):
        super().__init__(cfg, device)
        self.opts = distill_section(cfg)
        self.student = build_student(cfg, self.device)
        self.max_disparity = float(self.opts["max_disparity"] or meta_of(self.student).max_disparity)

    def trainable_module(self) -> nn.Module:
        return self.student

    def export_model(self) -> nn.Module:
        return self.student

    def gt_loss(self, out: Dict[str, Any], batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = out.get("disparity_list") or [out["disparity"]]
        return ground_truth_loss(outputs, batch["disparity"], _valid_gt(batch, self.max_disparity),
                                 self.opts["output_weights"], self.opts["gt_loss"])

    def training_step(self, module: nn.Module, batch: Dict[str, torch.Tensor], step: int):
        out = module(batch["left"], batch["right"])
        loss = self.gt_loss(out, batch)
        return loss, {"gt": loss.detach()}


# ----------------------------------------------------------------------------- teacher
class FrozenTeacher:
    """A registry model run in eval mode without gradients, plus the feature maps
    captured at the requested points. Deliberately not an ``nn.Module`` attribute of
    anything optimised, so no optimizer, DDP wrapper or checkpoint ever sees it."""

    def __init__(self, spec: str, device: torch.device, random_init: bool = False,
                 overrides: Optional[Dict[str, Any]] = None):
        if not spec:
            raise ValueError("distill.teacher is not set: give a registry name with weights or a weights file")
        model = load_registry_model(str(spec), random_init=random_init, **dict(overrides or {}))
        self.name = model.model_name
        self.model = model.to(device).eval()
        self.model.requires_grad_(False)
        self.extras = "extras" in inspect.signature(self.model.forward).parameters
        self._captured: Dict[str, torch.Tensor] = {}
        self._hooks: List[Any] = []

    def hook(self, names: Sequence[str]) -> None:
        modules = dict(self.model.named_modules())
        for name in names:
            if name not in modules:
                raise ValueError(f"teacher {self.name} has no feature point {name!r}: it is neither a key of its "
                                 f"'features' output nor a submodule (e.g. {', '.join(list(modules)[1:8])}, ...)")

            def capture(_m, _inp, output, name=name):
                self._captured[name] = output[0] if isinstance(output, (tuple, list)) else output

            self._hooks.append(modules[name].register_forward_hook(capture))

    @torch.no_grad()
    def __call__(self, left: torch.Tensor, right: torch.Tensor) -> Dict[str, Any]:
        self.model.eval()
        self._captured = {}
        out = self.model(left, right, extras=True) if self.extras else self.model(left, right)
        out = dict(out)
        out["captured"] = dict(self._captured)
        return out


def _teacher_point(tout: Dict[str, Any], name: str, image_hw: Tuple[int, int], batch: int
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(left map, right map or None) of a teacher feature point, as ``B x C x h x w``."""
    feats = tout.get("features") or {}
    if name in feats:
        right = (tout.get("features_right") or {}).get(name)
        return feats[name], right
    if name not in tout["captured"]:
        raise RuntimeError(f"teacher feature point {name!r} produced no output in this forward pass")
    t = tout["captured"][name]
    if t.dim() == 3:
        t = tokens_to_map(t, image_hw)
    if t.dim() != 4:
        raise ValueError(f"teacher feature point {name!r} has shape {tuple(t.shape)}; expected tokens or maps")
    if t.shape[0] == 2 * batch:
        return t[:batch], t[batch:]
    if t.shape[0] == batch:
        return t, None
    raise ValueError(f"teacher feature point {name!r} has batch {t.shape[0]}, expected {batch} or {2 * batch}")


def _teacher_log_scale(tout: Dict[str, Any]) -> Optional[torch.Tensor]:
    """Laplacian log-scale s (pixels: b = exp(s)) of a MaDis-like teacher, if it has one."""
    from madis_core.training.losses import laplacian_log_scale

    if "conf_logit" in tout:
        return laplacian_log_scale(tout["conf_logit"].float())
    if "confidence" in tout and tout["confidence"] is not None:
        return 3.0 - 6.0 * tout["confidence"].float()  # MaDis: confidence = (3 - s) / 6
    return None


# ----------------------------------------------------------------------------- module
class DistillationModule(nn.Module):
    """What the optimizer updates: the student, the feature/volume adapters and the
    learned loss weights. ``forward`` runs the student and applies the adapters (so
    DDP sees every parameter used inside its forward)."""

    def __init__(self, student: nn.Module, points: Sequence[Tuple[str, str]], adapters: Sequence[nn.Module],
                 volume_adapter: Optional[nn.Module], weighting: LossWeighting):
        super().__init__()
        self.student = student
        self.points = [tuple(p) for p in points]
        self.adapters = nn.ModuleDict({f"p{i}": a for i, a in enumerate(adapters)})
        self.volume_adapter = volume_adapter if volume_adapter is not None else nn.Identity()
        self.weighting = weighting

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> Dict[str, Any]:
        out = dict(self.student(left, right, extras=True))
        adapted = []
        for i, (sp, _) in enumerate(self.points):
            both = torch.cat([out["features"][sp], out["features_right"][sp]], 0)
            adapted.append(self.adapters[f"p{i}"](both))
        out["adapted_features"] = adapted
        if "cost_volume" in out:
            out["adapted_volume"] = self.volume_adapter(out["cost_volume"])
        return out


@register_task("distill")
class DistillationTask(StudentTask):
    """Teacher -> student distillation; see the module docstring."""

    def __init__(self, cfg: Dict[str, Any], device: torch.device):
        super().__init__(cfg, device)
        o = self.opts
        self.teacher = FrozenTeacher(o["teacher"], self.device, bool(o["teacher_random_init"]),
                                     o["teacher_overrides"])
        if not hasattr(self.student, "feature_strides") or "extras" not in inspect.signature(self.student.forward).parameters:
            raise ValueError(f"the distillation student must be a student-family model (features, bins, extras); "
                             f"got {cfg['model']['name']!r}")
        self.points = self._resolve_points(o["feature_points"])
        self.teacher.hook(sorted({tp for _, tp in self.points if not self._teacher_has_feature(tp)}))
        adapters, volume_adapter, active = self._probe_shapes(tuple(cfg["train"]["crop"]))
        weights = {k: float(v) for k, v in o["weights"].items() if k in active and float(v) > 0}
        if not weights:
            raise ValueError(f"no distillation loss is active: applicable terms {active}, weights {o['weights']}")
        self.active = sorted(weights)
        self.module = DistillationModule(self.student, self.points, adapters, volume_adapter,
                                         LossWeighting(weights, o["weighting"], o["milestones"], o["decay_factor"],
                                                       o["decay_losses"])).to(self.device)
        self.module.train()
        log.info("distilling %s -> %s: losses %s, feature points %s", self.teacher.name,
                 cfg["model"]["name"], sorted(weights), self.points)

    # --- set-up ---------------------------------------------------------------------
    def _teacher_has_feature(self, name: str) -> bool:
        return name in getattr(self.teacher.model, "feature_strides", {})

    def _resolve_points(self, spec: Any) -> List[Tuple[str, str]]:
        if spec == "auto":
            if hasattr(self.teacher.model, "feature_strides"):
                return [("stem", "stem"), ("f4", "f4")]
            if "enc_norm" in dict(self.teacher.model.named_modules()):
                return [("f8", "enc_norm")]
            return []
        if spec in (None, "none", []):
            return []
        points = [tuple(p) for p in spec]
        for p in points:
            if len(p) != 2:
                raise ValueError(f"distill.feature_points entries must be [student_point, teacher_point], got {p}")
            if p[0] not in self.student.feature_strides:
                raise ValueError(f"student has no feature point {p[0]!r}; it has {sorted(self.student.feature_strides)}")
        return points

    @torch.no_grad()
    def _probe_shapes(self, crop: Tuple[int, int]):
        """One forward of both networks on a dummy pair: which losses apply and which
        feature points need an adapter (channels or resolution differ)."""
        h, w = crop
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(self.device)
        was_training = self.student.training
        self.student.eval()  # no BatchNorm statistics update from the probe
        try:
            s = self.student(x, x.flip(-1), extras=True)
        finally:
            self.student.train(was_training)
        t = self.teacher(x, x.flip(-1))
        adapters = []
        for sp, tp in self.points:
            smap = s["features"][sp]
            tmap, _ = _teacher_point(t, tp, (h, w), 1)
            adapters.append(make_adapter(smap.shape[1], tmap.shape[1], w / smap.shape[-1], w / tmap.shape[-1]))
        active = []
        o = self.opts
        if o["use_ground_truth"]:
            active.append("gt")
        if self.points:
            active.append("feature")
        volume_adapter = None
        tv, sv = t.get("cost_volume"), s.get("cost_volume")
        if tv is not None and sv is not None and tv.shape[2:] == sv.shape[2:]:
            active.append("volume")
            volume_adapter = make_adapter(sv.shape[1], tv.shape[1], 1.0, 1.0, volume=True)
        elif tv is not None:
            log.warning("teacher cost volume %s is not comparable with the student's %s: no volume distillation",
                        tuple(tv.shape), tuple(sv.shape))
        self.teacher_bins = t.get("logits") is not None and t["logits"].shape == s["logits"].shape
        active += ["distribution", "pixel"]
        return adapters, volume_adapter, active

    # --- engine interface -----------------------------------------------------------
    def trainable_module(self) -> nn.Module:
        return self.module

    def export_model(self) -> nn.Module:
        return self.student

    def state_dict(self) -> Dict[str, Any]:
        return {"teacher": self.teacher.name, "points": [list(p) for p in self.points]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("teacher") != self.teacher.name or [tuple(p) for p in state.get("points", [])] != self.points:
            raise ValueError(f"checkpoint was distilled from teacher {state.get('teacher')!r} with points "
                             f"{state.get('points')}; this run uses {self.teacher.name!r} with {self.points}")

    def teacher_distribution(self, t: Dict[str, Any], like: torch.Tensor) -> torch.Tensor:
        """Target distribution over the student's bins (``like``: student logits ``B x D x h x w``)."""
        if self.teacher_bins:
            return torch.softmax(t["logits"].float(), dim=1)
        bins = like.shape[1]
        bin_size = float(getattr(self.student, "bin_size", self.student.max_disparity / bins))
        down = t["disparity"].shape[-1] // like.shape[-1]
        prob = laplacian_bin_distribution(t["disparity"], _teacher_log_scale(t), bins, bin_size, down,
                                          float(self.opts["laplacian_min_scale"]))
        return prob[..., : like.shape[-2], : like.shape[-1]]

    def compute_losses(self, module: nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        left, right = batch["left"], batch["right"]
        b, _, h, w = left.shape
        t = self.teacher(left, right)
        out = module(left, right)
        losses: Dict[str, torch.Tensor] = {}
        if "gt" in self.active:
            losses["gt"] = self.gt_loss(out, batch)
        if "feature" in self.active:
            terms = []
            for (sp, tp), smap in zip(self.points, out["adapted_features"]):
                tl, tr = _teacher_point(t, tp, (h, w), b)
                sm = smap if tr is not None else smap[:b]
                tm = torch.cat([tl, tr], 0) if tr is not None else tl
                terms.append(feature_distillation_loss(sm, match_resolution(tm, sm)))
            losses["feature"] = torch.stack(terms).mean()
        if "volume" in self.active:
            losses["volume"] = cost_volume_distillation_loss(out["adapted_volume"], t["cost_volume"])
        if "distribution" in self.active:
            logits = out.get("logits_list") or [out["logits"]]
            target = self.teacher_distribution(t, logits[-1])
            ws = list(self.opts["distribution_weights"])[-len(logits):]
            losses["distribution"] = sum(wt * distribution_distillation_loss(lg, target)
                                         for wt, lg in zip(ws, logits[-len(ws):]))
        if "pixel" in self.active:
            losses["pixel"] = pixel_distillation_loss(out["disparity"], t["disparity"])
        return losses

    def training_step(self, module: nn.Module, batch: Dict[str, torch.Tensor], step: int):
        losses = self.compute_losses(module, batch)
        weighting = module.module.weighting if isinstance(module, nn.parallel.DistributedDataParallel) \
            else module.weighting
        total, used = weighting(losses, step)
        logs = {k: v.detach() for k, v in losses.items()}
        logs.update({f"w_{k}": v for k, v in used.items()})
        return total, logs

    @torch.no_grad()
    def preview(self, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        from madis_core.training.previews import disparity_panel

        panels = super().preview(batch)
        t = self.teacher(batch["left"][:1], batch["right"][:1])
        gt = batch["disparity"][0, 0].float()
        vmax = float(max(gt.max().item(), t["disparity"].max().item(), 1.0))
        panels["disparity_teacher"] = disparity_panel(t["disparity"][0, 0].float().cpu().numpy(), vmax)
        return panels


# ----------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from madis_core.training.train import add_arguments as train_arguments

    train_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``madis distill``: ``madis train`` with the config's task defaulting to ``distill``."""
    from madis_core.training.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    cfg.setdefault("task", "distill")
    if cfg["task"] not in ("distill", "student-supervised"):
        raise ValueError(f"madis distill runs the 'distill' or 'student-supervised' task; the config says "
                         f"task: {cfg['task']!r} (use `madis train` for it)")
    distill_section(cfg)  # fail on typos before any network is built
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from madis_core.training import engine

    engine.run(cfg, resume=args.resume)
    return 0


if __name__ == "__main__":  # python -m madis_core.training.distill (what torchrun runs): `madis distill`
    from madis_core.command import run_as_main

    run_as_main("madis distill")
