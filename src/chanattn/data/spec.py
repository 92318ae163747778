"""What a data set is (DatasetSpec) and what load_data returns (Split, DataBundle)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError

__all__ = ["DATASETS", "DataBundle", "DatasetSpec", "Split"]

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "imagefolder")


@dataclass(frozen=True)
class DatasetSpec:
    """The facts about a data set that a model and its augmentation need.

    Attributes:
        name: one of ``DATASETS``.
        num_classes: number of classes (labels are 0..num_classes-1).
        in_chans: image channels (1 for digits, 3 otherwise).
        image_size: (H, W) of every image.
        mean: per-channel mean in [0, 1] pixel units (for normalisation).
        std: per-channel standard deviation in [0, 1] pixel units.
        classes: class names, index = label.
        crop_padding: the reference augmentation's random crop with this zero padding (0 = no crop).
        hflip: whether the reference augmentation flips horizontally with p = 0.5.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    crop_padding: int
    hflip: bool

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise InputError(f"DatasetSpec({self.name}): mean and std need {self.in_chans} values "
                             f"(in_chans), got {len(self.mean)} and {len(self.std)}")
        if min(self.std) <= 0:
            raise InputError(f"DatasetSpec({self.name}): std must be positive, got {self.std}")
        if len(self.classes) != self.num_classes:
            raise InputError(f"DatasetSpec({self.name}): {self.num_classes} classes but {len(self.classes)} "
                             "class names")
        if self.crop_padding < 0:
            raise InputError(f"DatasetSpec({self.name}): crop_padding must be >= 0, got {self.crop_padding}")


@dataclass(eq=False)  # holds tensors: compared by identity
class Split:
    """One split of a data set: images in memory, or a map-style dataset (big image folders).

    Attributes:
        images: (N, C, H, W) uint8 in [0, 255] (float32 in [0, 1] for digits), or None when ``dataset``
            holds the images.
        labels: (N,) int64.
        dataset: map-style dataset whose items are (uint8 CHW tensor, int label), used when ``images``
            is None.
    """

    images: torch.Tensor | None
    labels: torch.Tensor
    dataset: torch.utils.data.Dataset | None = None

    def __post_init__(self) -> None:
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise InputError(f"Split: labels must be a 1-d int64 tensor, got {self.labels.dtype} of shape "
                             f"{tuple(self.labels.shape)}")
        if self.images is None:
            if self.dataset is None:
                raise InputError("Split: needs images or a dataset, got neither")
            if len(self.dataset) != len(self.labels):  # type: ignore[arg-type]
                raise InputError(f"Split: dataset has {len(self.dataset)} items but "  # type: ignore[arg-type]
                                 f"{len(self.labels)} labels")
        elif self.images.dim() != 4 or self.images.shape[0] != self.labels.shape[0]:
            raise InputError(f"Split: images must be (N, C, H, W) with N = {len(self.labels)} labels, got "
                             f"{tuple(self.images.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def in_memory(self) -> bool:
        """Whether the images are one tensor in memory (else they are decoded by ``dataset``)."""
        return self.images is not None


@dataclass(eq=False)
class DataBundle:
    """A data set's spec and its train and test splits."""

    spec: DatasetSpec
    train: Split
    test: Split
