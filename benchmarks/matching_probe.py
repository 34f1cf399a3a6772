"""Matching probe: can a model learn stereo matching from scratch on the easiest task?

    python benchmarks/matching_probe.py --model student --steps 600          # ~1.5 CPU-minutes
    python benchmarks/matching_probe.py --model madis-tiny --steps 600 --threads 1
    python benchmarks/matching_probe.py --model croco-vit-tiny --steps 800   # ~17 CPU-minutes
    python benchmarks/matching_probe.py --model croco-vit-small --device cuda --steps 3000

Random-dot stereograms (3x3-smoothed uniform noise, no other cue) of one fronto-parallel
plane per pair, disparity uniform in 4-60 px, 128x256: the only way to beat the
constant guess is to match the two views. Trains the untrained registry model with
AdamW and an L1 loss on its full-resolution disparity and prints the end-point error
on 16 held-out pairs beside the constant guess's (the mean absolute deviation of the
held-out disparities) every ``--every`` steps. A quick check, before a long run, that
an architecture or a change to it can learn matching at all. The CroCo ViT gets
``disparity_scale=8`` as in its CPU training config; the MaDis matching family trains its
BatchNorm statistics here (``freeze_bn=False``: from scratch there are none to keep).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import madis_core  # noqa: F401  (first: the thread policy, madis_core/runtime.py)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from madis_core.models import build_model  # noqa: E402
from madis_core.models.registry import count_parameters, get_entry  # noqa: E402

H, W, MARGIN = 128, 256, 64


def random_dot_planes(n: int, gen: torch.Generator):
    """``n`` pairs: left(x) = right(x - d), one ``d`` in [4, 60) px per pair."""
    d = torch.rand(n, generator=gen) * 56 + 4
    base = F.avg_pool2d(torch.rand(n, 3, H, W + MARGIN, generator=gen), 3, 1, 1)
    xs = torch.arange(W, dtype=torch.float32).view(1, 1, W)
    gy = (torch.arange(H, dtype=torch.float32).view(1, H, 1) / (H - 1) * 2 - 1).expand(n, H, W)

    def view(offset: torch.Tensor) -> torch.Tensor:  # base sampled at x + offset
        gx = ((xs + offset.view(-1, 1, 1)) / (W + MARGIN - 1) * 2 - 1).expand(n, H, W)
        return F.grid_sample(base, torch.stack([gx, gy], -1), align_corners=True)

    right = view(torch.full((n,), float(MARGIN)))
    left = view(MARGIN - d)
    return left, right, d.view(n, 1, 1, 1).expand(n, 1, H, W)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="student")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None, help="default: 3e-4 for the transformers, 1e-3 for the students")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    family = get_entry(args.model).family
    overrides = {"croco-vit": {"disparity_scale": 8.0}, "madis": {"freeze_bn": False}}.get(family, {})
    model = build_model(args.model, **overrides).to(args.device)
    transformer = family in ("croco-vit", "madis")
    lr = args.lr if args.lr is not None else (3e-4 if transformer else 1e-3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05 if transformer else 1e-4)
    gen = torch.Generator().manual_seed(args.seed + 1)
    vl, vr, vd = (t.to(args.device) for t in random_dot_planes(16, torch.Generator().manual_seed(123)))
    guess = (vd - vd.mean()).abs().mean().item()
    print(f"{args.model}: {count_parameters(model) / 1e6:.2f} M params, lr {lr:g}, "
          f"batch {args.batch}, {H}x{W}; constant guess EPE {guess:.2f} px", flush=True)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / max(args.warmup, 1))
        left, right, disp = (t.to(args.device) for t in random_dot_planes(args.batch, gen))
        loss = (model(left, right)["disparity"] - disp).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                epe = (model(vl, vr)["disparity"] - vd).abs().mean().item()
            model.train()
            print(f"step {step:5d}  train L1 {loss.item():6.2f}  held-out EPE {epe:6.2f} px  "
                  f"(constant guess {guess:.2f})  {time.time() - t0:6.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
