"""The training data stream: weighted mix of the synthetic generator and datasets on
disk, cropped and augmented, as batches of tensors.

    stream = build_train_loader(
        {"sources": [{"type": "synthetic", "weight": 1.0, "max_disparity": 192},
                     {"type": "sceneflow", "root": "/data/sf", "weight": 0.5, "pass": "final"}],
         "augment": {"yjitter_prob": 0.5},      # or False; defaults in augment.AUGMENT_DEFAULTS
         "max_disparity": 192,                   # optional: ground truth at or above it is invalid
                                                 # (and the synthetic sources' default range)
         "prefetch": 1},                         # optional: batches made ahead while the model trains
        batch_size=8, crop=(256, 512), seed=0, rank=0, world_size=1, device="cpu")
    batch = next(stream)   # left, right: B x 3 x H x W float [0, 1]; disparity: B x 1 x H x W
                           # (0 where invalid); valid: B x 1 x H x W bool

Batch ``k`` is a pure function of ``(seed, rank, k)`` (``stream.batch(k)``), so a
resumed run sees exactly the batches it would have seen: save ``stream.state_dict()``
(the number of batches drawn) and ``load_state_dict`` it after restart. Ranks draw
different data. Synthetic pairs are generated directly at the crop size (the generator
already varies scale and disparity range); dataset samples get the random scale + crop.

Batches are assembled on one data thread (single torch thread) while the synthetic
generator renders on as many threads as the caller's ``torch.get_num_threads()``
(``render_threads`` in a synthetic source overrides it); with ``prefetch`` > 0 the
next batches are made while the caller trains. Call ``close()`` to stop the thread.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from madis_core.data.augment import augment_batch, augment_options, random_scale_crop
from madis_core.data.synthetic import DEFAULT_OPTIONS as SYNTHETIC_OPTIONS
from madis_core.data.synthetic import SyntheticStereoGenerator
from madis_core.data.threads import single_threaded_pool

log = logging.getLogger(__name__)

DATASET_TYPES = ("sceneflow", "kitti2012", "kitti2015", "middlebury", "eth3d", "folder", "motorcycle")
_KNOWN_KEYS = {"sources", "augment", "max_disparity", "prefetch"}


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def sample_to_tensors(sample: Mapping[str, Any], device: torch.device | str = "cpu") -> Dict[str, torch.Tensor]:
    """Numpy sample dict -> tensors 1 x C x H x W (images float [0, 1], disparity with 0
    where invalid, valid bool)."""
    out = {}
    for k in ("left", "right"):
        img = sample[k]
        scale = 255.0 if img.dtype == np.uint8 else 65535.0
        out[k] = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float() / scale
    disp = np.nan_to_num(sample["disparity"], nan=0.0).astype(np.float32)
    valid = np.asarray(sample["valid"], dtype=bool) & (disp > 0)
    out["disparity"] = torch.from_numpy(np.where(valid, disp, 0.0).astype(np.float32)).to(device)[None, None]
    out["valid"] = torch.from_numpy(valid).to(device)[None, None]
    return out


class _Source:
    def __init__(self, index: int, cfg: Mapping[str, Any], crop: Tuple[int, int], seed: int, rank: int,
                 device: torch.device, max_disparity: Optional[float] = None, threads: int = 1):
        cfg = dict(cfg)
        self.type = str(cfg.pop("type", "")).lower()
        self.weight = float(cfg.pop("weight", 1.0))
        if self.weight < 0 or not np.isfinite(self.weight):
            raise ValueError(f"data source {index} ({self.type}): weight must be >= 0, got {self.weight}")
        self.generator: Optional[SyntheticStereoGenerator] = None
        self.dataset = None
        if self.type == "synthetic":
            h, w = crop
            # default range: the stream's max_disparity (the model's), else 192 px at 512 px width
            default = float(max_disparity) if max_disparity else 192.0
            max_disp = float(cfg.pop("max_disparity", min(default, 0.375 * w if not max_disparity else w - 1)))
            if max_disp >= w:
                raise ValueError(f"synthetic source: max_disparity {max_disp:g} must be smaller than the crop width {w}")
            unknown = set(cfg) - set(SYNTHETIC_OPTIONS)
            if unknown:
                raise ValueError(f"synthetic source: unknown options {sorted(unknown)}; known: {sorted(SYNTHETIC_OPTIONS)}")
            for k, v in cfg.items():  # YAML gives lists for ranges
                if isinstance(v, list):
                    cfg[k] = tuple(v)
            cfg.setdefault("render_threads", threads)  # the caller's torch thread count
            self.generator = SyntheticStereoGenerator(h, w, max_disp, seed=_seed(seed, rank, index, 0x5E), device=device, **cfg)
        elif self.type in DATASET_TYPES:
            from madis_core.data.datasets import build_dataset

            root = cfg.pop("root", "")
            if self.type != "motorcycle" and not root:
                raise ValueError(f"data source {index} ({self.type}) needs a 'root' directory")
            query = "&".join(f"{k}={v}" for k, v in cfg.items())
            spec = self.type + (f":{root}" if root else "") + (f"?{query}" if query else "")
            self.dataset = build_dataset(spec)
        else:
            raise ValueError(f"data source {index}: unknown type {self.type!r}; use synthetic or one of {', '.join(DATASET_TYPES)}")


class TrainStream:
    """Infinite, resumable iterator of training batches (see the module docstring)."""

    def __init__(self, data_cfg: Mapping[str, Any], batch_size: int, crop: Sequence[int], seed: int,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(crop) != 2 or min(crop) < 16:
            raise ValueError(f"crop must be (height, width) with both >= 16, got {crop}")
        if not 0 <= rank < max(1, world_size):
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        data_cfg = dict(data_cfg or {})
        extra = set(data_cfg) - _KNOWN_KEYS
        if extra:
            log.warning("data config: ignoring unknown keys %s (known: %s)", sorted(extra), sorted(_KNOWN_KEYS))
        sources = data_cfg.get("sources") or [{"type": "synthetic"}]
        self.batch_size = int(batch_size)
        self.crop = (int(crop[0]), int(crop[1]))
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.device = torch.device(device)
        self.max_disparity = data_cfg.get("max_disparity")
        threads = torch.get_num_threads()
        self.sources: List[_Source] = [_Source(i, s, self.crop, self.seed, self.rank, self.device, self.max_disparity,
                                               threads) for i, s in enumerate(sources)]
        w = np.array([s.weight for s in self.sources])
        if w.sum() <= 0:
            raise ValueError("data sources: the weights sum to 0")
        self.weights = w / w.sum()
        self.augment = augment_options(data_cfg.get("augment", {}))
        self.prefetch = int(data_cfg.get("prefetch", 0))
        self._k = 0
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending: Dict[int, Future] = {}

    # --- pure batch function ---------------------------------------------------------------
    def batch(self, k: int) -> Dict[str, torch.Tensor]:
        """Batch number ``k`` of this (seed, rank) stream (made on the data thread)."""
        return self._submit(int(k)).result()

    def _submit(self, k: int) -> Future:
        # One data thread with a single torch thread assembles every batch (the synthetic
        # generator spreads its rendering over its own threads): batches are made one at
        # a time, in order, and the caller's OpenMP threads are left to the model.
        if self._pool is None:
            self._pool = single_threaded_pool(1, "madis-data")
        return self._pool.submit(self._make_batch, k)

    def _make_batch(self, k: int) -> Dict[str, torch.Tensor]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.rank, k, 0xDA7A]))
        B, (H, W) = self.batch_size, self.crop
        choice = rng.choice(len(self.sources), size=B, p=self.weights)
        out = {"left": torch.empty(B, 3, H, W, device=self.device), "right": torch.empty(B, 3, H, W, device=self.device),
               "disparity": torch.empty(B, 1, H, W, device=self.device),
               "valid": torch.empty(B, 1, H, W, dtype=torch.bool, device=self.device)}
        for si, src in enumerate(self.sources):
            pos = np.nonzero(choice == si)[0]
            if len(pos) == 0:
                continue
            if src.generator is not None:
                g = src.generator.generate(len(pos), seed=k)
                if len(pos) == B:  # the whole batch from one generator: no copy
                    out = {key: g[key] for key in out}
                    continue
                for key in out:
                    out[key][pos] = g[key]
            else:
                for p in pos:
                    sample = src.dataset[int(rng.integers(len(src.dataset)))]
                    t = random_scale_crop(sample_to_tensors(sample, self.device), self.crop, rng, self.augment)
                    for key in out:
                        out[key][p] = t[key][0]
        if self.augment is not None:
            out = augment_batch(out, rng, self.augment)
        valid = out["valid"] & (out["disparity"] > 0) & torch.isfinite(out["disparity"])
        if self.max_disparity is not None:
            valid &= out["disparity"] < float(self.max_disparity)
        out["valid"] = valid
        out["disparity"] = torch.where(valid, out["disparity"], torch.zeros_like(out["disparity"]))
        return out

    # --- iteration, resume ---------------------------------------------------------------------
    def __iter__(self) -> "TrainStream":
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        k = self._k
        self._k += 1
        fut = self._pending.pop(k, None) or self._submit(k)
        for j in range(k + 1, k + 1 + max(0, self.prefetch)):  # made while the caller trains
            if j not in self._pending:
                self._pending[j] = self._submit(j)
        return fut.result()

    def state_dict(self) -> Dict[str, int]:
        return {"batches": self._k, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            log.warning("data stream: resuming with seed %s, the checkpoint was made with seed %s", self.seed, state["seed"])
        self._k = int(state["batches"])
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def build_train_loader(data_cfg: Mapping[str, Any], batch_size: int, crop: Sequence[int], seed: int,
                       rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu") -> TrainStream:
    """The training stream (see the module docstring)."""
    return TrainStream(data_cfg, batch_size, crop, seed, rank, world_size, device)
