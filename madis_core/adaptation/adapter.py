"""The adaptation step: fine-tune a stereo network on unlabeled pairs of a new camera.

One step on a batch of unlabeled pairs (``B x 3 x H x W`` in [0, 1]):

1. the EMA teacher (eval mode, no gradient) predicts the left disparity of the pair
   and, on the mirrored pair, the right disparity; a left-right check of the two
   marks the occluded / inconsistent pixels;
2. the model predicts the pair; with ``mask_ratio`` > 0 it sees random 16x16 patches
   hidden in each view (MaDis: ``mask_left``/``mask_right``; the CNN students have
   no mask input, so the hidden patches of the *image* are filled with the view's
   mean colour);
3. losses on its disparity (``losses.py``): photometric (SSIM + L1 of the warped right
   view against the left over the left-right-consistent pixels), edge-aware
   smoothness, pseudo labels: the teacher's disparity weighted by its confidence,
   at its inconsistent (occluded) pixels the background next to them, and where SGBM
   has a confident match and corroborates the network on the pair, SGBM's disparity
   (``proxy.py``); the drift guard: L2 distance to the starting weights and,
   optionally, a share of synthetic batches with their (synthetic) ground truth;
4. Adam step, then the teacher follows the model by EMA.

Defaults are the measured best for the student on Motorcycle (README, "Adaptation"):
without proxy labels bad-2 fell to 15.3-16.0 %, with them (and the occlusion fill)
to 11.8-12.2 %; hiding 25 % of the image patches (MaDis masking with filled
patches) made it worse (15.1 % after 300 steps, synthetic-test bad-2 36.5 -> 57.4 %),
hence ``mask_ratio`` 0 by default: the MaDis scheme runs as its EMA teacher's
confidence-weighted pseudo labels on the unmasked pair.

BatchNorm: ``bn="frozen"`` (default) keeps every BatchNorm on its running statistics
(its affine parameters still learn): statistics from one or a handful of real pairs
would replace those of thousands of synthetic ones. Measured on Motorcycle, 300
steps: frozen 11.80 %, train-mode statistics 12.85 % (synthetic-test +12.9 %).

Why a loop of its own rather than a task for ``training.engine``: the engine is built
around a ground-truth data stream, checkpoints, validation on a labelled real pair
and cosine schedules over thousands of steps; adaptation runs for minutes on a few
unlabeled pairs, must never touch ground truth, and the same ``step`` serves the
node's online thread, one pair at a time.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from madis_core.adaptation import losses as L
from madis_core.adaptation.sources import UnlabeledPair
from madis_core.training.mim import EmaTeacher, random_masks

MASK_PATCH = 16


@dataclass
class AdaptConfig:
    """Every knob of an adaptation run (saved in the card)."""

    steps: int = 300                  # optimizer steps (a time budget may stop earlier)
    time_budget_s: float = 0.0        # stop after this many seconds of adaptation (0: no limit)
    cpu_budget_s: float = 0.0         # stop after this many CPU-seconds of the process (0: no limit)
    lr: float = 2e-4                  # Adam learning rate
    batch: int = 1                    # pairs per step
    crop: Optional[Tuple[int, int]] = None  # random (H, W) crop per pair; None: whole images
    photometric: float = 1.0          # weight of the SSIM + L1 reconstruction loss
    ssim_alpha: float = 0.85          # SSIM share of the photometric error
    photometric_scales: int = 1       # also at 1/2, 1/4 ... resolution (averaged images: robust to sensor noise)
    photometric_blur: float = 0.0     # Gaussian sigma (px) both views get before the comparison (sensor noise)
    photometric_kind: str = "ssim"    # ssim (SSIM + L1) | census (soft census: ignores gain/gamma differences)
    smoothness: float = 0.2           # weight of the edge-aware smoothness
    pseudo: float = 0.02              # weight of the EMA teacher's pseudo labels (confidence-weighted, per px)
    occluded: float = 0.3             # weight of the pseudo labels at the teacher's left-right-inconsistent pixels
    fill_occluded: bool = True        # there, the label is the background next to them (fill_from_background)
    proxy: float = 0.3                # weight of SGBM's confident disparities as labels where it has them (proxy.py)
    proxy_mode: str = "3way"          # SGBM mode for them: 3way (multi-threaded) | sgbm (one thread) | hh
    proxy_min_agreement: float = 0.8  # use a pair's SGBM labels only if >= this share agrees with the model (2 px)
    mask_ratio: float = 0.0           # share of 16x16 patches hidden per view (MaDis MIM; see the docstring)
    ema_momentum: float = 0.99        # teacher <- m * teacher + (1 - m) * model after each step
    drift: float = 0.02               # weight of the L2 distance to the starting weights (L2-SP)
    synthetic_every: int = 0          # every N-th step adds a synthetic batch with its ground truth (0: never)
    synthetic_size: Tuple[int, int] = (256, 512)  # synthetic batch size (H, W)
    occlusion: str = "lr"             # occluded = lr: every left-right-inconsistent pixel | geometric: those whose
                                      # background lands on a nearer surface (losses.occlusion_mask) | automask |
                                      # both (lr + automask) | none
    lr_tolerance: float = 1.0         # left-right check tolerance in px (or 5 % of the disparity)
    bn: str = "frozen"                # frozen | train: BatchNorm statistics during adaptation
    flip_augment: bool = True         # also train on the mirrored pair (its disparity is the right view's)
    seed: int = 0                     # masks, crops and flips

    def __post_init__(self):
        if self.bn not in ("frozen", "train"):
            raise ValueError(f"bn must be 'frozen' or 'train', got {self.bn!r}")
        if self.photometric_kind not in ("ssim", "census"):
            raise ValueError(f"photometric_kind must be ssim or census, got {self.photometric_kind!r}")
        if self.occlusion not in ("lr", "geometric", "automask", "both", "none"):
            raise ValueError(f"occlusion must be lr, geometric, automask, both or none, got {self.occlusion!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.steps < 0 or self.batch < 1:
            raise ValueError(f"steps must be >= 0 and batch >= 1, got {self.steps}, {self.batch}")
        if self.crop is not None:
            self.crop = (int(self.crop[0]), int(self.crop[1]))

    def as_dict(self) -> Dict:
        return asdict(self)


def pair_to_tensors(pair: UnlabeledPair, device: torch.device | str = "cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8/uint16 H x W x 3 numpy -> two 1 x 3 x H x W float tensors in [0, 1]."""
    from madis_core.backends.base import to_float_rgb

    left = torch.from_numpy(to_float_rgb(pair.left)).permute(2, 0, 1)[None].to(device)
    right = torch.from_numpy(to_float_rgb(pair.right)).permute(2, 0, 1)[None].to(device)
    return left.contiguous(), right.contiguous()


