"""Unlabeled stereo pairs for adaptation: the one door data comes in by.

Every source yields ``UnlabeledPair`` objects, which have no field for ground truth:
whatever a reader loads (a Middlebury disparity, a folder's ``disp/``, a bag's ground
truth topic) is dropped *here*, before the adapter sees anything, and folder sources
do not even open ``disp/``. ``madis adapt --data`` takes:

    motorcycle            the Middlebury pair scikit-image ships (images only)
    folder:ROOT           ROOT/left/NAME.png + ROOT/right/NAME.png, already rectified
                          (ROOT/calib.txt optional: disparity needs no calibration)
    BAG                   a rosbag2 directory or .mcap/.db3 file: the stereo topics,
                          decoding and pairing of ``madis-bag eval`` (needs rosbags)

A source is a plain iterable; ``load_pairs(spec, limit)`` materialises one into a
list, the adapter's working set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

import numpy as np


@dataclass(frozen=True)
class UnlabeledPair:
    """One rectified stereo pair and nothing else (no disparity, no masks)."""

    left: np.ndarray    # H x W x 3 uint8/uint16 RGB, left (reference) view
    right: np.ndarray   # same shape and dtype, right view
    name: str           # where it came from (file stem, bag stamp), for the card

    def __post_init__(self):
        from madis_core.data.sample import as_rgb

        object.__setattr__(self, "left", as_rgb(self.left, f"{self.name}: left"))
        object.__setattr__(self, "right", as_rgb(self.right, f"{self.name}: right"))
        if self.left.shape != self.right.shape or self.left.dtype != self.right.dtype:
            raise ValueError(f"{self.name}: left {self.left.shape}/{self.left.dtype} and right "
                             f"{self.right.shape}/{self.right.dtype} differ")


class MotorcycleSource:
    """The Middlebury Motorcycle pair, images only (its ground truth is never loaded here)."""

    description = "motorcycle (Middlebury 2014, scikit-image copy, 741x500)"

    def __iter__(self) -> Iterator[UnlabeledPair]:
        from madis_core.data.motorcycle import _motorcycle_arrays

        left, right, _ = _motorcycle_arrays()
        yield UnlabeledPair(left.copy(), right.copy(), "motorcycle")


class FolderSource:
    """``ROOT/left/*`` and ``ROOT/right/*`` with matching file stems; ``disp/`` is ignored."""

    def __init__(self, root: str | os.PathLike):  # root: the folder holding left/ and right/
        from madis_core.data.readers import IMAGE_EXTS

        self.root = Path(root).expanduser()
        left_dir, right_dir = self.root / "left", self.root / "right"
        if not left_dir.is_dir() or not right_dir.is_dir():
            raise FileNotFoundError(f"folder source: {self.root} needs left/ and right/ image folders")
        rights = {p.stem: p for p in right_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
        self.entries = []
        for left in sorted(p for p in left_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS):
            if left.stem not in rights:
                raise FileNotFoundError(f"folder source: {left} has no matching image in {right_dir}")
            self.entries.append((left, rights[left.stem]))
        if not self.entries:
            raise FileNotFoundError(f"folder source: no images in {left_dir}")
        self.description = f"folder:{self.root} ({len(self.entries)} pairs)"

    def __iter__(self) -> Iterator[UnlabeledPair]:
        from madis_core.io import read_image

        for left, right in self.entries:
            yield UnlabeledPair(read_image(left), read_image(right), left.stem)


#: entry-point group of data-source plugins: classes with ``accepts(spec) -> bool`` and a
#: ``__init__(spec)`` that yield UnlabeledPair (madis_ros registers its rosbag2 reader here)
PAIR_SOURCES_GROUP = "madis_core.pair_sources"


def source_plugins() -> List[type]:
    """The installed data-source plugins (``PAIR_SOURCES_GROUP`` entry points)."""
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group=PAIR_SOURCES_GROUP) if hasattr(eps, "select") else eps.get(PAIR_SOURCES_GROUP, [])
    return [ep.load() for ep in group]


def looks_like_rosbag2(spec: str) -> bool:
    """Is ``spec`` a rosbag2: a directory with metadata.yaml, or a .mcap/.db3 file."""
    p = Path(spec).expanduser()
    return p.suffix in (".mcap", ".db3") or (p.is_dir() and (p / "metadata.yaml").is_file())


def build_source(spec: str) -> Iterable[UnlabeledPair]:
    """``motorcycle``, ``folder:ROOT`` or a bag path (see the module docstring)."""
    spec = str(spec).strip()
    if spec == "motorcycle":
        return MotorcycleSource()
    if spec.startswith("folder:"):
        return FolderSource(spec[len("folder:"):])
    for plugin in source_plugins():
        if plugin.accepts(spec):
            return plugin(spec)
    p = Path(spec).expanduser()
    if looks_like_rosbag2(spec):
        raise RuntimeError(f"--data {spec!r} is a rosbag2, and reading bags needs madis_ros and rosbags installed "
                           f"(no {PAIR_SOURCES_GROUP} plugin accepted it)")
    if p.is_dir() and (p / "left").is_dir():
        return FolderSource(p)
    raise ValueError(f"--data {spec!r}: expected motorcycle, folder:ROOT or a rosbag2 (directory with "
                     "metadata.yaml, or a .mcap/.db3 file)")


def load_pairs(source: Iterable[UnlabeledPair], limit: Optional[int] = None) -> List[UnlabeledPair]:
    """The first ``limit`` pairs of ``source`` (all if None); every item must be an UnlabeledPair."""
    pairs: List[UnlabeledPair] = []
    for item in source:
        if not isinstance(item, UnlabeledPair):
            raise TypeError(f"adaptation data must be UnlabeledPair objects (no ground truth), got {type(item).__name__}")
        pairs.append(item)
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise ValueError(f"no stereo pairs in {getattr(source, 'description', source)}")
    return pairs
