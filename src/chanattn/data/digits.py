"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), embedded: no download."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .._optional import require
from .spec import DataBundle, DatasetSpec, Split

__all__ = ["DIGITS_CROP_PADDING", "DIGITS_TEST_FRACTION", "load_digits_bundle"]

DIGITS_TEST_FRACTION = 0.2
# One pixel of an 8x8 digit is 1/8 of its width, as 4 pixels are of a 32x32 CIFAR image (the CIFAR
# reference pads by 4). The 8x8 images are 4x4-block counts of 32x32 bitmaps, so 1 pixel here is the
# same 4-pixel shift of the original drawing, and the outer columns are almost always blank, so a
# one-pixel shift moves the digit without cutting its strokes. Two pixels (25 %) would.
DIGITS_CROP_PADDING = 1


@lru_cache(maxsize=1)
def _split_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    datasets = require("sklearn.datasets", "the digits data set (scikit-learn's, embedded)")
    load_digits = datasets.load_digits
    train_test_split = require("sklearn.model_selection", "the digits split").train_test_split

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    # A fixed split (random_state=0), stratified so that both halves keep the class proportions.
    train_idx, test_idx = train_test_split(index, test_size=DIGITS_TEST_FRACTION, stratify=labels,
                                           random_state=0, shuffle=True)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def load_digits_bundle() -> DataBundle:
    """The digits as float32 (N, 1, 8, 8) in [0, 1] (pixel counts 0..16 divided by 16), split 80/20.

    The split is stratified and fixed (``random_state=0``): 1437 train and 360 test images, the
    same for every run and every seed. mean/std are those of the train pixels.
    """
    x_train, y_train, x_test, y_test = _split_arrays()
    spec = DatasetSpec(
        name="digits", num_classes=10, in_chans=1, image_size=(8, 8),
        mean=(float(x_train.mean(dtype=np.float64)),), std=(float(x_train.std(dtype=np.float64)),),
        classes=tuple(str(d) for d in range(10)), crop_padding=DIGITS_CROP_PADDING, hflip=False)
    return DataBundle(spec=spec,
                      train=Split(torch.from_numpy(x_train.copy()), torch.from_numpy(y_train.copy())),
                      test=Split(torch.from_numpy(x_test.copy()), torch.from_numpy(y_test.copy())))
