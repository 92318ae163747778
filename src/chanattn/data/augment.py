"""The reference augmentation (zero-padded random crop, flip, normalisation), batch-wise on device."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, InputTypeError
from .spec import DatasetSpec

__all__ = ["Augment"]


class Augment(nn.Module):
    """uint8 images -> float in [0, 1] -> random crop with zero padding -> random flip -> normalised.

    The training augmentation of the CIFAR ResNets (He et al. 2016): pad every side by ``crop_padding``
    zeros (black, before normalisation, as torchvision's RandomCrop(padding=p) on images), take a
    random crop of the original size (each image its own offset, uniform in 0..2p per axis), flip
    each image horizontally with probability 0.5, then subtract ``spec.mean`` and divide by
    ``spec.std`` per channel. In eval mode, or with ``train=False``, only the conversion and the
    normalisation. Vectorised over the batch (no Python loop over images), on the images' device.

    Args:
        spec: the data set (mean, std, in_chans, and the default crop_padding and hflip).
        crop_padding: override ``spec.crop_padding`` (0 = no crop). Default None.
        hflip: override ``spec.hflip``. Default None.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, spec: DatasetSpec, *, crop_padding: int | None = None,
                 hflip: bool | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.crop_padding = spec.crop_padding if crop_padding is None else int(crop_padding)
        self.hflip = spec.hflip if hflip is None else bool(hflip)
        if self.crop_padding < 0:
            raise InputError(f"Augment: crop_padding must be >= 0, got {self.crop_padding}")
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"{self.spec.name}, crop_padding={self.crop_padding}, hflip={self.hflip}"

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None,
                train: bool = True) -> torch.Tensor:
        """Augmented, normalised float32 images of the same shape.

        Args:
            images: (N, C, H, W) uint8 in [0, 255], or floating point in [0, 1] (kept, cast to float32).
            generator: random numbers for the crop offsets (y then x) and the flip mask, on the images'
                device; None uses the global generator.
            train: False gives the eval transform even in training mode.
        """
        if images.dim() != 4 or images.shape[1] != self.mean.shape[1]:
            raise InputError(f"Augment({self.spec.name}): expected (N, {self.mean.shape[1]}, H, W) images, "
                             f"got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            x = images.float().div_(255)
        elif images.is_floating_point():
            x = images.float()
        else:
            raise InputTypeError(f"Augment({self.spec.name}): expected uint8 or floating-point images, "
                            f"got {images.dtype}")
        if generator is not None and generator.device.type != x.device.type:
            raise InputError(f"Augment({self.spec.name}): the generator is on {generator.device}, the images "
                             f"on {x.device}; they must be on the same device")
        if self.training and train and x.shape[0] > 0:
            if self.crop_padding > 0:
                x = self._random_crop(x, self.crop_padding, generator)
            if self.hflip:
                flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x - mean) / std

    @staticmethod
    def _random_crop(x: torch.Tensor, p: int, generator: torch.Generator | None) -> torch.Tensor:
        n, c, h, w = x.shape
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
        rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return padded[batch, chans, rows, cols]
