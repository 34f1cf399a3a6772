"""The MaDis-Stereo training task: masked image modeling with an EMA teacher, or supervised only.

Config sections read here (defaults in ``MADIS_DEFAULTS``)::

    task: madis                  # or madis-supervised (= madis with mim.enabled false)
    model: {name: madis-tiny, overrides: {}, init: null, init_strict: true}
    mim:  {enabled: true, mask_ratio: 0.4, norm_pix: true}
    loss: {disparity: 1.0, recon_left: 1.0, recon_right: 1.0, pseudo: 1.0,
           pseudo_target: gt_then_pseudo,      # or: pseudo
           coarse: [0.5, 0.7]}                 # log loss on the coarse outputs a model returns
    ema:  {enabled: true, momentum: 0.9999, warmup_steps: 0, start_momentum: 0.99,
           scope: auto}                        # encoder | full | auto (encoder where the model has one)

Models: any registry model with a ``mim_patch`` attribute whose forward takes
``mask_left``/``mask_right``/``reconstruct`` and returns ``disparity``, ``conf_logit`` and
``recon_left``/``recon_right``: the MaDis matching family (``madis-*``) and the
CroCo-Stereo ViT (``croco-vit-*``). ``model.init_strict: false`` warm-starts from a
weights file whose tensors fit only part of the model (the CNN student's for ``madis-*``),
and reports what it loaded.

One step of the MIM stage (methods.md section 1):
1. draw independent masks for the left and right view (exactly ``round(ratio*N)``
   patches each; generator seeded by (seed, rank, step) so ``--resume`` is exact);
2. student forward on the masked pair: left disparity + confidence, and the
   reconstruction of the hidden patches of both views (left against right and the
   mirror pass);
3. losses: bounded Laplacian on the ground truth (plus the log loss on a model's
   coarse outputs, weights ``loss.coarse``); per-patch-normalised MSE on the masked
   patches of each view; pseudo-label Laplacian against the EMA teacher's disparity
   on the UNMASKED pair (computed under ``no_grad``), with the ground truth taking
   precedence where it is valid (``pseudo_target: gt_then_pseudo``, the MaDis code) or
   the pseudo label everywhere (``pseudo``); pseudo-labelled pixels are weighted by the
   teacher's confidence (ground-truth pixels by 1);
4. after the optimizer step the teacher follows the student by EMA. ``scope:
   encoder`` (the MaDis code, for the ViT) averages only the encoder and mask token,
   and the student's current decoder/head turn the teacher's features into the
   pseudo label; ``scope: full`` averages and runs the whole network (the matching
   family, whose CNN has no encoder/decoder split).

Supervised mode (``mim.enabled: false``): unmasked forward, Laplacian loss only, no
teacher: the ablation baseline.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, Tuple

import numpy as np
import torch
import torch.nn as nn

from madis_core.models import build_model, get_entry
from madis_core.models.croco_vit import ENCODER_PREFIXES
from madis_core.models.patches import patchify, unpatchify
from madis_core.training.distill_losses import ground_truth_loss
from madis_core.training.losses import bounded_laplacian_loss
from madis_core.training.mim import (EmaTeacher, masked_reconstruction_loss, patch_targets, random_masks,
                                     step_generator)
from madis_core.training.tasks import TrainingTask, register_task

log = logging.getLogger(__name__)

MADIS_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "mim": {"enabled": True, "mask_ratio": 0.4, "norm_pix": True},
    "loss": {"disparity": 1.0, "recon_left": 1.0, "recon_right": 1.0, "pseudo": 1.0,
             "pseudo_target": "gt_then_pseudo", "coarse": [0.5, 0.7]},
    "ema": {"enabled": True, "momentum": 0.9999, "warmup_steps": 0, "start_momentum": 0.99, "scope": "auto"},
}


def merged_section(cfg: Dict[str, Any], name: str) -> Dict[str, Any]:
    given = cfg.get(name) or {}
    defaults = MADIS_DEFAULTS[name]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown key(s) in section {name!r}: {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    out = copy.deepcopy(defaults)
    out.update(given)
    return out


def build_task_model(cfg: Dict[str, Any], device: torch.device) -> nn.Module:
    """The registry model named in ``cfg['model']``; tiles default to the training crop; optional init weights."""
    from madis_core.checkpoint import read_weights

    mcfg = cfg["model"]
    overrides = dict(mcfg.get("overrides") or {})
    if "tile_size" in get_entry(mcfg["name"]).defaults:  # tiled models (croco-vit) tile like the training crop
        overrides.setdefault("tile_size", list(cfg["train"]["crop"]))
    model = build_model(mcfg["name"], **overrides)
    init = mcfg.get("init")
    if init:
        _, _, state = read_weights(init)
        if mcfg.get("init_strict", True):
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or missing:
                raise ValueError(f"model.init {init}: weights do not fit {mcfg['name']} "
                                 f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        else:
            own = model.state_dict()
            fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            if not fits:
                raise ValueError(f"model.init {init}: no tensor fits {mcfg['name']}")
            model.load_state_dict(fits, strict=False)
            new = sorted({k.split('.')[0] for k in own if k not in fits})
            log.info("model.init %s: %d of %d tensors loaded; trained from scratch: %s", init, len(fits),
                     len(own), ", ".join(new))
    return model.to(device).train()


@register_task("madis")
class MadisTask(TrainingTask):
    force_supervised = False

    def __init__(self, cfg: Dict[str, Any], device: torch.device):
        super().__init__(cfg, device)
        self.mim = merged_section(cfg, "mim")
        self.loss_w = merged_section(cfg, "loss")
        self.ema_cfg = merged_section(cfg, "ema")
        if self.force_supervised:
            self.mim["enabled"] = False
        if self.loss_w["pseudo_target"] not in ("gt_then_pseudo", "pseudo"):
            raise ValueError(f"loss.pseudo_target must be gt_then_pseudo or pseudo, got {self.loss_w['pseudo_target']!r}")
        if self.ema_cfg["scope"] not in ("encoder", "full", "auto"):
            raise ValueError(f"ema.scope must be encoder, full or auto, got {self.ema_cfg['scope']!r}")
        self.model = build_task_model(cfg, self.device)
        if not hasattr(self.model, "mim_patch"):
            raise ValueError(f"task 'madis' trains models with masked image modelling (madis-*, croco-vit-*); "
                             f"{cfg['model']['name']!r} is a {type(self.model).__name__}")
        self.patch = int(self.model.mim_patch)
        crop = cfg["train"]["crop"]
        if crop[0] % self.patch or crop[1] % self.patch:
            raise ValueError(f"MIM trains on crops that are multiples of {self.patch}, got train.crop={crop}")
        scope = self.ema_cfg["scope"]
        if scope == "auto":
            scope = "encoder" if hasattr(self.model, "encode_pair") else "full"
        if scope == "encoder" and not hasattr(self.model, "encode_pair"):
            raise ValueError(f"ema.scope encoder needs an encoder/decoder model; use full for {cfg['model']['name']}")
        self.ema_scope = scope
        self.seed = int(cfg["train"]["seed"])
        self.rank = int(torch.distributed.get_rank()) if torch.distributed.is_initialized() else 0
        self.mim_enabled = bool(self.mim["enabled"])
        # unmasked supervised steps leave the reconstruction head and mask token unused
        self.find_unused_parameters = not self.mim_enabled
        self.teacher = None
        if self.mim_enabled and self.ema_cfg["enabled"] and float(self.loss_w["pseudo"]) > 0:
            prefixes = ENCODER_PREFIXES if self.ema_scope == "encoder" else None
            self.teacher = EmaTeacher(self.model, float(self.ema_cfg["momentum"]), prefixes,
                                      int(self.ema_cfg["warmup_steps"]), float(self.ema_cfg["start_momentum"]))
        self.last_momentum = float("nan")

    # --- engine interface ---------------------------------------------------------
    def trainable_module(self) -> nn.Module:
        return self.model

    @torch.no_grad()
    def pseudo_label(self, left: torch.Tensor, right: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The teacher's disparity and confidence for the unmasked pair (no gradient reaches anything)."""
        t = self.teacher.module
        if self.ema_scope == "full":
            out = t(left, right, extras=False) if hasattr(t, "mask_level") else t(left, right)
        else:
            out = self.model.decode_pair(t.encode_pair(t.normalize(left), t.normalize(right)))
        return out["disparity"].detach(), out["confidence"].detach()

    def training_step(self, module: nn.Module, batch: Dict[str, torch.Tensor], step: int
                      ) -> Tuple[torch.Tensor, Dict[str, Any]]:
        left, right = batch["left"], batch["right"]
        gt, valid = batch["disparity"], batch["valid"].bool()
        b, _, h, w = left.shape
        logs: Dict[str, Any] = {}
        if self.mim_enabled:
            n = (h // self.patch) * (w // self.patch)
            gen = step_generator(self.seed, self.rank, step)
            ratio = float(self.mim["mask_ratio"])
            mask_l = random_masks(b, n, ratio, gen, left.device)
            mask_r = random_masks(b, n, ratio, gen, left.device)
            out = module(left, right, mask_left=mask_l, mask_right=mask_r, reconstruct=True)
        else:
            out = module(left, right)
        disp_loss = bounded_laplacian_loss(out["disparity"], out["conf_logit"], gt, valid)
        loss = float(self.loss_w["disparity"]) * disp_loss
        logs["disp"] = disp_loss.detach()
        coarse = list(out.get("disparity_list") or [])[:-1]
        if coarse and self.loss_w["coarse"]:
            c_loss = ground_truth_loss(coarse, gt, valid & (gt > 0), [float(v) for v in self.loss_w["coarse"]], "log")
            loss = loss + c_loss
            logs["coarse"] = c_loss.detach()
        if self.mim_enabled:
            norm_pix = bool(self.mim["norm_pix"])
            rec_l = masked_reconstruction_loss(out["recon_left"], patch_targets(self.model.normalize(left), norm_pix), mask_l)
            rec_r = masked_reconstruction_loss(out["recon_right"], patch_targets(self.model.normalize(right), norm_pix), mask_r)
            loss = loss + float(self.loss_w["recon_left"]) * rec_l + float(self.loss_w["recon_right"]) * rec_r
            logs["rec_left"], logs["rec_right"] = rec_l.detach(), rec_r.detach()
        if self.teacher is not None:
            pseudo, conf = self.pseudo_label(left, right)
            if self.loss_w["pseudo_target"] == "gt_then_pseudo":
                target, weight = torch.where(valid, gt, pseudo), torch.where(valid, torch.ones_like(conf), conf)
            else:
                target, weight = pseudo, conf
            p_loss = bounded_laplacian_loss(out["disparity"], out["conf_logit"], target, weights=weight)
            loss = loss + float(self.loss_w["pseudo"]) * p_loss
            logs["pseudo"] = p_loss.detach()
        with torch.no_grad():
            err = (out["disparity"].float() - gt.float()).abs()
            logs["epe"] = (err * valid).sum() / valid.sum().clamp(min=1)
        return loss, logs

    def after_optimizer_step(self, step: int) -> None:
        if self.teacher is not None:
            self.last_momentum = self.teacher.update(self.model, step)

    def state_dict(self) -> Dict[str, Any]:
        return {"ema": self.teacher.state_dict()} if self.teacher is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.teacher is not None:
            if "ema" not in state:
                raise ValueError("the checkpoint has no EMA teacher but this config trains with one (ema.enabled)")
            self.teacher.load_state_dict(state["ema"])
        elif state.get("ema") is not None:
            raise ValueError("the checkpoint holds an EMA teacher but this config trains without one")

    @torch.no_grad()
    def preview(self, batch: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
        from madis_core.training.previews import image_panel

        images = super().preview(batch)
        if not self.mim_enabled:
            return images
        left, right = batch["left"][:1], batch["right"][:1]
        h, w = left.shape[-2:]
        gh, gw = h // self.patch, w // self.patch
        gen = step_generator(self.seed, self.rank, 0, stream=1)
        mask_l = random_masks(1, gh * gw, float(self.mim["mask_ratio"]), gen, left.device)
        mask_r = random_masks(1, gh * gw, float(self.mim["mask_ratio"]), gen, left.device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(left, right, mask_left=mask_l, mask_right=mask_r, reconstruct=True)
        finally:
            self.model.train(was_training)
        # undo the per-patch normalisation with the true patch statistics, then the ImageNet one
        raw = patchify(self.model.normalize(left).float(), self.patch)
        mean, std = raw.mean(-1, keepdim=True), (raw.var(-1, keepdim=True) + 1e-6).sqrt()
        pred = out["recon_left"].float()
        pred = pred * std + mean if self.mim["norm_pix"] else pred
        mixed = torch.where(mask_l[..., None], pred, raw)
        img = unpatchify(mixed, gh, gw, self.patch) * self.model.std + self.model.mean
        masked = torch.where(mask_l[..., None], torch.zeros_like(raw), raw)
        images["mim_left_masked"] = image_panel((unpatchify(masked, gh, gw, self.patch) * self.model.std
                                                 + self.model.mean)[0])
        images["mim_left_reconstructed"] = image_panel(img[0])
        return images


@register_task("madis-supervised")
class MadisSupervisedTask(MadisTask):
    """Ablation: no masking, no teacher; the disparity loss alone."""

    force_supervised = True
