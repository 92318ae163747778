"""timm's ImageNet-recipe augmentations for image folders: RandAugment before the reference crop and
flip, and Mixup/CutMix on the batch with soft targets (``pip install 'chanattn[timm]'``).

Both draw from Python's ``random`` and NumPy's global generators, which timm's transforms use. To keep
a run's augmentation a function of (seed, epoch, rank, step) - what makes a continued run end with
the weights of an uninterrupted one - each batch seeds those generators from the trainer's
per-epoch torch generator and puts their previous states back afterwards, so the rest of the
program sees them untouched.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["BatchMixup", "RandAugment", "WithRandAugment", "seeded_global_rng"]


@contextlib.contextmanager
def seeded_global_rng(generator: torch.Generator | None):
    """Seed ``random`` and ``numpy.random`` from ``generator`` (one draw) for the block, then restore
    their states. ``generator=None`` leaves them as they are (the global streams are used)."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _require_timm(what: str):
    try:
        import timm.data
    except ImportError as exc:
        raise ConfigError(f"{what} uses timm's transforms, and timm is not installed "
                          f"(pip install 'chanattn[timm]'): {exc}") from None
    return timm.data


class RandAugment(nn.Module):
    """timm's RandAugment (``rand_augment_transform``) on every image of a uint8 batch, through PIL.

    Args:
        config: a timm RandAugment string (``"rand-m9-mstd0.5"``: magnitude 9 with std 0.5, 2 ops).
        image_size: the images' side (the translation ops move by up to 45 % of it, as timm's
            ``create_transform`` sets).
        mean: the data set's mean in [0, 1] units (the fill colour of the geometric ops).

    Raises:
        ConfigError: timm is not installed, or ``config`` is not a RandAugment string timm parses.
    """

    def __init__(self, config: str, image_size: int, mean: tuple[float, ...]) -> None:
        super().__init__()
        tdata = _require_timm(f"--augment {config}")
        hparams = {"translate_const": int(image_size * 0.45),
                   "img_mean": tuple(min(255, round(255 * m)) for m in mean)}
        try:
            self.transform = tdata.rand_augment_transform(config, hparams)
        except Exception as exc:  # timm asserts on strings it does not know
            raise ConfigError(f"--augment {config!r} is not a timm RandAugment string such as "
                              f"rand-m9-mstd0.5 ({type(exc).__name__}: {exc})") from None
        self.config = config

    def extra_repr(self) -> str:
        return self.config

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> the same, each image augmented (on the CPU, back to its device)."""
        from PIL import Image

        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ConfigError(f"--augment {self.config}: expected (N, 3, H, W) uint8 images (an image "
                              f"folder), got {images.dtype} {tuple(images.shape)}")
        batch = images.permute(0, 2, 3, 1).cpu().numpy()
        with seeded_global_rng(generator):
            out = [np.asarray(self.transform(Image.fromarray(img)), dtype=np.uint8) for img in batch]
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous().to(images.device)


class BatchMixup:
    """timm's Mixup/CutMix on a normalised batch: ``(x, labels) -> (mixed x, soft targets)``, and
    timm's ``SoftTargetCrossEntropy`` as the loss that goes with them.

    Args:
        mixup: Mixup's alpha (0: off). cutmix: CutMix's alpha (0: off); with both, each batch takes
            one of them with probability 0.5 (timm's ``switch_prob``).
        label_smoothing: folded into the soft targets (the loss adds none of its own).
        num_classes: the width of the targets.

    Raises:
        ConfigError: timm is not installed.
    """

    def __init__(self, mixup: float, cutmix: float, label_smoothing: float, num_classes: int) -> None:
        what = " ".join(f"--{n} {v:g}" for n, v in (("mixup", mixup), ("cutmix", cutmix)) if v)
        tdata = _require_timm(what)
        from timm.loss import SoftTargetCrossEntropy

        self.mixup, self.cutmix = mixup, cutmix
        self.mix = tdata.Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                               num_classes=num_classes)
        self.loss = SoftTargetCrossEntropy()

    def __call__(self, x: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] % 2:
            raise ConfigError(f"--mixup/--cutmix need an even batch per rank, got {x.shape[0]}")
        with seeded_global_rng(generator):
            return self.mix(x, labels)


class WithRandAugment(nn.Module):
    """RandAugment on the uint8 training images, then the reference augmentation (``base``:
    crop, flip, normalisation); evaluation images get ``base``'s eval transform alone."""

    def __init__(self, rand: RandAugment, base: nn.Module) -> None:
        super().__init__()
        self.rand, self.base = rand, base

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                train: bool = True) -> torch.Tensor:
        if self.training and train and images.shape[0] > 0:
            images = self.rand(images, generator)
        return self.base(images, generator=generator, train=train)