def _pad16(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ph, pw = (-h) % MASK_PATCH, (-w) % MASK_PATCH
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x


def fill_patches(img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hide the masked 16x16 patches (``mask`` B x N over the patch grid) of ``img`` by its
    mean colour: masked image modelling for a network without a mask input."""
    b, _, h, w = img.shape
    grid = mask.view(b, 1, h // MASK_PATCH, w // MASK_PATCH).to(img.dtype)
    full = grid.repeat_interleave(MASK_PATCH, 2).repeat_interleave(MASK_PATCH, 3)
    mean = img.mean(dim=(2, 3), keepdim=True)
    return img * (1 - full) + mean * full


def forward_padded(net: nn.Module, left: torch.Tensor, right: torch.Tensor, mask_l: Optional[torch.Tensor] = None,
                   mask_r: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """``net`` on inputs padded to multiples of 16 (edge replication), outputs cropped back.
    Patch masks (B x N over the padded 16x16 grid) go into a MaDis stem, or fill the
    image patches of a network without a mask input."""
    h, w = left.shape[-2:]
    lp, rp = _pad16(left), _pad16(right)
    if mask_l is not None and hasattr(net, "mim_patch"):
        out = net(lp, rp, mask_left=mask_l, mask_right=mask_r, extras=False)
    else:
        if mask_l is not None:
            lp, rp = fill_patches(lp, mask_l), fill_patches(rp, mask_r)
        out = net(lp, rp, extras=False)
    return {k: v[..., :h, :w] for k, v in out.items() if isinstance(v, torch.Tensor) and v.dim() == 4}


def freeze_batchnorm(model: nn.Module) -> None:
    """Running statistics stay fixed (eval-mode BatchNorm) while the rest trains."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Adapter:
    """Adapts ``model`` in place; see the module docstring. Not thread-safe: one caller."""

    def __init__(self, model: nn.Module,            # registry model with weights (student, student-lite, madis-*)
                 config: AdaptConfig,                # losses, weights, schedule
                 device: torch.device | str = "cpu"):  # where the model and the data live
        self.config = config
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model.requires_grad_(True)
        self.anchor = L.snapshot_parameters(self.model)
        use_teacher = config.pseudo > 0 or config.occluded > 0 or config.proxy > 0
        self.teacher = EmaTeacher(self.model, momentum=config.ema_momentum) if use_teacher else None
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=config.lr)
        self.rng = np.random.default_rng(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.steps_done = 0
        self.seconds = 0.0      # wall time of adaptation (label preparation and steps)
        self.cpu_seconds = 0.0  # the process's CPU time meanwhile (all its threads; offline runs only)
        self.history: List[Dict[str, float]] = []
        self.proxy_agreement: List[float] = []  # per prepared pair: SGBM vs the model's disparity (proxy.py)
        self._synthetic = None

    # --- model modes ------------------------------------------------------------------
    def _train_mode(self) -> None:
        self.model.train()
        if self.config.bn == "frozen":
            freeze_batchnorm(self.model)

    @torch.no_grad()
    def _teacher_targets(self, left: torch.Tensor, right: torch.Tensor):
        net = self.teacher.module if self.teacher is not None else self.model
        was = net.training
        net.eval()
        try:
            out = forward_padded(net, left, right)
            out_r = forward_padded(net, *L.flip_pair(left, right))
        finally:
            net.train(was)
        d_left = out["disparity"].float()
        d_right = out_r["disparity"].float().flip(-1)
        conf = out.get("confidence", torch.ones_like(d_left)).float()
        consistent = L.lr_consistency_mask(d_left, d_right, self.config.lr_tolerance)
        if self.config.occlusion == "geometric":
            occluded, background = L.occlusion_mask(d_left, d_right, consistent)
        else:  # every inconsistent pixel counts as occluded
            occluded, background = ~consistent, L.fill_from_background(d_left, consistent)
        return d_left, conf, consistent, occluded, background

    # --- data -------------------------------------------------------------------------
    def prepare(self, pairs: Sequence[UnlabeledPair]) -> List[Tuple[torch.Tensor, ...]]:
        """Pairs as tensors ``(left, right[, proxy, proxy of the mirrored pair])``."""
        out = []
        for pair in pairs:
            left, right = pair_to_tensors(pair, self.device)
            if self.config.proxy > 0:
                from madis_core.adaptation.proxy import proxy_agreement, proxy_pair, search_range

                with torch.no_grad():
                    was = self.model.training
                    guess = forward_padded(self.model.eval(), left, right)["disparity"]
                    self.model.train(was)
                top = search_range(guess, float(getattr(self.model, "max_disparity", 192)))
                proxy, proxy_flip = proxy_pair(left, right, top, mode=self.config.proxy_mode)
                agree = proxy_agreement(proxy, guess)
                self.proxy_agreement.append(agree)
                if agree >= self.config.proxy_min_agreement:
                    out.append((left, right, proxy, proxy_flip))
                else:
                    out.append((left, right))
            else:
                out.append((left, right))
        return out

    def sample_batch(self, pairs: Sequence[Tuple[torch.Tensor, ...]]) -> Tuple[torch.Tensor, ...]:
        """``batch`` random prepared pairs, cropped (``crop``) and mirrored (``flip_augment``):
        ``(left, right)`` or, with proxy labels, ``(left, right, proxy)``."""
        cfg = self.config
        items = []
        for _ in range(cfg.batch):
            item = pairs[int(self.rng.integers(len(pairs)))]
            left, right = item[0], item[1]
            proxy = item[2] if len(item) > 2 else None
            if cfg.flip_augment and self.rng.random() < 0.5:
                left, right = L.flip_pair(left, right)
                proxy = item[3] if proxy is not None else None
            if cfg.crop is not None:
                h, w = left.shape[-2:]
                ch, cw = min(cfg.crop[0], h), min(cfg.crop[1], w)
                y, x = int(self.rng.integers(h - ch + 1)), int(self.rng.integers(w - cw + 1))
                crop = (Ellipsis, slice(y, y + ch), slice(x, x + cw))
                left, right = left[crop], right[crop]
                proxy = proxy[crop] if proxy is not None else None
            items.append((left, right) if proxy is None else (left, right, proxy))
        if len({it[0].shape for it in items}) > 1:  # pairs of different sizes: one at a time
            items = items[:1]
        return tuple(torch.cat(parts).to(self.device) for parts in zip(*items))

    def _synthetic_batch(self) -> Dict[str, torch.Tensor]:
        from madis_core.data.synthetic import SyntheticStereoGenerator

        if self._synthetic is None:
            h, w = self.config.synthetic_size
            md = float(getattr(self.model, "max_disparity", 192))
            self._synthetic = SyntheticStereoGenerator(h, w, min(md, w - 1), seed=self.config.seed + 7919,
                                                       device=self.device)
        return self._synthetic.generate(self.config.batch)

    # --- one step ----------------------------------------------------------------------
    def losses(self, left: torch.Tensor, right: torch.Tensor, proxy: Optional[torch.Tensor] = None
               ) -> Dict[str, torch.Tensor]:
        """Every loss term of one step on ``left``/``right`` (with graphs; ``total`` included);
        ``proxy``: SGBM's disparity (NaN where none) when ``config.proxy`` > 0."""
        cfg = self.config
        self._train_mode()
        b = left.shape[0]
        target, conf, consistent, occluded, background = self._teacher_targets(left, right)
        mask_l = mask_r = None
        if cfg.mask_ratio > 0:
            hp, wp = _pad16(left).shape[-2:]
            n = (hp // MASK_PATCH) * (wp // MASK_PATCH)
            mask_l = random_masks(b, n, cfg.mask_ratio, self.gen, self.device)
            mask_r = random_masks(b, n, cfg.mask_ratio, self.gen, self.device)
        out = forward_padded(self.model, left, right, mask_l, mask_r)
        disp = out["disparity"]
        keep = ~occluded if cfg.occlusion in ("lr", "geometric", "both") else torch.ones_like(consistent)
        photo = []
        left_p, right_p = L.gaussian_blur(left, cfg.photometric_blur), L.gaussian_blur(right, cfg.photometric_blur)
        for k in range(cfg.photometric_scales):  # scale k: images and disparity averaged over 2^k x 2^k
            f = 2 ** k
            lk, rk = (F.avg_pool2d(t, f) if f > 1 else t for t in (left_p, right_p))
            dk = F.avg_pool2d(disp, f) / f if f > 1 else disp
            mk = F.max_pool2d((~keep).float(), f) == 0 if f > 1 else keep
            err, inside = L.photometric_error(lk, rk, dk, cfg.ssim_alpha, cfg.photometric_kind)
            mk = mk & inside
            if cfg.occlusion in ("automask", "both"):
                mk = mk & (err.detach() < L.identity_error(lk, rk, cfg.ssim_alpha))
            photo.append(L.masked_mean(err, mk))
            if k == 0:
                keep = mk
        terms: Dict[str, torch.Tensor] = {"photometric": sum(photo) / len(photo),
                                          "smoothness": L.smoothness_loss(disp, left)}
        total = cfg.photometric * terms["photometric"] + cfg.smoothness * terms["smoothness"]
        if self.teacher is not None:
            if cfg.fill_occluded:
                target = torch.where(occluded, background, target)
            weight = torch.where(consistent, cfg.pseudo * conf, torch.zeros_like(conf))
            weight = torch.where(occluded, torch.full_like(conf, cfg.occluded), weight)
            if proxy is not None:
                has = torch.isfinite(proxy)
                target = torch.where(has, proxy, target)
                weight = torch.where(has, torch.full_like(weight, cfg.proxy), weight)
            terms["pseudo"] = L.pseudo_label_loss(out, target, weight)
            total = total + terms["pseudo"]
        if cfg.drift > 0:
            terms["drift"] = L.drift_penalty(self.model, self.anchor)
            total = total + cfg.drift * terms["drift"]
        if cfg.synthetic_every > 0 and self.steps_done % cfg.synthetic_every == 0:
            from madis_core.training.distill_losses import ground_truth_loss

            syn = self._synthetic_batch()
            s_out = forward_padded(self.model, syn["left"], syn["right"])
            terms["synthetic"] = ground_truth_loss([s_out["disparity"]], syn["disparity"], syn["valid"], [1.0], "log")
            total = total + terms["synthetic"]
        terms["total"] = total
        terms["kept"] = keep.float().mean()
        return terms

    def step(self, left: torch.Tensor, right: torch.Tensor, proxy: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """One optimizer step on a batch; returns the loss terms as floats."""
        t0, c0 = time.perf_counter(), time.process_time()
        terms = self.losses(left, right, proxy)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        self.optimizer.step()
        if self.teacher is not None:
            self.teacher.update(self.model, self.steps_done)
        self.steps_done += 1
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0
        logs = {k: float(v.detach()) for k, v in terms.items()}
        self.history.append(logs)
        return logs

    def run(self, pairs: Sequence[UnlabeledPair], steps: Optional[int] = None, log_every: int = 0,
            log=print) -> Dict[str, float]:
        """``steps`` (default ``config.steps``) steps over ``pairs``, stopping early at the time budget."""
        t0, c0 = time.perf_counter(), time.process_time()
        tensors = self.prepare(pairs)
        self.seconds += time.perf_counter() - t0  # proxy labels are part of the adaptation time
        self.cpu_seconds += time.process_time() - c0
        steps = self.config.steps if steps is None else steps
        budget, cpu_budget = self.config.time_budget_s, self.config.cpu_budget_s
        logs: Dict[str, float] = {}
        for i in range(steps):
            if (budget and self.seconds >= budget) or (cpu_budget and self.cpu_seconds >= cpu_budget):
                break
            logs = self.step(*self.sample_batch(tensors))
            if log_every and (i + 1) % log_every == 0:
                log(f"step {self.steps_done}: " + " ".join(f"{k} {v:.4f}" for k, v in logs.items())
                    + f" ({self.seconds:.0f} s)")
        return logs

    # --- reporting --------------------------------------------------------------------
    @torch.no_grad()
    def self_supervised_loss(self, pairs: Sequence[UnlabeledPair]) -> Dict[str, float]:
        """The current model's self-supervised loss on ``pairs`` (eval mode, no masking,
        its own left-right check): the figure the card reports before and after."""
        return self_supervised_loss(self.model, pairs, self.config, self.device)

    def export(self) -> nn.Module:
        """The adapted model, in eval mode (what gets saved)."""
        return self.model.eval()


@torch.no_grad()
def self_supervised_loss(model: nn.Module, pairs: Sequence[UnlabeledPair], config: AdaptConfig,
                         device: torch.device | str = "cpu") -> Dict[str, float]:
    """Mean over ``pairs`` of the photometric error (left-right-consistent pixels) and
    the smoothness of ``model``'s own prediction, and their weighted sum ``loss``."""
    was = model.training
    model.eval()
    photo, smooth, kept = [], [], []
    try:
        for pair in pairs:
            left, right = (t.to(device) for t in pair_to_tensors(pair))
            d = forward_padded(model, left, right)["disparity"].float()
            d_r = forward_padded(model, *L.flip_pair(left, right))["disparity"].float().flip(-1)
            lb, rb = L.gaussian_blur(left, config.photometric_blur), L.gaussian_blur(right, config.photometric_blur)
            err, inside = L.photometric_error(lb, rb, d, config.ssim_alpha, config.photometric_kind)
            keep = inside & L.lr_consistency_mask(d, d_r, config.lr_tolerance)
            photo.append(float(L.masked_mean(err, keep)))
            smooth.append(float(L.smoothness_loss(d, left)))
            kept.append(float(keep.float().mean()))
    finally:
        model.train(was)
    p, s = float(np.mean(photo)), float(np.mean(smooth))
    return {"loss": config.photometric * p + config.smoothness * s, "photometric": p, "smoothness": s,
            "consistent": float(np.mean(kept))}
