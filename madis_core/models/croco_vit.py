"""CroCo-Stereo's binocular Vision Transformer, the MaDis-Stereo paper's backbone, kept for GPU runs.

Registered as ``croco-vit-tiny/-small/-base`` (family ``croco-vit``). On this project's CPUs it
never learned matching (``benchmarks/matching_probe.py --model croco-vit-tiny``), so the
project's MaDis family (``madis.py``) reads disparity out by matching instead; this module
keeps the paper-faithful architecture, trained by the same MIM + EMA task and the
``config/train/croco_vit_*.yaml`` configs, for users with GPU-days to spend.

Why this shape (methods.md section 1): one ViT encoder, shared by both views, turns
16x16 patches into tokens with 2D RoPE (relative positions only). A decoder lets
every left token attend to the left tokens (self-attention) and to the right
view's tokens (cross-attention), which is where matching happens. A DPT head turns
four decoder depths into a full-resolution map; a linear head reconstructs masked
patches for masked image modeling (MIM) training.

Outputs of ``forward(left, right)`` (inputs B x 3 x H x W RGB in [0, 1], any size;
padded internally to a multiple of 16 by edge replication and cropped back):

- ``disparity``: ``disparity_scale * softplus(raw)`` (pixels, left view, >= 0; softplus
  rather than ReLU so that no pixel gets a dead gradient);
- ``conf_logit``: the head's second channel ``c``, a confidence logit (higher = surer);
- ``confidence``: ``sigmoid(c / 3)`` in (0, 1). The bounded Laplacian loss uses the
  log-scale ``s = 3 - 6 * confidence`` = ``-6 (sigmoid(c/3) - 0.5)`` in (-3, 3)
  (methods.md's formula with the logit's sign flipped so the logit is a confidence);
- with ``mask_left``/``mask_right`` (B x N bool, True = patch hidden from the encoder)
  and ``reconstruct=True`` also ``recon_left``/``recon_right``: B x N x (16*16*3)
  patch predictions in per-patch-normalised pixel space (see training/mim.py).

``infer(left, right)``: tiled inference for images of any size; see its docstring.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from madis_core.models.dpt import DPTHead
from madis_core.models.patches import patchify, unpatchify  # noqa: F401  (re-exported)
from madis_core.models.registry import ModelMeta, register_model
from madis_core.models.rope import RoPE2D, patch_positions

PATCH = 16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: parameter-name prefixes of the encoder (what the EMA teacher averages by default)
ENCODER_PREFIXES = ("patch_embed.", "enc_blocks.", "enc_norm.", "mask_token")


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rope: RoPE2D):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, pos), self.rope(k, pos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rope: RoPE2D):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        m = y.shape[1]
        hd = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, hd).transpose(1, 2)
        k, v = self.kv(y).reshape(b, m, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, xpos), self.rope(k, ypos)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, rope: RoPE2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, rope)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention over this view, cross-attention to the layer-normed other view, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, rope: RoPE2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, rope)
        self.norm2 = nn.LayerNorm(dim)
        self.norm_y = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads, rope)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, y, xpos, ypos):
        x = x + self.attn(self.norm1(x), xpos)
        x = x + self.cross(self.norm2(x), self.norm_y(y), xpos, ypos)
        return x + self.mlp(self.norm3(x))


def tile_offsets(total: int, window: int, overlap: float) -> List[int]:
    """Start offsets of windows covering ``total`` with at least ``overlap`` overlap, evenly spread."""
    if window > total:
        raise ValueError(f"window {window} is larger than the image side {total}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    n = 1 + int(math.ceil((total - window) / ((1.0 - overlap) * window) - 1e-9))
    if n == 1:
        return [0]
    return sorted({int(round(i * (total - window) / (n - 1))) for i in range(n)})


class CrocoViTStereo(nn.Module):
    """Binocular ViT with RoPE, cross-attention decoder, DPT disparity head and MIM head."""

    size_divisor = PATCH
    mim_patch = PATCH
    ema_scopes = ("encoder", "full")

    def __init__(self, enc_dim: int = 768, enc_depth: int = 12, enc_heads: int = 12,
                 dec_dim: int = 768, dec_depth: int = 12, dec_heads: int = 12, mlp_ratio: float = 4.0,
                 rope_base: float = 100.0, dpt_hooks: Optional[Sequence[int]] = None,
                 dpt_layer_dims: Sequence[int] = (96, 192, 384, 768), dpt_feature_dim: int = 256,
                 disparity_scale: float = 1.0, max_disparity: float = 192.0,
                 tile_size: Sequence[int] = (352, 704), tile_overlap: float = 0.7, tile_batch: int = 4):
        super().__init__()
        if dec_depth < 1 or enc_depth < 1:
            raise ValueError("encoder and decoder need at least one block each")
        hooks = list(dpt_hooks) if dpt_hooks is not None else default_hooks(dec_depth)
        if len(hooks) != 4 or any(not 0 <= h < dec_depth for h in hooks) or hooks != sorted(hooks):
            raise ValueError(f"dpt_hooks must be 4 increasing decoder block indices in [0, {dec_depth}), got {hooks}")
        if hooks[-1] != dec_depth - 1:
            raise ValueError(f"the last DPT hook must be the last decoder block ({dec_depth - 1}), got {hooks[-1]}")
        th, tw = (int(v) for v in tile_size)
        if th % PATCH or tw % PATCH or th <= 0 or tw <= 0:
            raise ValueError(f"tile_size must be positive multiples of {PATCH}, got {tuple(tile_size)}")
        if (enc_dim // enc_heads) % 4 or (dec_dim // dec_heads) % 4:
            raise ValueError("head dimensions must be divisible by 4 for 2D RoPE")
        self.hooks = hooks
        self.max_disparity = float(max_disparity)
        self.disparity_scale = float(disparity_scale)
        self.tile_size = (th, tw)
        self.tile_overlap = float(tile_overlap)
        self.tile_batch = int(tile_batch)
        self.rope = RoPE2D(rope_base)

        self.patch_embed = nn.Conv2d(3, enc_dim, PATCH, stride=PATCH)
        self.enc_blocks = nn.ModuleList([EncoderBlock(enc_dim, enc_heads, mlp_ratio, self.rope) for _ in range(enc_depth)])
        self.enc_norm = nn.LayerNorm(enc_dim)
        self.decoder_embed = nn.Linear(enc_dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.dec_blocks = nn.ModuleList([DecoderBlock(dec_dim, dec_heads, mlp_ratio, self.rope) for _ in range(dec_depth)])
        self.dec_norm = nn.LayerNorm(dec_dim)
        self.recon_head = nn.Linear(dec_dim, PATCH * PATCH * 3)
        self.head = DPTHead(dec_dim, dpt_layer_dims, dpt_feature_dim, out_channels=2)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)

    # ----------------------------------------------------------------- building blocks
    def normalize(self, img: torch.Tensor) -> torch.Tensor:
        return (img - self.mean.to(img.dtype)) / self.std.to(img.dtype)

    def encode(self, img: torch.Tensor, keep: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised images -> (tokens B x Nv x C, positions B x Nv x 2); ``keep`` B x Nv indices of visible patches."""
        x = self.patch_embed(img)
        b, _, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = patch_positions(b, gh, gw, x.device)
        if keep is not None:
            x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
            pos = torch.gather(pos, 1, keep[..., None].expand(-1, -1, 2))
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos

    def encode_pair(self, left: torch.Tensor, right: torch.Tensor, mask_left: Optional[torch.Tensor] = None,
                    mask_right: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Both views through the shared encoder in one batch (inputs already normalised and padded)."""
        b, _, h, w = left.shape
        gh, gw = h // PATCH, w // PATCH
        n = gh * gw
        if (mask_left is None) != (mask_right is None):
            raise ValueError("give masks for both views or for neither")
        keep = None
        if mask_left is not None:
            for name, m in (("mask_left", mask_left), ("mask_right", mask_right)):
                if m.shape != (b, n) or m.dtype != torch.bool:
                    raise ValueError(f"{name} must be a bool tensor of shape {(b, n)} (B x patches), "
                                     f"got {tuple(m.shape)} {m.dtype}")
            masks = torch.cat([mask_left, mask_right])
            n_vis = (~masks).sum(1)
            if not bool((n_vis == n_vis[0]).all()) or int(n_vis[0]) == 0:
                raise ValueError("every mask must hide the same number of patches and leave at least one visible")
            # stable sort puts visible patches first, in raster order
            keep = torch.sort(masks.to(torch.uint8), dim=1, stable=True).indices[:, : int(n_vis[0])]
        tokens, pos = self.encode(torch.cat([left, right]), keep)
        return {"left": tokens[:b], "right": tokens[b:], "pos_left": pos[:b], "pos_right": pos[b:],
                "keep_left": None if keep is None else keep[:b], "keep_right": None if keep is None else keep[b:],
                "grid": torch.tensor([gh, gw])}

    def _fill(self, tokens: torch.Tensor, keep: Optional[torch.Tensor], n: int) -> torch.Tensor:
        """Put visible decoder tokens back at their places; masked places get the learned mask token."""
        if keep is None:
            return tokens
        b, _, c = tokens.shape
        full = self.mask_token.to(tokens.dtype).expand(b, n, c).clone()
        return full.scatter(1, keep[..., None].expand(-1, -1, c), tokens)

    def decode(self, query: torch.Tensor, qpos: torch.Tensor, memory: torch.Tensor, mpos: torch.Tensor
               ) -> List[torch.Tensor]:
        """Decoder outputs at the DPT hooks (the last one layer-normed)."""
        taps = []
        x = query
        for i, blk in enumerate(self.dec_blocks):
            x = blk(x, memory, qpos, mpos)
            if i in self.hooks:
                taps.append(x)
        taps[-1] = self.dec_norm(taps[-1])
        return taps

    def decode_pair(self, feats: Dict[str, torch.Tensor], reconstruct: bool = False) -> Dict[str, torch.Tensor]:
        """Encoder features of a pair -> disparity/confidence of the left view (+ reconstructions of both)."""
        gh, gw = (int(v) for v in feats["grid"])
        n = gh * gw
        b = feats["left"].shape[0]
        fl, fr = self.decoder_embed(feats["left"]), self.decoder_embed(feats["right"])
        full_pos = patch_positions(b, gh, gw, fl.device)
        ql = self._fill(fl, feats["keep_left"], n)
        if reconstruct:
            # left queries read the right view; the mirror pass reads the left view (one batch)
            qr = self._fill(fr, feats["keep_right"], n)
            taps = self.decode(torch.cat([ql, qr]), torch.cat([full_pos, full_pos]),
                               torch.cat([fr, fl]), torch.cat([feats["pos_right"], feats["pos_left"]]))
            recon = self.recon_head(taps[-1])
            taps = [t[:b] for t in taps]
        else:
            taps = self.decode(ql, full_pos, fr, feats["pos_right"])
        raw = self.head(taps, gh, gw).float()
        conf_logit = raw[:, 1:2]
        out = {
            "disparity": self.disparity_scale * F.softplus(raw[:, 0:1]),
            "conf_logit": conf_logit,
            "confidence": torch.sigmoid(conf_logit / 3.0),
        }
        if reconstruct:
            out["recon_left"], out["recon_right"] = recon[:b], recon[b:]
        return out

    # ------------------------------------------------------------------- public API
    def forward(self, left: torch.Tensor, right: torch.Tensor, mask_left: Optional[torch.Tensor] = None,
                mask_right: Optional[torch.Tensor] = None, reconstruct: bool = False) -> Dict[str, torch.Tensor]:
        check_inputs(left, right)
        h, w = left.shape[-2:]
        ph, pw = (-h) % PATCH, (-w) % PATCH
        if (ph or pw) and mask_left is not None:
            raise ValueError(f"masked training needs image sides that are multiples of {PATCH}, got {h}x{w}")
        left, right = self.normalize(left), self.normalize(right)
        if ph or pw:
            left = F.pad(left, (0, pw, 0, ph), mode="replicate")
            right = F.pad(right, (0, pw, 0, ph), mode="replicate")
        feats = self.encode_pair(left, right, mask_left, mask_right)
        out = self.decode_pair(feats, reconstruct=reconstruct)
        if ph or pw:
            for k in ("disparity", "conf_logit", "confidence"):
                out[k] = out[k][..., :h, :w]
        return out

    @torch.no_grad()
    def infer(self, left: torch.Tensor, right: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Tiled inference: overlapping tiles of ``tile_size`` fused with confidence weights.

        Tiles start at offsets spread evenly so neighbours overlap by at least
        ``tile_overlap`` (0.7 default, as in the MaDis code). Each pixel's disparity
        is the average of the tiles covering it weighted by ``exp(-s)`` =
        ``exp(6 * confidence - 3)`` (the Laplacian precision). Images smaller than a
        tile in either side are UPSCALED (bilinear, one factor for both axes, so the
        aspect ratio is kept) until they cover a tile, and the fused disparity is
        resized back and divided by the horizontal scale factor. Tiles run in batches
        of ``tile_batch``.
        """
        check_inputs(left, right)
        b, _, h, w = left.shape
        th, tw = self.tile_size
        scale = max(th / h, tw / w, 1.0)
        if scale > 1.0:
            hs, ws = max(th, int(math.ceil(h * scale))), max(tw, int(math.ceil(w * scale)))
            left = F.interpolate(left, size=(hs, ws), mode="bilinear", align_corners=False)
            right = F.interpolate(right, size=(hs, ws), mode="bilinear", align_corners=False)
        else:
            hs, ws = h, w
        windows = [(y, x) for y in tile_offsets(hs, th, self.tile_overlap) for x in tile_offsets(ws, tw, self.tile_overlap)]
        num = left.new_zeros(b, 1, hs, ws, dtype=torch.float32)
        den = torch.zeros_like(num)
        conf_num = torch.zeros_like(num)
        per_batch = max(1, self.tile_batch // b)
        for i in range(0, len(windows), per_batch):
            chunk = windows[i:i + per_batch]
            lt = torch.cat([left[..., y:y + th, x:x + tw] for y, x in chunk])
            rt = torch.cat([right[..., y:y + th, x:x + tw] for y, x in chunk])
            out = self.forward(lt, rt)
            disp, conf = out["disparity"].float(), out["confidence"].float()
            weight = torch.exp(6.0 * conf - 3.0)
            for j, (y, x) in enumerate(chunk):
                sl = slice(j * b, (j + 1) * b)
                num[..., y:y + th, x:x + tw] += weight[sl] * disp[sl]
                conf_num[..., y:y + th, x:x + tw] += weight[sl] * conf[sl]
                den[..., y:y + th, x:x + tw] += weight[sl]
        disp, conf = num / den, conf_num / den
        if scale > 1.0:
            disp = F.interpolate(disp, size=(h, w), mode="bilinear", align_corners=False) * (w / ws)
            conf = F.interpolate(conf, size=(h, w), mode="bilinear", align_corners=False)
        return {"disparity": disp, "confidence": conf}


def check_inputs(left: torch.Tensor, right: torch.Tensor) -> None:
    if left.dim() != 4 or left.shape[1] != 3:
        raise ValueError(f"left must be B x 3 x H x W, got shape {tuple(left.shape)}")
    if right.shape != left.shape:
        raise ValueError(f"left and right shapes differ: {tuple(left.shape)} vs {tuple(right.shape)}")
    if not left.is_floating_point():
        raise ValueError(f"inputs must be float RGB in [0, 1], got {left.dtype}")


def default_hooks(dec_depth: int) -> List[int]:
    """Four decoder blocks spread over the depth, ending at the last: 12 -> [2, 5, 8, 11], 4 -> [0, 1, 2, 3]."""
    if dec_depth < 4:
        raise ValueError(f"the DPT head taps 4 decoder blocks; dec_depth must be >= 4, got {dec_depth}")
    return [int(round((k + 1) * dec_depth / 4)) - 1 for k in range(4)]


_CROCO_META = ModelMeta(family="croco-vit", size_divisor=PATCH, has_confidence=True, min_size=(PATCH, PATCH),
                        own_inference=True)


@register_model("croco-vit-base", family="croco-vit", meta=_CROCO_META,
                description="MaDis-Stereo paper scale: ViT-B encoder (768/12/12), 12x768 decoder, DPT 256",
                enc_dim=768, enc_depth=12, enc_heads=12, dec_dim=768, dec_depth=12, dec_heads=12,
                dpt_layer_dims=(96, 192, 384, 768), dpt_feature_dim=256, tile_size=(352, 704))
@register_model("croco-vit-small", family="croco-vit", meta=_CROCO_META,
                description="ViT-S encoder (384/12/6), 8x384 decoder, DPT 128",
                enc_dim=384, enc_depth=12, enc_heads=6, dec_dim=384, dec_depth=8, dec_heads=6,
                dpt_layer_dims=(48, 96, 192, 384), dpt_feature_dim=128, tile_size=(352, 704))
@register_model("croco-vit-tiny", family="croco-vit", meta=_CROCO_META,
                description="CPU smoke-run size: 192-dim, 4 encoder + 4 decoder blocks, DPT 64",
                enc_dim=192, enc_depth=4, enc_heads=3, dec_dim=192, dec_depth=4, dec_heads=3,
                dpt_layer_dims=(24, 48, 96, 192), dpt_feature_dim=64, tile_size=(128, 256))
def build_croco_vit(**cfg) -> CrocoViTStereo:
    cfg = dict(cfg)
    for key in ("dpt_layer_dims", "tile_size", "dpt_hooks"):
        if cfg.get(key) is not None:
            cfg[key] = [int(v) for v in cfg[key]]
    return CrocoViTStereo(**cfg)
