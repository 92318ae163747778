"""load_data: one entry point for the four data sets; dataset_spec: their specs."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from .cifar import CIFAR_SOURCES, cifar_spec, load_cifar
from .digits import load_digits_bundle
from .imagefolder import load_imagefolder
from .spec import DATASETS, DataBundle, DatasetSpec

__all__ = ["dataset_spec", "default_root", "load_data"]

_NATIVE_SIZE = {"digits": 8, "cifar10": 32, "cifar100": 32}


def default_root() -> Path:
    """Where downloaded data sets go when no root is given: $CHANATTN_DATA, else ~/.cache/chanattn/data."""
    if os.environ.get("CHANATTN_DATA"):
        return Path(os.environ["CHANATTN_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "chanattn" / "data"


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"load_data: unknown data set {name!r}; expected one of {', '.join(DATASETS)}")


def load_data(name: str, root: str | os.PathLike | None = None, *, download: bool = False,
              image_size: int | None = None, seed: int = 0, in_memory: bool | None = None) -> DataBundle:
    """The train and test splits of a data set, with its spec.

    Args:
        name: "digits" (sklearn, embedded), "cifar10", "cifar100" or "imagefolder".
        root: CIFAR: the folder with the extracted folder or the archive (default ``default_root()``);
            imagefolder: the folder with ``train/`` and ``val/`` (required); digits: unused.
        download: CIFAR: download the archive into ``root`` when it is not there (default False).
        image_size: imagefolder: side of the square images (default 32). The other sets have a fixed
            size (digits 8, CIFAR 32): None or that size.
        seed: accepted so that callers pass their run's seed uniformly; every split here is fixed
            (digits: a stratified 80/20 split with random_state=0; CIFAR and image folders: their
            files), so no result depends on it.
        in_memory: imagefolder only: force decoding into memory (True) or per batch (False); None
            decides by size (see ``load_imagefolder``).

    Raises:
        DataError: unknown name, missing or corrupt files (one line naming the file and what to do).
    """
    del seed  # see the docstring: no split here is random
    _check_name(name)
    if name != "imagefolder":
        if image_size is not None and image_size != _NATIVE_SIZE[name]:
            raise DataError(f"load_data: {name} images are {_NATIVE_SIZE[name]}x{_NATIVE_SIZE[name]}; "
                            f"image_size={image_size} applies to imagefolder only")
        if in_memory is False:
            raise DataError(f"load_data: {name} is always held in memory; in_memory=False applies to "
                            "imagefolder only")
    if name == "digits":
        return load_digits_bundle()
    if name in CIFAR_SOURCES:
        return load_cifar(name, default_root() if root is None else root, download=download)
    if root is None:
        raise DataError("load_data: imagefolder needs root, the folder with train/<class>/ and val/<class>/")
    return load_imagefolder(root, 32 if image_size is None else image_size, in_memory=in_memory)


def dataset_spec(name: str, root: str | os.PathLike | None = None, *, download: bool = False,
                 image_size: int | None = None) -> DatasetSpec:
    """The spec of a data set, reading as little as it can (arguments as for ``load_data``).

    digits: from the embedded data; CIFAR: from the meta file (class names) without the image
    batches; imagefolder: its mean/std come from its images, so this is ``load_data(...).spec``.
    """
    _check_name(name)
    if name == "digits":
        return load_digits_bundle().spec
    if name in CIFAR_SOURCES:
        if image_size is not None and image_size != _NATIVE_SIZE[name]:
            raise DataError(f"dataset_spec: {name} images are 32x32; image_size={image_size} applies to "
                            "imagefolder only")
        return cifar_spec(name, default_root() if root is None else root, download=download)
    return load_data(name, root, image_size=image_size).spec
