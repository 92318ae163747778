"""Data for the trainer: digits (embedded), CIFAR-10/100 (official archives), image folders.

``load_data(name, root)`` gives a DataBundle (spec, train and test Splits); ``BatchLoader`` yields
reproducible, sharded batches of a Split on a device; ``Augment`` is the reference augmentation
(zero-padded random crop, horizontal flip, normalisation) run batch-wise on that device.
"""

from __future__ import annotations

from .augment import Augment
from .cifar import CIFAR_SOURCES, CifarSource, read_cifar_pickle
from .imagefolder import ImageFolderDataset
from .loader import BatchLoader, epoch_seed
from .loading import dataset_spec, default_root, load_data
from .spec import DATASETS, DataBundle, DatasetSpec, Split

__all__ = [
    "CIFAR_SOURCES", "DATASETS", "Augment", "BatchLoader", "CifarSource", "DataBundle", "DatasetSpec",
    "ImageFolderDataset", "Split", "dataset_spec", "default_root", "epoch_seed", "load_data",
    "read_cifar_pickle",
]
