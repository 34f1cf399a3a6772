"""Self-supervised adaptation with and without, in one table (issue 17).

    python benchmarks/adaptation.py                         # student, every protocol
    python benchmarks/adaptation.py --models student,student-lite --json adapt.json
    python benchmarks/adaptation.py --gap        # where the shifted domain's errors come from
    python benchmarks/adaptation.py --ceiling    # what ground truth could do there (no adaptation)

Protocols (ground truth is read only to *evaluate*, never by the adaptation, whose
data are ``UnlabeledPair`` s: images only):

- transductive: adapt on the Motorcycle pair alone, then evaluate on it (the usual
  test-time-adaptation protocol), within ``--moto-budget`` seconds of adaptation;
- inductive: the shifted synthetic domain (``madis_core.adaptation.shifted_domain``:
  another camera's blur, vignetting, gamma, noise and gain, a narrower baseline and
  weaker textures); adapt on ``--adapt-pairs`` pairs, evaluate on ``--eval-pairs``
  other pairs (another seed);
- what it costs: each adapted model on the project's synthetic test set, before/after.

Rows give bad-2 and EPE before and after, and the relative change of bad-2. Adapted
weights and their cards are written under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import torch  # noqa: E402

from madis_core.adaptation.adapter import AdaptConfig, Adapter  # noqa: E402
from madis_core.adaptation.card import write_adapted  # noqa: E402
from madis_core.adaptation.shifted_domain import ADAPT_SEED, EVAL_SEED, shifted_samples, unlabeled  # noqa: E402
from madis_core.adaptation.sources import MotorcycleSource, load_pairs  # noqa: E402
from madis_core.backends.torch_backend import TorchBackend  # noqa: E402
from madis_core.checkpoint import load_registry_model  # noqa: E402
from madis_core.data import build_dataset  # noqa: E402
from madis_core.estimator import StereoEstimator  # noqa: E402
from madis_core.evaluate import evaluate  # noqa: E402


def score(model, samples) -> dict:
    r = evaluate(StereoEstimator(TorchBackend(model, device="cpu")), samples, warmup=False)
    model.train()  # the backend put it in eval mode; the adapter sets its own modes
    return {"bad_2": r["bad_2"], "epe": r["epe"], "bad_1": r["bad_1"]}


def adapt(name: str, pairs, config: AdaptConfig, out: str, data: str) -> tuple:
    """Adapt a fresh copy of ``name`` on ``pairs``; returns (model, adapter)."""
    model = load_registry_model(name)
    adapter = Adapter(model, config)
    before = adapter.self_supervised_loss(pairs)
    adapter.run(pairs)
    after = adapter.self_supervised_loss(pairs)
    facts = {"start": name, "data": data, "pairs": len(pairs), "sizes": f"{pairs[0].left.shape[1]}x"
             f"{pairs[0].left.shape[0]}", "steps": adapter.steps_done, "seconds": adapter.seconds,
             "cpu_seconds": adapter.cpu_seconds, "seconds_total": adapter.seconds, "threads": torch.get_num_threads(), "device": "cpu",
             "config": config.as_dict(), "self_supervised_before": before, "self_supervised_after": after,
             "command": "python benchmarks/adaptation.py " + " ".join(sys.argv[1:])}
    write_adapted(adapter.export(), out, facts)
    return adapter.export(), adapter


def row(protocol, model, data, adapter, before, after) -> dict:
    rel = 100.0 * (after["bad_2"] - before["bad_2"]) / max(before["bad_2"], 1e-9)
    return {"protocol": protocol, "model": model, "eval": data, "steps": adapter.steps_done if adapter else 0,
            "adapt_s": adapter.seconds if adapter else 0.0, "adapt_cpu_s": adapter.cpu_seconds if adapter else 0.0,
            "bad_2_before": before["bad_2"],
            "bad_2_after": after["bad_2"], "bad_2_rel_pct": rel, "epe_before": before["epe"], "epe_after": after["epe"]}


def print_table(rows) -> None:
    print("| protocol | model | evaluated on | steps | adapt CPU-s | bad-2 % before | bad-2 % after | bad-2 change | "
          "EPE before | EPE after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['protocol']} | {r['model']} | {r['eval']} | {r['steps']} | {r['adapt_cpu_s']:.0f} | "
              f"{r['bad_2_before']:.2f} | {r['bad_2_after']:.2f} | {r['bad_2_rel_pct']:+.1f} % | "
              f"{r['epe_before']:.3f} | {r['epe_after']:.3f} |")


def check_domain(name: str, samples, blur: float = 0.0) -> None:
    """Is the shifted domain learnable without labels at all? Mean photometric error (both
    views Gaussian-smoothed by ``blur`` px first, as ``AdaptConfig.photometric_blur``) over
    the model's wrong (bad-2), non-occluded pixels: at the ground truth vs at its
    prediction; and over all non-occluded pixels at the ground truth shifted by a constant
    offset (a loss biased towards larger or smaller disparities has its minimum off zero)."""
    import numpy as np

    from madis_core.adaptation import losses as L
    from madis_core.adaptation.adapter import forward_padded, pair_to_tensors
    from madis_core.adaptation.shifted_domain import unlabeled

    model = load_registry_model(name).eval()
    offsets = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)
    at_gt, at_pred, by_offset, kept_gt, kept_pred = [], [], [], [], []
    for s, pair in zip(samples, unlabeled(samples)):
        left, right = pair_to_tensors(pair)
        gt = torch.from_numpy(np.nan_to_num(s["disparity"]))[None, None]
        noc = torch.from_numpy(s["noc"])[None, None]
        with torch.no_grad():
            d = forward_padded(model, left, right)["disparity"]
            d_right = forward_padded(model, *L.flip_pair(left, right))["disparity"].flip(-1)
        left, right = L.gaussian_blur(left, blur), L.gaussian_blur(right, blur)
        e_gt, inside = L.photometric_error(left, right, gt)
        e_pred, inside_pred = L.photometric_error(left, right, d)
        bad = ((d - gt).abs() > 2) & noc & inside
        at_gt.append(float(L.masked_mean(e_gt, bad)))
        at_pred.append(float(L.masked_mean(e_pred, bad)))
        kept = L.lr_consistency_mask(d, d_right) & inside_pred & inside  # where adaptation applies the loss
        kept_gt.append(float(L.masked_mean(e_gt, kept)))
        kept_pred.append(float(L.masked_mean(e_pred, kept)))
        row = []
        for o in offsets:
            e, ins = L.photometric_error(left, right, gt + o)
            row.append(float(L.masked_mean(e, noc & ins)))
        by_offset.append(row)
    curve = np.mean(by_offset, axis=0)
    print(f"shifted domain, {name}, photometric_blur {blur:g}: photometric error on its bad-2 non-occluded pixels: "
          f"at the ground truth {np.mean(at_gt):.4f}, at its prediction {np.mean(at_pred):.4f} (ratio "
          f"{np.mean(at_gt) / np.mean(at_pred):.3f}: the lower, the more a self-supervised loss can teach); "
          "at the ground truth + offset: " + ", ".join(f"{o:+g} px {c:.4f}" for o, c in zip(offsets, curve))
          + f" (minimum at {offsets[int(np.argmin(curve))]:+g} px); on its left-right-consistent pixels (where "
          f"adaptation applies the loss): at the ground truth {np.mean(kept_gt):.4f}, at its prediction "
          f"{np.mean(kept_pred):.4f} (ratio {np.mean(kept_gt) / np.mean(kept_pred):.3f}: near 1, the loss cannot tell "
          "the truth from the model where it is applied)")


def domain_gap(name: str, n: int) -> None:
    """bad-2 of ``name`` on the same held-out scenes through the benchmark's rig and through
    cameras with parts of it removed: how much of the domain's error is noise, how much the
    mismatch of the two cameras (no adaptation involved)."""
    from madis_core.adaptation.shifted_domain import IDEAL_CAMERA, SHIFTED_CAMERAS

    left, right = SHIFTED_CAMERAS
    quiet = [dict(c, shot=0.0, read=0.0) for c in SHIFTED_CAMERAS]
    noise_only = [dict(IDEAL_CAMERA, shot=c["shot"], read=c["read"]) for c in SHIFTED_CAMERAS]
    model = load_registry_model(name)
    print(f"| cameras ({name}, {n} held-out pairs of the shifted domain) | bad-2 % | EPE |\n| --- | --- | --- |")
    for label, cams in (("the benchmark's rig", SHIFTED_CAMERAS), ("two copies of its left camera", (left, left)),
                        ("the rig without sensor noise", quiet), ("ideal optics, the rig's sensor noise", noise_only),
                        ("ideal cameras", (IDEAL_CAMERA, IDEAL_CAMERA))):
        r = score(model, shifted_samples(n, EVAL_SEED, cameras=cams))
        print(f"| {label} | {r['bad_2']:.2f} | {r['epe']:.3f} |", flush=True)


def supervised_ceiling(name: str, steps: int, lr: float, batch: int, eval_every: int, n_eval: int) -> None:
    """The most any adaptation could be expected to reach on the shifted domain at this
    budget: fine-tune ``name`` *with ground truth* (the log loss of the student's training on
    its final disparity, as adaptation's synthetic batches use it; BatchNorm frozen as in
    adaptation) on fresh labelled pairs, and score the held-out
    pairs every ``eval_every`` steps. Two worlds: the domain's own scenes through its
    cameras (everything known), and the project's training scenes through its cameras
    (only the cameras known)."""
    import numpy as np

    from madis_core.adaptation.adapter import forward_padded, freeze_batchnorm
    from madis_core.adaptation.shifted_domain import (CEILING_SEED, SHIFTED_SIZE, shifted_generator,
                                                      through_cameras)
    from madis_core.data.synthetic import SyntheticStereoGenerator
    from madis_core.training.distill_losses import ground_truth_loss

    held_out = shifted_samples(n_eval, EVAL_SEED)
    worlds = (("the domain's scenes and cameras", lambda: shifted_generator(CEILING_SEED)),
              ("training scenes, the domain's cameras",
               lambda: SyntheticStereoGenerator(*SHIFTED_SIZE, 192.0, seed=CEILING_SEED, device="cpu",
                                                photometric=False)))
    for label, make in worlds:
        torch.manual_seed(0)
        model = load_registry_model(name)
        gen, noise = make(), torch.Generator().manual_seed(CEILING_SEED)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        curve = [(0, score(model, held_out)["bad_2"])]
        t0 = time.time()
        for step in range(1, steps + 1):
            model.train()
            freeze_batchnorm(model)
            b = through_cameras(gen.generate(batch), noise)
            out = forward_padded(model, b["left"], b["right"])
            loss = ground_truth_loss([out["disparity"]], b["disparity"], b["valid"], [1.0], "log")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % eval_every == 0:
                curve.append((step, score(model, held_out)["bad_2"]))
                print(f"  {label}: step {step} bad-2 {curve[-1][1]:.2f} ({time.time() - t0:.0f} s)", file=sys.stderr,
                      flush=True)
        after = [b for _, b in curve[1:]]
        best = min(after)
        tail = float(np.mean(after[-3:]))
        before = curve[0][1]
        print(f"| {label} | {steps} x {batch} | {before:.2f} | {best:.2f} ({100 * (best / before - 1):+.1f} %) | "
              f"{tail:.2f} ({100 * (tail / before - 1):+.1f} %) | "
              + " ".join(f"{b:.1f}" for _, b in curve[1:]) + " |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="student", help="comma-separated registry names or weights files")
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (CPU-seconds are reported)")
    ap.add_argument("--moto-steps", type=int, default=300)
    ap.add_argument("--moto-budget", type=float, default=300.0, help="CPU-seconds of adaptation at most (5 CPU-min)")
    ap.add_argument("--adapt-pairs", type=int, default=16)
    ap.add_argument("--eval-pairs", type=int, default=16)
    ap.add_argument("--shift-steps", type=int, default=300)
    ap.add_argument("--skip", default="", help="comma-separated protocols to skip: transductive,inductive")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="AdaptConfig field for both")
    ap.add_argument("--out", default="runs/adaptation_bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--check-domain", action="store_true", help="only the shifted domain's learnability check")
    ap.add_argument("--gap", action="store_true", help="only the shifted domain's error by camera component")
    ap.add_argument("--ceiling", action="store_true", help="only the supervised ceiling on the shifted domain")
    ap.add_argument("--ceiling-steps", type=int, default=800, help="--ceiling: fine-tuning steps per world")
    ap.add_argument("--ceiling-lr", type=float, default=1e-4, help="--ceiling: Adam learning rate")
    ap.add_argument("--ceiling-batch", type=int, default=4, help="--ceiling: labelled pairs per step")
    ap.add_argument("--ceiling-every", type=int, default=100, help="--ceiling: score the held-out pairs every N steps")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)  # SGBM's proxy labels
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    if args.gap:
        for name in args.models.split(","):
            domain_gap(name, args.eval_pairs)
        return 0
    if args.ceiling:
        print(f"| ground truth from ({args.eval_pairs} held-out pairs of the shifted domain) | steps x batch | "
              "bad-2 % before | best | mean of the last 3 | every score |\n| --- | --- | --- | --- | --- | --- |")
        for name in args.models.split(","):
            supervised_ceiling(name, args.ceiling_steps, args.ceiling_lr, args.ceiling_batch, args.ceiling_every,
                               args.eval_pairs)
        return 0
    if args.check_domain:
        for name in args.models.split(","):
            for blur in (0.0, 1.0):
                check_domain(name, shifted_samples(args.eval_pairs, EVAL_SEED), blur)
        return 0
    os.makedirs(args.out, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    synthetic = build_dataset("synthetic-test")
    moto = build_dataset("motorcycle")
    shifted_eval = shifted_samples(args.eval_pairs, EVAL_SEED)
    rows = []
    t0 = time.time()
    for name in args.models.split(","):
        base = load_registry_model(name)
        base_syn = score(base, synthetic)
        label = os.path.basename(name).replace(".safetensors", "")
        if "transductive" not in skip:
            cfg = AdaptConfig(**{"steps": args.moto_steps, "cpu_budget_s": args.moto_budget, **overrides})
            pairs = load_pairs(MotorcycleSource())
            model, ad = adapt(name, pairs, cfg, os.path.join(args.out, f"{label}_motorcycle.safetensors"),
                              "motorcycle")
            rows.append(row("transductive", label, "Motorcycle", ad, score(base, moto), score(model, moto)))
            rows.append(row("transductive: cost", label, "synthetic-test", ad, base_syn, score(model, synthetic)))
            print(f"  [{time.time() - t0:.0f} s] {label} transductive done", file=sys.stderr, flush=True)
        if "inductive" not in skip:
            cfg = AdaptConfig(**{"steps": args.shift_steps, "batch": 2, **overrides})
            pairs = unlabeled(shifted_samples(args.adapt_pairs, ADAPT_SEED))
            model, ad = adapt(name, pairs, cfg, os.path.join(args.out, f"{label}_shifted.safetensors"),
                              f"shifted synthetic domain, seed {ADAPT_SEED}")
            rows.append(row("inductive", label, f"shifted domain, {args.eval_pairs} held-out pairs", ad,
                            score(base, shifted_eval), score(model, shifted_eval)))
            rows.append(row("inductive: cost", label, "synthetic-test", ad, base_syn, score(model, synthetic)))
            print(f"  [{time.time() - t0:.0f} s] {label} inductive done", file=sys.stderr, flush=True)
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
