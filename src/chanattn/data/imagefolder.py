"""Image folders: ``root/train/<class>/*.png`` and ``root/val/<class>/*`` (or ``root/test``), via PIL."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, InputError
from .spec import DataBundle, DatasetSpec, Split

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "IN_MEMORY_MAX_BYTES", "IN_MEMORY_MAX_IMAGES",
    "ImageFolderDataset", "decode_image", "load_imagefolder",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Folders with fewer images than this whose decoded uint8 tensors also fit IN_MEMORY_MAX_BYTES are decoded
# once into memory; bigger ones are decoded per batch by DataLoader workers.
IN_MEMORY_MAX_IMAGES = 20_000
IN_MEMORY_MAX_BYTES = 1 << 30
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SLOW_S = 2.0  # announce the decoding on stderr once it has taken this long


def decode_image(path: str | os.PathLike, size: int) -> torch.Tensor:
    """One image as a uint8 (3, size, size) tensor: RGB, shorter side resized to ``size``, centre crop.

    Raises DataError naming the file when PIL cannot read it.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
        w, h = img.size
        if (w, h) != (size, size):
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            img = img.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            img = img.crop((left, top, left + size, top + size))
        array = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, ValueError, SyntaxError, ...
        raise DataError(f"imagefolder: cannot read image {path} ({type(exc).__name__}: {exc})") from exc
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


class ImageFolderDataset(torch.utils.data.Dataset):
    """Map-style dataset of image files: item i is (uint8 (3, size, size) tensor, int label)."""

    def __init__(self, files: list[Path], labels: list[int], size: int) -> None:
        if len(files) != len(labels):
            raise InputError(f"ImageFolderDataset: {len(files)} files but {len(labels)} labels")
        self.files, self.labels, self.size = list(files), list(labels), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return decode_image(self.files[index], self.size), self.labels[index]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_files(class_dir: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / f for f in sorted(filenames) if _is_image(f)]
    if not files:
        raise DataError(f"imagefolder: {class_dir} has no images ({' '.join(IMAGE_EXTENSIONS)})")
    return files


def _scan(split_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        if (split_dir / name).is_dir():
            found = _class_files(split_dir / name)
            files += found
            labels += [label] * len(found)
    return files, labels


def _decode_all(files: list[Path], size: int, what: str) -> torch.Tensor:
    out = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    start, announced = time.perf_counter(), False
    # PIL releases the GIL while decoding and resizing, so threads help.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(lambda f: decode_image(f, size), files)):
            out[i] = image
            if not announced and time.perf_counter() - start > _SLOW_S:
                announced = True
                print(f"chanattn: decoding {len(files)} images of {what} into memory (once per run) ...",
                      file=sys.stderr, flush=True)
    if announced:
        print(f"chanattn: decoded {len(files)} images of {what} in {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)
    return out


def _mean_std(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images in [0, 1] units, summed exactly in int64."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.int64)
    squares = torch.zeros(c, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        block = images[start:start + chunk].to(torch.int64)
        total += block.sum(dim=(0, 2, 3))
        squares += (block * block).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total.double() / count
    var = (squares.double() / count - mean * mean).clamp_min(0)
    std = var.sqrt().clamp_min(1.0 / 255)  # a constant channel would divide by zero
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def load_imagefolder(root: str | os.PathLike, image_size: int = 32, *,
                     in_memory: bool | None = None) -> DataBundle:
    """An image folder as uint8 RGB images of ``image_size`` x ``image_size``.

    Args:
        root: folder with ``train/<class>/`` and ``val/<class>/`` (or ``test/<class>/``; ``val`` wins
            when both exist). Images (png, jpg, jpeg, bmp, webp; in sub-folders too) are converted to
            RGB, the shorter side resized to ``image_size`` (bilinear, antialiased) and centre-cropped.
        image_size: side of the square images (default 32).
        in_memory: decode everything once into memory (True), or per batch through a map-style
            dataset (False); None (default) decodes into memory when there are fewer than
            IN_MEMORY_MAX_IMAGES images that take at most IN_MEMORY_MAX_BYTES decoded.

    Classes are train's sub-folders, sorted; labels index that list in both splits. A class that val
    lacks is fine; a val class that train lacks, an empty class folder or an unreadable image is a
    DataError. mean/std are those of the train images when in memory, else ImageNet's.
    Random crops pad by ``round(image_size / 8)`` (4 at 32 px, as for CIFAR).
    """
    root = Path(root).expanduser()
    if image_size < 1:
        raise InputError(f"imagefolder: image_size must be a positive int, got {image_size}")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"imagefolder: {train_dir} not found (expected {root}/train/<class>/*.png and "
                        f"{root}/val/<class>/*.png)")
    val_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if val_dir is None:
        raise DataError(f"imagefolder: neither {root / 'val'} nor {root / 'test'} found (the evaluation "
                        "split, with the same class folders as train)")
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(f"imagefolder: {train_dir} has no class folders (expected {train_dir}/<class>/*.png)")
    unknown = [n for n in _class_dirs(val_dir) if n not in classes]
    if unknown:
        shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
        raise DataError(f"imagefolder: {val_dir / unknown[0]} is a class that {train_dir} does not have "
                        f"({len(classes)} train classes: {shown})")
    train_files, train_labels = _scan(train_dir, classes)
    val_files, val_labels = _scan(val_dir, classes)
    if not val_files:
        raise DataError(f"imagefolder: {val_dir} has no class folders with images")
    total = len(train_files) + len(val_files)
    if in_memory is None:
        in_memory = total < IN_MEMORY_MAX_IMAGES and total * 3 * image_size**2 <= IN_MEMORY_MAX_BYTES
    padding = max(1, round(image_size / 8))
    if in_memory:
        train = Split(_decode_all(train_files, image_size, str(train_dir)), torch.tensor(train_labels))
        test = Split(_decode_all(val_files, image_size, str(val_dir)), torch.tensor(val_labels))
        mean, std = _mean_std(train.images)  # type: ignore[arg-type]
    else:
        train = Split(None, torch.tensor(train_labels),
                      ImageFolderDataset(train_files, train_labels, image_size))
        test = Split(None, torch.tensor(val_labels), ImageFolderDataset(val_files, val_labels, image_size))
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    spec = DatasetSpec(name="imagefolder", num_classes=len(classes), in_chans=3,
                       image_size=(image_size, image_size), mean=mean, std=std, classes=tuple(classes),
                       crop_padding=padding, hflip=True)
    return DataBundle(spec=spec, train=train, test=test)
