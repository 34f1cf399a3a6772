"""``build_dataset(spec)``: one string names any evaluation set.

    motorcycle                     the skimage Middlebury pair (741 x 500)
    synthetic-test[:N]             the fixed seeded synthetic test set (16 pairs unless N)
    sceneflow:ROOT[?pass=final&subset=FlyingThings3D&split=TEST]
    kitti2012:ROOT   kitti2015:ROOT
    middlebury:ROOT[?right=im1E&rectification=imperfect]
    eth3d:ROOT[?gt_root=DIR]
    folder:ROOT[?max_disparity=192]

The synthetic test set: ``SYNTHETIC_TEST_SIZE`` = 16 pairs of 256 x 512, disparities
up to 192 px, generated on the CPU by ``SyntheticStereoGenerator`` with its default
options (per-view photometric changes on) and seed ``SYNTHETIC_TEST_SEED``; pair i is
``generate(1, seed=i)``, so ``synthetic-test:N`` is a prefix of any larger set.
Images are rounded to uint8; ``noc`` is the exact non-occlusion mask.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from madis_core.data.motorcycle import motorcycle_dataset
from madis_core.data.readers import ETH3DDataset, FolderDataset, KittiDataset, MiddleburyDataset, SceneFlowDataset
from madis_core.data.sample import InMemoryDataset, Sample, StereoDataset, make_sample

SYNTHETIC_TEST_SIZE = 16
SYNTHETIC_TEST_SHAPE = (256, 512)
SYNTHETIC_TEST_MAX_DISPARITY = 192.0
SYNTHETIC_TEST_SEED = 0x7E5757  # kept apart from the small seeds training runs use


def tensor_batch_to_samples(batch: Dict[str, "torch.Tensor"], names: Sequence[str]) -> list[Sample]:
    """Generator output (float tensors) -> uint8 sample dicts."""
    out = []
    for i, name in enumerate(names):
        left = (batch["left"][i].permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        right = (batch["right"][i].permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        disp = batch["disparity"][i, 0].cpu().numpy().astype(np.float32)
        valid = batch["valid"][i, 0].cpu().numpy()
        noc = ~batch["occlusion"][i, 0].cpu().numpy() if "occlusion" in batch else None
        s = make_sample(left, right, disp, name, valid=valid, noc=noc)
        if "disparity_right" in batch:
            s["disparity_right"] = batch["disparity_right"][i, 0].cpu().numpy().astype(np.float32)
        out.append(s)
    return out


@functools.lru_cache(maxsize=8)
def _synthetic_samples(n: int, height: int, width: int, max_disparity: float, seed: int) -> Tuple[Sample, ...]:
    import torch

    from madis_core.data.synthetic import SyntheticStereoGenerator

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-identical regardless of the caller's thread count
    try:
        gen = SyntheticStereoGenerator(height, width, max_disparity, seed=seed, device="cpu")
        samples = []
        for i in range(n):
            samples += tensor_batch_to_samples(gen.generate(1, seed=i), [f"synthetic-{seed:x}-{i:04d}"])
    finally:
        torch.set_num_threads(threads)
    return tuple(samples)


def synthetic_test_set(n: int = SYNTHETIC_TEST_SIZE, height: int = SYNTHETIC_TEST_SHAPE[0],
                       width: int = SYNTHETIC_TEST_SHAPE[1], max_disparity: float = SYNTHETIC_TEST_MAX_DISPARITY,
                       seed: int = SYNTHETIC_TEST_SEED) -> InMemoryDataset:
    if n < 1:
        raise ValueError(f"synthetic-test: the number of pairs must be >= 1, got {n}")
    samples = _synthetic_samples(int(n), int(height), int(width), float(max_disparity), int(seed))
    name = "synthetic-test" if (n, height, width, max_disparity, seed) == (
        SYNTHETIC_TEST_SIZE, *SYNTHETIC_TEST_SHAPE, SYNTHETIC_TEST_MAX_DISPARITY, SYNTHETIC_TEST_SEED) else f"synthetic-test:{n}"
    return InMemoryDataset(name, list(samples), max_disparity=max_disparity)


def parse_spec(spec: str) -> Tuple[str, str, Dict[str, str]]:
    """``kind[:arg][?k=v&k=v]`` -> (kind, arg, options)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"dataset spec must be a non-empty string, got {spec!r}")
    body, _, query = spec.strip().partition("?")
    kind, _, arg = body.partition(":")
    options: Dict[str, str] = {}
    for item in filter(None, query.split("&")):
        k, eq, v = item.partition("=")
        if not eq or not k:
            raise ValueError(f"dataset spec {spec!r}: option {item!r} is not key=value")
        options[k] = v
    return kind.lower(), arg, options


def _needs_root(kind: str, arg: str) -> str:
    if not arg:
        raise ValueError(f"dataset spec {kind!r} needs a root directory: {kind}:ROOT")
    return arg


def _take(options: Dict[str, str], allowed: Dict[str, Callable[[str], object]], kind: str) -> Dict[str, object]:
    unknown = set(options) - set(allowed)
    if unknown:
        raise ValueError(f"dataset {kind}: unknown options {sorted(unknown)}; allowed: {sorted(allowed) or 'none'}")
    return {k: allowed[k](v) for k, v in options.items()}


DATASET_KINDS = ("motorcycle", "synthetic-test", "sceneflow", "kitti2012", "kitti2015", "middlebury", "eth3d", "folder")


def build_dataset(spec: str) -> StereoDataset:
    """A Sequence of sample dicts for ``spec`` (see the module docstring)."""
    kind, arg, opts = parse_spec(spec)
    if kind == "motorcycle":
        _take(opts, {}, kind)
        if arg:
            raise ValueError(f"dataset 'motorcycle' takes no argument, got {arg!r}")
        return motorcycle_dataset()
    if kind == "synthetic-test":
        kw = _take(opts, {"height": int, "width": int, "max_disparity": float, "seed": int}, kind)
        try:
            n = int(arg) if arg else SYNTHETIC_TEST_SIZE
        except ValueError:
            raise ValueError(f"synthetic-test:N needs an integer N, got {arg!r}") from None
        return synthetic_test_set(n, **kw)
    if kind == "sceneflow":
        kw = _take(opts, {"pass": str, "subset": str, "split": str}, kind)
        if "pass" in kw:
            kw["passes"] = kw.pop("pass")
        return SceneFlowDataset(_needs_root(kind, arg), **kw)
    if kind in ("kitti2012", "kitti2015"):
        _take(opts, {}, kind)
        return KittiDataset(_needs_root(kind, arg), year=int(kind[-4:]))
    if kind == "middlebury":
        return MiddleburyDataset(_needs_root(kind, arg), **_take(opts, {"right": str, "rectification": str}, kind))
    if kind == "eth3d":
        return ETH3DDataset(_needs_root(kind, arg), **_take(opts, {"gt_root": str}, kind))
    if kind == "folder":
        return FolderDataset(_needs_root(kind, arg), **_take(opts, {"max_disparity": float}, kind))
    raise ValueError(f"unknown dataset kind {kind!r} in spec {spec!r}; known: {', '.join(DATASET_KINDS)}")
