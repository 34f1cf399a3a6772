"""MaDis-Stereo, matching edition: a binocular transformer whose disparity is read out by matching.

Why not the paper's backbone: MaDis-Stereo is CroCo-Stereo's ViT (16x16 patches, a
cross-attention decoder, a DPT head that *regresses* disparity) trained with masked
image modelling and an EMA teacher. That ViT must discover correspondence through
attention alone, which the papers buy with GPU-days of pre-training; on this
project's CPUs it never beat the constant guess on a random-dot probe
(``benchmarks/matching_probe.py``; the ViT lives on as ``croco-vit-*`` in
``croco_vit.py``). This family keeps the MaDis *training scheme* unchanged (masked
patches in both views, reconstruction of the hidden patches from the transformer
tokens, an EMA teacher whose confidence-weighted pseudo labels supervise the masked
student, the bounded Laplacian loss; ``training/madis_task.py``) and changes how
disparity comes out of the transformer:

1. a convolutional stem shared by both views to 1/4 and 1/8 resolution (the
   student's ``FeatureExtractor``: per-view standardisation folded into a 4x4 patch
   stem, separable residual blocks, a 1/16 context level);
2. ``depth`` ``EpipolarBlock`` s on the 1/8 tokens: self-attention along rows and
   columns of each view, cross-attention along the row (the epipolar line) to the
   other view, 1D RoPE so scores depend on offsets only; the tokens are added back
   to the 1/8 features through a zero-initialised projection;
3. matching: a group-wise *cosine* correlation of the two views' final features over
   ``max_disparity / 8`` bins of 8 px along each row, *aggregated* by 2D "cost as
   channels" blocks and an hourglass (aggregation measured 22.7 -> 18.5 % bad-2 on
   Motorcycle against softmax over the raw correlation; methods.md 1b), then a
   softmax over the bins and soft-argmin: the distribution is the matching
   confidence and the cost volume the student's distillation reads;
4. refinement at 1/4 (left features, the disparity and a local cosine of the right
   features warped by it) and learned convex upsampling to full resolution;
5. a confidence head (the MaDis head's second channel): a logit ``c`` at 1/4 from
   the refinement features and the matching peak, ``confidence = sigmoid(c / 3)``,
   trained by the bounded Laplacian loss (``training/losses.py``);
6. MIM: ``mask_left``/``mask_right`` (B x N bool over 16x16 patches) hide patches from
   the transformer: ``mask_level="tokens"`` (default) replaces the hidden patches' 2x2
   input tokens by a learned mask token, the way MaDis hides patches from its ViT
   encoder, while the correlation still sees every pixel's CNN features;
   ``mask_level="stem"`` replaces the stem features instead (SimMIM's way for a
   convolutional stem), which hides the patches from the matching too. Measured on the
   CPU recipe at 500 steps, Motorcycle bad-2: stem masking 20.09 %, supervised 15.60 %
   (a 128x384 pilot: 22.56 vs 17.20), hence the default. ``reconstruct=True`` adds
   ``recon_left``/``recon_right``: each 1/8 token predicts its 8x8 RGB pixels, returned
   as B x N x 768 patches like the ViT's.

The CNN parts have the student's names and shapes, so ``model.init`` with
``model.init_strict: false`` warm-starts them from ``student.safetensors``; with the
zero-initialised token projection and confidence head the warm-started network
starts as the student and the transformer learns corrections (methods.md 1b lists
the warm start as the CPU-saving option). ``freeze_bn`` keeps every BatchNorm on its
running statistics during training: masked batches would otherwise shift statistics
that unmasked inference then uses.

Outputs of ``forward(left, right)`` (B x 3 x H x W RGB in [0, 1]; sides are padded to a
multiple of 16 by edge replication and cropped back): ``disparity``, ``confidence``
(0..1), ``conf_logit``; with ``extras`` (default: training) also ``disparity_list``
(coarse to fine), ``logits_list``/``logits`` (bins), ``cost_volume``, ``features`` /
``features_right`` (``stem``/``f4``/``f8``, like the student's) and ``tokens``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from madis_core.models.cost_volume import groupwise_correlation, peak_confidence, soft_argmin, volume_as_channels
from madis_core.models.epipolar_transformer import EpipolarBlock
from madis_core.models.patches import patchify
from madis_core.models.registry import ModelMeta, register_model
from madis_core.models.student import Aggregation2D, FeatureExtractor, Refinement, conv_bn

MIM_PATCH = 16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MadisMatchStereo(nn.Module):
    """Conv stem + epipolar transformer + aggregated cosine matching + refinement; see the module docstring."""

    size_divisor = 16
    mim_patch = MIM_PATCH

    def __init__(self,
                 max_disparity: int = 192,      # disparity range in pixels (bins of 8 px at 1/8)
                 # --- convolutional stem (the student's FeatureExtractor, same names for warm starts)
                 c4: int = 24,                  # channels at 1/4
                 c8: int = 48,                  # channels at 1/8
                 c16: int = 64,                 # channels of the 1/16 context level (0: none)
                 blocks4: int = 1,              # residual blocks at 1/4
                 blocks8: int = 2,              # residual blocks at 1/8
                 blocks16: int = 1,             # residual blocks at 1/16
                 # --- transformer on the 1/8 tokens
                 dim: int = 64,                 # token width
                 depth: int = 2,                # number of EpipolarBlocks
                 heads: int = 4,                # attention heads (dim / heads must be even)
                 mlp_ratio: float = 2.0,        # MLP hidden width / dim
                 rope_base: float = 100.0,      # RoPE base frequency (CroCo v2 uses 100)
                 # --- matching and aggregation
                 match_channels: int = 32,      # channels correlated between the views
                 groups: int = 4,               # correlation groups (cosine per group)
                 context: int = 16,             # left-view context channels fed to the aggregation
                 agg_channels: int = 64,        # aggregation width
                 agg_stages: int = 2,           # aggregation stages (each emits bin logits)
                 hourglass: bool = True,        # last aggregation stage is a 1/8-1/16-1/8 hourglass
                 # --- refinement, upsampling, confidence
                 refine_channels: int = 24,     # refinement width at 1/4
                 refine_dilations: Sequence[int] = (1, 2, 4),  # one separable block per dilation
                 local_corr: int = 3,           # offsets of the local cosine after warping (0: none)
                 warp_channels: int = 8,        # channels the right features are projected to before warping
                 upsample: str = "convex2",     # 1/4 -> full: convex | convex2 | residual (student.py)
                 conf_channels: int = 16,       # hidden width of the confidence head
                 inference_scale: float = 2.0,  # infer(): upper bound of the adaptive test-time upscaling (1: off)
                 # --- training
                 mask_level: str = "tokens",    # where MIM hides patches: tokens | stem (see the docstring)
                 freeze_bn: bool = True):       # BatchNorm on running statistics while training
        super().__init__()
        if max_disparity % 8:
            raise ValueError(f"max_disparity must be a multiple of 8 (bins of 8 px at 1/8), got {max_disparity}")
        if match_channels % groups:
            raise ValueError(f"match_channels ({match_channels}) must be divisible by groups ({groups})")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        if mask_level not in ("tokens", "stem"):
            raise ValueError(f"mask_level must be tokens or stem, got {mask_level!r}")
        self.mask_level = mask_level
        if inference_scale < 1.0:
            raise ValueError(f"inference_scale must be >= 1, got {inference_scale}")
        self.inference_scale = float(inference_scale)
        self.max_disparity = int(max_disparity)
        self.bins = max_disparity // 8
        self.bin_size = 8.0
        self.groups = groups
        self.freeze_bn = bool(freeze_bn)
        self.features = FeatureExtractor(8, c4, c8, c16, blocks4, blocks8, blocks16, patch_stem=True)
        self.feature_strides = {"stem": 4, "f4": 4, "f8": 8}
        # what stands in for a hidden patch: one parameter, for the chosen mask_level only (a
        # parameter that never receives a gradient breaks DistributedDataParallel)
        if mask_level == "stem":
            self.mask_embed = nn.Parameter(torch.zeros(1, c4, 1, 1))  # hidden stem cells
        else:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, dim))  # hidden 1/8 tokens
        self.token_in = nn.Linear(c8, dim)
        self.blocks = nn.ModuleList([EpipolarBlock(dim, heads, mlp_ratio, rope_base) for _ in range(depth)])
        self.token_norm = nn.LayerNorm(dim)
        self.token_out = nn.Linear(dim, c8)
        self.recon_head = nn.Linear(dim, 8 * 8 * 3)
        self.match = nn.Conv2d(c8, match_channels, 1)
        self.context = conv_bn(c8, context, 1)
        self.aggregation = Aggregation2D(groups, self.bins, context, agg_channels, agg_stages, hourglass)
        self.refinement = Refinement(c4, refine_channels, refine_dilations, local_corr, max_disparity, upsample,
                                     warp_channels)
        self.conf_head = nn.Sequential(nn.Conv2d(refine_channels + 1, conf_channels, 3, padding=1), nn.ReLU(),
                                       nn.Conv2d(conf_channels, 1, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._init_new_parts()

    def _init_new_parts(self) -> None:
        for m in [self.token_in, self.token_out, self.recon_head, *self.blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # the tokens enter the matching through a zero projection and the confidence starts at
        # 0.5 (Laplacian scale 1): a warm-started network begins exactly as its CNN
        nn.init.zeros_(self.token_out.weight)
        nn.init.zeros_(self.token_out.bias)
        nn.init.zeros_(self.conf_head[-1].weight)
        nn.init.zeros_(self.conf_head[-1].bias)
        if self.mask_level == "tokens":
            nn.init.normal_(self.mask_token, std=0.02)

    def train(self, mode: bool = True) -> "MadisMatchStereo":
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        """ImageNet normalisation (what the MIM reconstruction targets are computed from)."""
        return (img - self.mean.to(img.dtype)) / self.std.to(img.dtype)

    def _mask_map(self, mask_left: torch.Tensor, mask_right: torch.Tensor, h: int, w: int, stride: int
                  ) -> torch.Tensor:
        """B x N patch masks of both views -> a 2B x 1 x H/stride x W/stride bool map."""
        b = mask_left.shape[0]
        gh, gw = h // MIM_PATCH, w // MIM_PATCH
        for name, m in (("mask_left", mask_left), ("mask_right", mask_right)):
            if m.shape != (b, gh * gw) or m.dtype != torch.bool:
                raise ValueError(f"{name} must be a bool tensor of shape {(b, gh * gw)} (B x 16x16 patches), "
                                 f"got {tuple(m.shape)} {m.dtype}")
        grid = torch.cat((mask_left, mask_right)).view(2 * b, 1, gh, gw)
        k = MIM_PATCH // stride
        return grid.repeat_interleave(k, 2).repeat_interleave(k, 3)

    def forward(self, left: torch.Tensor, right: torch.Tensor, mask_left: Optional[torch.Tensor] = None,
                mask_right: Optional[torch.Tensor] = None, reconstruct: bool = False,
                extras: Optional[bool] = None) -> Dict[str, torch.Tensor]:
        if extras is None:
            extras = self.training
        if left.dim() != 4 or left.shape[1] != 3 or left.shape != right.shape:
            raise ValueError(f"expected left/right B x 3 x H x W of equal shape, got {tuple(left.shape)} / "
                             f"{tuple(right.shape)}")
        if (mask_left is None) != (mask_right is None):
            raise ValueError("give masks for both views or for neither")
        if reconstruct and mask_left is None:
            raise ValueError("reconstruct=True needs mask_left/mask_right (the patches to reconstruct)")
        b = left.shape[0]
        h, w = left.shape[-2:]
        ph, pw = (-h) % self.size_divisor, (-w) % self.size_divisor
        if ph or pw:
            if mask_left is not None:
                raise ValueError(f"masked training needs sides that are multiples of {MIM_PATCH}, got {h}x{w}")
            left = F.pad(left, (0, pw, 0, ph), mode="replicate")
            right = F.pad(right, (0, pw, 0, ph), mode="replicate")
        left = left.contiguous(memory_format=torch.channels_last)
        right = right.contiguous(memory_format=torch.channels_last)
        stem_mask = token_mask = None
        if mask_left is not None and self.mask_level == "stem":
            stem_mask = self._mask_map(mask_left, mask_right, h + ph, w + pw, 4)
        elif mask_left is not None:
            token_mask = self._mask_map(mask_left, mask_right, h + ph, w + pw, 8).permute(0, 2, 3, 1)
        feats = self.features(left, right, stem_mask=stem_mask,
                              mask_embed=self.mask_embed if stem_mask is not None else None)
        f8 = feats["f8"]
        tokens = self.token_in(f8.permute(0, 2, 3, 1))  # 2B x h8 x w8 x dim
        if token_mask is not None:
            tokens = torch.where(token_mask, self.mask_token.to(tokens.dtype), tokens)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.token_norm(tokens)
        f8 = f8 + self.token_out(tokens).permute(0, 3, 1, 2)
        m = self.match(f8)
        volume = groupwise_correlation(m[:b], m[b:], self.groups, self.bins, normalize=True)
        logits, _ = self.aggregation(volume_as_channels(volume), self.context(f8[:b]), all_stages=extras)
        disp8, prob = soft_argmin(logits[-1], self.bin_size)
        disp4 = F.interpolate(disp8, scale_factor=2.0, mode="bilinear", align_corners=False)
        disp, hidden = self.refinement(disp4, feats["f4"], return_hidden=True)
        peak = F.interpolate(peak_confidence(prob), size=hidden.shape[-2:], mode="bilinear", align_corners=False)
        conf_logit = F.interpolate(self.conf_head(torch.cat((hidden, peak), 1)), scale_factor=4.0,
                                   mode="bilinear", align_corners=False)
        out: Dict[str, torch.Tensor] = {"disparity": disp, "conf_logit": conf_logit,
                                        "confidence": torch.sigmoid(conf_logit / 3.0)}
        if reconstruct:
            pixels = self.recon_head(tokens).permute(0, 3, 1, 2)  # 2B x 192 x h8 x w8
            patches = patchify(F.pixel_shuffle(pixels.contiguous(), 8), MIM_PATCH)
            out["recon_left"], out["recon_right"] = patches[:b], patches[b:]
        if extras:
            coarse = [F.interpolate(soft_argmin(lg, self.bin_size)[0], size=disp.shape[-2:], mode="bilinear",
                                    align_corners=False) for lg in logits]
            out["disparity_list"] = coarse + [disp]
            out["logits_list"] = logits
            out["logits"] = logits[-1]
            out["cost_volume"] = volume
            out["features"] = {"stem": feats["stem"][:b], "f4": feats["f4"][:b], "f8": f8[:b]}
            out["features_right"] = {"stem": feats["stem"][b:], "f4": feats["f4"][b:], "f8": f8[b:]}
            out["tokens"] = tokens
        if ph or pw:
            for key in ("disparity", "conf_logit", "confidence"):
                out[key] = out[key][..., :h, :w]
            if extras:
                out["disparity_list"] = [d[..., :h, :w] for d in out["disparity_list"]]
        return out


    @torch.no_grad()
    def infer(self, left: torch.Tensor, right: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Inference with adaptive test-time upscaling (what ``StereoEstimator`` runs).

        The correlation lives at 1/8 resolution, which blurs thin structures on small
        images. A first pass at the input size measures the disparities (99th percentile
        ``p``); when the range leaves room, the pair is upscaled by
        ``s = min(inference_scale, 0.8 * max_disparity / p)`` and run again, and that
        disparity is resized back and divided by ``s``. Wide-baseline pairs (``s`` < 1.1)
        keep the first pass, so the range never shrinks below what the scene needs (the
        coarse pass CroCo users recommend for pairs beyond a tile's reach). Costs the
        first pass plus ``s^2`` times it."""
        out = self.forward(left, right, extras=False)
        if self.inference_scale <= 1.0:
            return out
        h, w = left.shape[-2:]
        disp = out["disparity"].float().flatten(1)
        p99 = float(torch.quantile(disp[:, :: max(1, disp.shape[1] // 65536)], 0.99, dim=1).max())
        scale = min(self.inference_scale, 0.8 * self.max_disparity / max(p99, 1.0))
        if scale < 1.1:
            return out
        size = (int(round(h * scale)), int(round(w * scale)))
        up = self.forward(F.interpolate(left, size=size, mode="bilinear", align_corners=False),
                          F.interpolate(right, size=size, mode="bilinear", align_corners=False), extras=False)
        back = {k: F.interpolate(v.float(), size=(h, w), mode="bilinear", align_corners=False)
                for k, v in up.items() if k in ("disparity", "conf_logit", "confidence")}
        back["disparity"] = back["disparity"] * (w / size[1])
        return back


_MADIS_META = ModelMeta(family="madis", size_divisor=16, has_confidence=True, min_size=(16, 16),
                        own_inference=True)
_CNN_DEFAULTS = dict(max_disparity=192, c4=24, c8=48, c16=64, blocks4=1, blocks8=2, blocks16=1,
                     match_channels=32, groups=4, context=16, agg_channels=64, agg_stages=2, hourglass=True)


@register_model("madis-base", family="madis", meta=_MADIS_META,
                description="MaDis matching transformer, GPU scale: wide CNN, 6 epipolar blocks of 256",
                **dict(_CNN_DEFAULTS, c4=48, c8=96, c16=128, blocks4=2, blocks8=4, blocks16=2, match_channels=96,
                       groups=8, context=32, agg_channels=128, refine_channels=48, refine_dilations=(1, 2, 4, 8),
                       local_corr=5, upsample="convex"),
                dim=256, depth=6, heads=8, mlp_ratio=4.0, freeze_bn=False)
@register_model("madis-small", family="madis", meta=_MADIS_META,
                description="MaDis matching transformer, one GPU: student-shaped CNN, 4 epipolar blocks of 128",
                **_CNN_DEFAULTS, dim=128, depth=4, heads=4, mlp_ratio=2.0)
@register_model("madis-tiny", family="madis", meta=_MADIS_META,
                description="MaDis matching transformer for CPUs: student-shaped CNN, 2 epipolar blocks of 64",
                **_CNN_DEFAULTS, dim=64, depth=2, heads=4, mlp_ratio=2.0)
def build_madis(**cfg) -> MadisMatchStereo:
    cfg = dict(cfg)
    if cfg.get("refine_dilations") is not None:
        cfg["refine_dilations"] = tuple(int(v) for v in cfg["refine_dilations"])
    return MadisMatchStereo(**cfg)
