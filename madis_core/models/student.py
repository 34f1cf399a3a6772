"""The fast CNN student: the network a robot runs in real time (methods.md section 2).

Design driven by CPU latency first (target: no slower than OpenCV SGBM at 640x480 on
two threads; see benchmarks/student_speed.py), then by what generalises from synthetic
data (data.md). Everything heavy runs at 1/4 resolution or below, in channels-last
memory (oneDNN's fast path), with no loop over disparities:

1. Shared feature extractor for both views: a 4x4 stride-4 "patch" stem with each
   view's brightness/contrast standardisation folded into it (``NormalizedStem``; no
   full-resolution tensor is ever written), then depthwise-separable residual blocks
   at 1/4, 1/8 and (``student``) 1/16, the 1/16 level added back into 1/8.
2. Group-wise *cosine* correlation volume at 1/8 (``max_disparity / 8`` bins, 24 for
   192 px) built with one batched matrix product per row (``cost_volume``).
3. 2D aggregation over "cost as channels" (MobileStereoNet-2D style, which generalised
   better than 3D aggregation): the volume (G*D channels) plus left context goes
   through depthwise-separable blocks (and, for ``student``, a 1/8 -> 1/16 -> 1/8
   hourglass); each stage emits D bin logits added to a learned linear read-out of
   the raw volume initialised to the mean cosine (a direct path that trains fast).
4. Softmax over bins + soft-argmin; confidence = probability mass around the peak.
5. Refinement at 1/4: the upsampled disparity, left features and (``student``) the
   cosine of left features with right features warped by that disparity at 3 offsets
   go through dilated separable blocks that predict a residual and a learned
   upsampling to full resolution (convex x2 + bilinear x2, or a learned per-pixel
   residual on bilinear x4 for ``student-lite``).

Eval-mode BatchNorm is folded into the convolutions (cached), so inference is a chain
of convolutions; the ONNX export (opset 17) keeps batch, height and width dynamic.

Training returns every stage's full-resolution disparity in ``disparity_list``
(coarse to fine), the bin logits, the cost volume and the features of both views
(for distillation); eval returns only ``disparity`` and ``confidence``.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from madis_core.models.cost_volume import (convex_upsample, groupwise_correlation, normalize_groups, peak_confidence,
                                            soft_argmin, volume_as_channels)
from madis_core.models.registry import ModelMeta, register_model

_MEAN = (0.485, 0.456, 0.406)  # fixed input statistics when instance_norm_input=False


class ConvBN(nn.Module):
    """Conv (no bias) + BatchNorm (+ ReLU). In eval mode the BatchNorm is folded into
    the convolution: one conv instead of a conv and a full pass over its output, and
    the ONNX export gets a single Conv node. The folded weights are cached and
    recomputed whenever a parameter or statistic changes (version counters), which
    saves ~6 small ops per layer per frame on the CPU."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1,
                 relu: bool = True, padding: Optional[int] = None):
        super().__init__()
        pad = dilation * (k // 2) if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = relu
        self.pointwise = k == 1 and stride == 1 and groups == 1 and pad == 0
        self._fused: Optional[Tuple[tuple, torch.Tensor, torch.Tensor]] = None

    def fused_weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn
        tensors = (self.conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        key = tuple((t.data_ptr(), t._version, t.dtype) for t in tensors)
        if self._fused is None or self._fused[0] != key or torch.jit.is_tracing():
            with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable in any mode
                scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
                weight = self.conv.weight * scale.view(-1, 1, 1, 1)
                bias = bn.bias - bn.running_mean * scale
            if torch.jit.is_tracing():
                return weight, bias
            self._fused = (key, weight, bias)
        return self._fused[1], self._fused[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            y = self.bn(self.conv(x))
        else:
            weight, bias = self.fused_weights()
            c = self.conv
            if self.pointwise and x.is_contiguous(memory_format=torch.channels_last):
                # a 1x1 conv on NHWC memory is one GEMM: F.linear on the NHWC view skips the
                # generic conv path's layout handling (10-25% faster on CPU), same result
                y = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
            else:
                y = F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)
        return y.relu_() if self.relu else y  # in place: y is fresh, and BatchNorm's backward does not need it


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1,
            relu: bool = True) -> ConvBN:
    return ConvBN(cin, cout, k, stride, dilation, groups, relu)


class NormalizedStem(nn.Module):
    """First convolution of both views with the input standardisation folded in.

    Each view is standardised by itself (per-channel mean, one contrast scale per
    image, statistics from every 8th pixel): a cheap domain normalisation that removes
    global brightness/contrast differences between the views and between synthetic and
    real images. Because the convolution is linear, ``conv((x - m) * s)`` equals
    ``s * (conv(x) - W_sum @ m)`` (up to the zero padding at the border), so the
    standardisation costs one affine pass over the stem *output* instead of passes over
    both full-resolution inputs, and the views are never concatenated at full
    resolution. With ``instance_norm=False`` fixed ImageNet-like statistics are used.
    """

    def __init__(self, cout: int, kernel: int, stride: int, padding: int, instance_norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.instance_norm = instance_norm

    def stats(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-image channel means ``N x 3`` and contrast scale ``N x 1`` of subsampled images."""
        if not self.instance_norm:
            mean = x.new_tensor(_MEAN).expand(x.shape[0], 3)
            return mean, x.new_full((x.shape[0], 1), 1.0 / 0.226)
        sub = x  # already every 8th pixel (see forward)
        mean = sub.mean(dim=(2, 3))
        var = (sub * sub).mean(dim=(2, 3)) - mean * mean
        return mean, torch.rsqrt(var.mean(1, keepdim=True).clamp_min(0.0) + 1e-4)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.conv(left), self.conv(right)], 0)  # 2B x C x h x w
        mean, scale = self.stats(torch.cat([left[:, :, ::8, ::8], right[:, :, ::8, ::8]], 0))
        offset = mean @ self.conv.weight.sum(dim=(2, 3)).t()  # 2B x C: conv of the constant mean image
        n, c = offset.shape
        if self.training:
            y = (y - offset.view(n, c, 1, 1)) * scale.view(n, 1, 1, 1)
            return self.bn(y).relu_()
        bn = self.bn
        bn_scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        gain = scale * bn_scale  # 2B x C
        bias = bn.bias - bn.running_mean * bn_scale - offset * gain
        return torch.addcmul(bias.view(n, c, 1, 1), y, gain.view(n, c, 1, 1)).relu_()


class SepBlock(nn.Module):
    """Residual depthwise-separable block: dw3x3 (dilated) -> pw1x1 -> + input."""

    def __init__(self, channels: int, dilation: int = 1):
        super().__init__()
        self.dw = conv_bn(channels, channels, 3, 1, dilation, groups=channels, relu=True)
        self.pw = conv_bn(channels, channels, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x)).add_(x).relu_()


class SepDown(nn.Module):
    """Stride-2 depthwise-separable downsampling with a channel change."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dw = conv_bn(cin, cin, 3, 2, groups=cin, relu=True)
        self.pw = conv_bn(cin, cout, 1, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class FeatureExtractor(nn.Module):
    """Shared-weight features for both views at 1/2 (stem; 1/4 with ``patch_stem``), 1/4
    and 1/8 (+1/16 context)."""

    def __init__(self, stem: int, c4: int, c8: int, c16: int, blocks4: int, blocks8: int, blocks16: int,
                 patch_stem: bool = False, instance_norm: bool = True):
        super().__init__()
        if patch_stem:  # one 4x4 stride-4 conv straight to 1/4: no half-resolution tensor at all
            self.stem = NormalizedStem(c4, 4, 4, 0, instance_norm)
            self.to4 = nn.Identity()
        else:
            self.stem = NormalizedStem(stem, 3, 2, 1, instance_norm)
            self.to4 = SepDown(stem, c4)
        self.stage4 = nn.Sequential(*[SepBlock(c4) for _ in range(blocks4)])
        self.down8 = SepDown(c4, c8)
        self.stage8 = nn.Sequential(*[SepBlock(c8, dilation=1 + (i % 2)) for i in range(blocks8)])
        self.use16 = c16 > 0
        if self.use16:
            self.down16 = SepDown(c8, c16)
            self.stage16 = nn.Sequential(*[SepBlock(c16) for _ in range(blocks16)])
            self.up16 = conv_bn(c16, c8, 1, relu=False)

    def forward(self, left: torch.Tensor, right: torch.Tensor, stem_mask: Optional[torch.Tensor] = None,
                mask_embed: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Both views (``B x 3 x H x W`` each) -> maps of the ``2B`` batch (left views first).

        ``stem_mask`` (``2B x 1 x h x w`` bool at the stem's resolution) replaces the stem
        output there by ``mask_embed`` (``1 x C x 1 x 1``): masked image modelling's hidden patches."""
        f2 = self.stem(left, right)
        if stem_mask is not None:
            f2 = torch.where(stem_mask, mask_embed.to(f2.dtype), f2)
        f4 = self.stage4(self.to4(f2))
        f8 = self.stage8(self.down8(f4))
        if self.use16:
            f16 = self.stage16(self.down16(f8))
            f8 = F.relu(f8 + F.interpolate(self.up16(f16), size=f8.shape[-2:], mode="bilinear", align_corners=False))
        return {"stem": f2, "f4": f4, "f8": f8}


class Aggregation2D(nn.Module):
    """2D aggregation of a ``B x G x D x h x w`` volume with cost bins as channels.

    Stage ``i`` returns bin logits ``base + head_i(x)`` where ``base`` is a learned
    linear read-out of the volume (a 1x1 conv initialised to the average of the G
    group cosines, scaled), so the network starts from plain winner-take-all matching
    and learns corrections. Input: ``volume_as_channels`` (channel ``g*D + d``)."""

    def __init__(self, groups: int, bins: int, context: int, channels: int, stages: int, hourglass: bool):
        super().__init__()
        self.bins = bins
        self.base = nn.Conv2d(groups * bins, bins, 1, bias=False)
        with torch.no_grad():
            self.base.weight.zero_()
            for g in range(groups):
                self.base.weight[torch.arange(bins), g * bins + torch.arange(bins), 0, 0] = 16.0 / groups
        self.inp = conv_bn(groups * bins + context, channels, 1)
        self.blocks = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i in range(stages):
            if hourglass and i == stages - 1:
                block: nn.Module = _Hourglass(channels)
            else:
                block = nn.Sequential(SepBlock(channels, 1), SepBlock(channels, 2))
            self.blocks.append(block)
            self.heads.append(nn.Conv2d(channels, bins, 1))
        for head in self.heads:  # start at the correlation's own answer
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, cost: torch.Tensor, context: torch.Tensor, all_stages: bool
                ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """``cost``: ``B x (G*D) x h x w``; returns the bin logits of the stages run
        (all with ``all_stages``, else the last) and the final hidden map."""
        base = self.base(cost)  # B x D x h x w
        x = self.inp(torch.cat([cost, context], 1))
        logits = []
        last = len(self.blocks) - 1
        for i, (block, head) in enumerate(zip(self.blocks, self.heads)):
            x = block(x)
            if all_stages or i == last:
                logits.append(base + head(x))
        return logits, x


class _Hourglass(nn.Module):
    """1/8 -> 1/16 -> 1/8 separable hourglass for a wider receptive field."""

    def __init__(self, c: int):
        super().__init__()
        self.down = SepDown(c, c * 2)
        self.mid = SepBlock(c * 2, 1)
        self.up = conv_bn(c * 2, c, 1, relu=False)
        self.out = SepBlock(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mid(self.down(x))
        x = F.relu(x + F.interpolate(self.up(y), size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.out(x)


def warp_right(right: torch.Tensor, disparity: torch.Tensor) -> torch.Tensor:
    """Sample ``right`` at ``x - disparity`` (disparity in this map's pixels); zeros outside."""
    b, _, h, w = right.shape
    xs = torch.arange(w, device=right.device, dtype=right.dtype).view(1, 1, w)
    ys = torch.arange(h, device=right.device, dtype=right.dtype).view(1, h, 1)
    # plain shape arithmetic (no Python max/min) so the ONNX export keeps H and W dynamic
    gx = (xs - disparity[:, 0]) * (2.0 / (w - 1)) - 1.0
    gy = (ys * (2.0 / (h - 1)) - 1.0).expand(b, h, w)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(right, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


# Learned upsampling from 1/4 to full resolution, and the mask channels each needs:
# convex: RAFT convex combination of the 3x3 coarse neighbours of each of the 16 fine
#   pixels (sharpest edges; its softmax over 9 x 16 x H/4 x W/4 values costs more than
#   the rest of the refinement on a CPU);
# convex2: convex x2 to 1/2 resolution then bilinear x2 (edges sharp to 2 px, 4x cheaper);
# residual: bilinear x4 plus a learned correction per fine pixel (pixel shuffle), cheapest.
_UPSAMPLE_MASK = {"convex": 9 * 16, "convex2": 9 * 4, "residual": 16}


class Refinement(nn.Module):
    """Disparity refinement at 1/4 and learned upsampling to full resolution (``_UPSAMPLE_MASK``)."""

    def __init__(self, c4: int, channels: int, dilations: Sequence[int], local_corr: int, max_disparity: float,
                 upsample: str = "convex", warp_channels: int = 8):
        super().__init__()
        if upsample not in _UPSAMPLE_MASK:
            raise ValueError(f"upsample must be one of {sorted(_UPSAMPLE_MASK)}, got {upsample!r}")
        self.local_corr = local_corr  # number of offsets (0: no warping)
        # warping is the costliest op of the refinement (grid_sample scales with channels):
        # the right features are first projected to a few matching channels
        self.warp_proj = nn.Conv2d(c4, warp_channels, 1) if local_corr else None
        self.max_disparity = float(max_disparity)
        self.upsample = upsample
        self.inp = conv_bn(c4 + 1 + local_corr, channels, 1)
        self.blocks = nn.Sequential(*[SepBlock(channels, d) for d in dilations])
        # one 1x1 head: channel 0 is the disparity residual, the rest the upsampling mask
        self.head = nn.Conv2d(channels, 1 + _UPSAMPLE_MASK[upsample], 1)
        with torch.no_grad():
            self.head.weight[0].zero_()
            self.head.bias[0].zero_()
            if upsample == "residual":
                self.head.weight.zero_()
                self.head.bias.zero_()

    def forward(self, disp4: torch.Tensor, feats4: torch.Tensor, return_hidden: bool = False):
        """``disp4``: disparity in full-resolution pixels on the 1/4 grid (B x 1 x h x w);
        ``feats4``: the 1/4 features of both views (2B x C x h x w, left views first).
        Returns the full-resolution disparity, and with ``return_hidden`` also the 1/4
        hidden map the head read (for a confidence head)."""
        b = disp4.shape[0]
        left4 = feats4[:b]
        parts = [left4, disp4 / self.max_disparity]
        if self.local_corr:
            proj = self.warp_proj(feats4)
            warped = warp_right(proj[b:], disp4 * 0.25)
            ln = normalize_groups(proj[:b], 1)
            wn = normalize_groups(warped, 1)
            r = self.local_corr // 2
            padded = F.pad(wn, (r, r))
            w = wn.shape[-1]
            parts.extend((ln * padded[..., k: k + w]).sum(1, keepdim=True) for k in range(self.local_corr))
        x = self.blocks(self.inp(torch.cat(parts, 1)))
        head = self.head(x)
        disp4 = F.relu(disp4 + head[:, :1] * 4.0)
        fine = self._upsample(disp4, head[:, 1:])
        return (fine, x) if return_hidden else fine

    def _upsample(self, disp4: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.upsample == "convex":
            return convex_upsample(disp4, mask, 4)
        if self.upsample == "convex2":
            disp2 = convex_upsample(disp4, mask, 2)
            return F.interpolate(disp2, scale_factor=2.0, mode="bilinear", align_corners=False)
        fine = F.interpolate(disp4, scale_factor=4.0, mode="bilinear", align_corners=False)
        return F.relu(fine + F.pixel_shuffle(mask, 4))


class StudentStereo(nn.Module):
    """Lean CNN stereo network; see the module docstring for the architecture."""

    size_divisor = 16

    def __init__(self, max_disparity: int = 192, stem: int = 8, c4: int = 24, c8: int = 48, c16: int = 64,
                 blocks4: int = 1, blocks8: int = 2, blocks16: int = 1, match_channels: int = 32, groups: int = 4,
                 context: int = 16, agg_channels: int = 64, agg_stages: int = 2, hourglass: bool = True,
                 refine_channels: int = 24, refine_dilations: Sequence[int] = (1, 2, 4), local_corr: int = 3,
                 warp_channels: int = 8,
                 upsample: str = "convex2", instance_norm_input: bool = True, channels_last: bool = True,
                 patch_stem: bool = True):
        super().__init__()
        if max_disparity % 8:
            raise ValueError(f"max_disparity must be a multiple of 8 (bins of 8 px at 1/8), got {max_disparity}")
        if match_channels % groups:
            raise ValueError(f"match_channels ({match_channels}) must be divisible by groups ({groups})")
        self.max_disparity = int(max_disparity)
        self.bins = max_disparity // 8
        self.bin_size = 8.0
        self.groups = groups
        self.features = FeatureExtractor(stem, c4, c8, c16, blocks4, blocks8, blocks16, patch_stem,
                                         instance_norm_input)
        self.feature_strides = {"stem": 4 if patch_stem else 2, "f4": 4, "f8": 8}
        self.match = nn.Conv2d(c8, match_channels, 1)
        self.context = conv_bn(c8, context, 1)
        self.aggregation = Aggregation2D(groups, self.bins, context, agg_channels, agg_stages, hourglass)
        self.refinement = Refinement(c4, refine_channels, refine_dilations, local_corr, max_disparity, upsample,
                                     warp_channels)
        self.channels_last = channels_last

    def forward(self, left: torch.Tensor, right: torch.Tensor, extras: Optional[bool] = None) -> Dict[str, torch.Tensor]:
        """``extras`` (default: ``self.training``) adds the training outputs: every
        stage's disparity, bin logits, the cost volume and both views' features (a
        frozen teacher in eval mode asks for them explicitly)."""
        if extras is None:
            extras = self.training
        if left.shape != right.shape or left.dim() != 4 or left.shape[1] != 3:
            raise ValueError(f"expected left/right B x 3 x H x W of equal shape, got {tuple(left.shape)} / {tuple(right.shape)}")
        b = left.shape[0]
        h, w = left.shape[-2:]
        if self.channels_last:  # oneDNN convolutions are 2-3x faster on NHWC tensors on CPU
            # (a no-op for images coming from HxWx3 numpy arrays, already NHWC in memory)
            left = left.contiguous(memory_format=torch.channels_last)
            right = right.contiguous(memory_format=torch.channels_last)
        feats = self.features(left, right)
        f8l, f8r = feats["f8"][:b], feats["f8"][b:]
        f4l, f4r = feats["f4"][:b], feats["f4"][b:]
        m = self.match(feats["f8"])
        volume = groupwise_correlation(m[:b], m[b:], self.groups, self.bins, normalize=True)
        logits, _ = self.aggregation(volume_as_channels(volume), self.context(f8l), all_stages=extras)
        disp8, prob = soft_argmin(logits[-1], self.bin_size)  # full-resolution pixels on the 1/8 grid
        disp4 = F.interpolate(disp8, scale_factor=2.0, mode="bilinear", align_corners=False)
        disp = self.refinement(disp4, feats["f4"])
        conf = F.interpolate(peak_confidence(prob), size=(h, w), mode="bilinear", align_corners=False)
        out: Dict[str, torch.Tensor] = {"disparity": disp, "confidence": conf}
        if extras:
            coarse = [F.interpolate(soft_argmin(lg, self.bin_size)[0], size=(h, w), mode="bilinear",
                                    align_corners=False) for lg in logits]
            out["disparity_list"] = coarse + [disp]
            out["logits_list"] = logits
            out["logits"] = logits[-1]
            out["cost_volume"] = volume
            out["features"] = {"stem": feats["stem"][:b], "f4": f4l, "f8": f8l}
            out["features_right"] = {"stem": feats["stem"][b:], "f4": f4r, "f8": f8r}
        return out


#: measured (registry metadata): on a textured plane the students' median error is below 0.5 px from
#: 32x48 px inputs up and tens of px at 32x32 or 16x16 (their 1/16 level has too few cells)
_STUDENT_META = ModelMeta(family="student", size_divisor=16, has_confidence=True, min_size=(32, 48))


@register_model("student", family="student", meta=_STUDENT_META,
                description="real-time CNN student: 1/8 group-wise cosine volume, 2D aggregation, 1/4 refinement",
                max_disparity=192)
def build_student(**cfg) -> StudentStereo:
    return StudentStereo(**cfg)


@register_model("student-lite", family="student", meta=_STUDENT_META,
                description="lighter student for SGBM-3way latency: thinner layers, no 1/16 level, no warping",
                max_disparity=192, c4=16, c8=32, c16=0, blocks4=0, blocks8=1, blocks16=0,
                match_channels=32, groups=2, context=8, agg_channels=48, agg_stages=2, hourglass=False,
                refine_channels=16, refine_dilations=(1, 2), local_corr=0, upsample="residual")
def build_student_lite(**cfg) -> StudentStereo:
    return StudentStereo(**cfg)
