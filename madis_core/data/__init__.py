"""Stereo data: benchmark readers, the Motorcycle pair, the procedural synthetic
generator, augmentation and the training stream.

    from madis_core.data import build_dataset, load_motorcycle, SyntheticStereoGenerator, build_train_loader

Importing this package does not import torch-heavy modules until they are used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from madis_core.data.datasets import DATASET_KINDS, build_dataset, parse_spec, synthetic_test_set
from madis_core.data.motorcycle import MOTORCYCLE_CAMERA, load_motorcycle
from madis_core.data.readers import (ETH3DDataset, FolderDataset, KittiDataset, MiddleburyDataset, SceneFlowDataset,
                                     read_disparity)
from madis_core.data.sample import InMemoryDataset, Sample, StereoDataset, lr_consistency_noc, make_sample

if TYPE_CHECKING:  # pragma: no cover
    from madis_core.data.stream import TrainStream, build_train_loader
    from madis_core.data.synthetic import SyntheticStereoGenerator

_LAZY = {"SyntheticStereoGenerator": "madis_core.data.synthetic", "build_train_loader": "madis_core.data.stream",
         "TrainStream": "madis_core.data.stream"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'madis_core.data' has no attribute {name!r}")


__all__ = ["DATASET_KINDS", "ETH3DDataset", "FolderDataset", "InMemoryDataset", "KittiDataset", "MOTORCYCLE_CAMERA",
           "MiddleburyDataset", "Sample", "SceneFlowDataset", "StereoDataset", "SyntheticStereoGenerator",
           "TrainStream", "build_dataset", "build_train_loader", "load_motorcycle", "lr_consistency_noc",
           "make_sample", "parse_spec", "read_disparity", "synthetic_test_set"]
