"""CIFAR-10 and CIFAR-100 from the official python archives, read without trusting their pickles.

The archives (https://www.cs.toronto.edu/~kriz/cifar.html) hold Python 2 pickles. A pickle can run
any callable it names, so the batches are read with a restricted unpickler that resolves only the
three numpy names an array needs (``_reconstruct``, ``ndarray``, ``dtype``) and refuses every other
global; what comes out is then checked (a dict with a (N, 3072) uint8 array and N labels in range).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .spec import DataBundle, DatasetSpec, Split

__all__ = [
    "CIFAR_CROP_PADDING", "CIFAR_SOURCES", "CifarSource", "cifar_spec", "load_cifar", "read_cifar_pickle",
]


@dataclass(frozen=True)
class CifarSource:
    """Where a CIFAR archive comes from and what is in it."""

    name: str
    url: str
    md5: str
    archive: str  # file name of the archive under root
    folder: str  # folder the archive extracts to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR_SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
        name="cifar10", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a", archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        meta_file="batches.meta", label_key=b"labels", names_key=b"label_names", num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": CifarSource(
        name="cifar100", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85", archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        train_files=("train",), test_files=("test",), meta_file="meta", label_key=b"fine_labels",
        names_key=b"fine_label_names", num_classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
}

CIFAR_CROP_PADDING = 4  # the reference augmentation of He et al. 2016: pad 4, random 32x32 crop, flip


# ----------------------------------------------------------------------------------------------------------
# Restricted unpickling
# ----------------------------------------------------------------------------------------------------------
class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list."""


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    # Python 2 numpy (the CIFAR files) wrote numpy.core.multiarray, numpy 2 writes numpy._core.multiarray:
    # both names map to the function itself, so the deprecated numpy.core module is never imported.
    return {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, bytes, numbers and numpy arrays."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal(f"persistent id {pid!r}")


def read_cifar_pickle(path: str | os.PathLike) -> Any:
    """Unpickle one CIFAR file with the restricted unpickler (``encoding="bytes"``: keys are bytes).

    Raises DataError naming the file when it cannot be read, is truncated or corrupt, or names
    any global except numpy's ``_reconstruct``, ``ndarray`` and ``dtype``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _CifarUnpickler(fh, encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise DataError(f"{path}: refused to unpickle {exc.args[0]} (a CIFAR batch holds only dicts, lists, "
                        "bytes, ints and numpy arrays); the file is not a CIFAR batch or has been tampered "
                        "with") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except Exception as exc:  # whatever a malformed byte stream raises: EOFError, UnpicklingError, ...
        raise DataError(f"{path}: corrupt or truncated CIFAR pickle ({type(exc).__name__}: {exc}); delete it "
                        "(and its folder) to extract it again from the archive") from exc


def _read_batch(path: Path, src: CifarSource) -> tuple[np.ndarray, np.ndarray]:
    obj = read_cifar_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict (a CIFAR batch), got {type(obj).__name__}")
    data, labels = obj.get(b"data"), obj.get(src.label_key)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        got = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
               else type(data).__name__)
        raise DataError(f"{path}: expected b'data' as a uint8 array of shape (N, 3072), got {got}")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise DataError(f"{path}: expected {src.label_key!r} as a list of ints, got "
                        f"{type(labels).__name__}")
    y = np.asarray(labels, dtype=np.int64)
    if len(y) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= src.num_classes):
        raise DataError(f"{path}: labels must lie in 0..{src.num_classes - 1}, got {y.min()}..{y.max()}")
    return data, y


def _read_names(path: Path, src: CifarSource) -> tuple[str, ...]:
    obj = read_cifar_pickle(path)
    names = obj.get(src.names_key) if isinstance(obj, dict) else None
    if not (isinstance(names, list) and len(names) == src.num_classes
            and all(isinstance(n, bytes | str) for n in names)):
        raise DataError(f"{path}: expected {src.names_key!r} as a list of {src.num_classes} class names")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


# ----------------------------------------------------------------------------------------------------------
# Archive: verify, download, extract
# ----------------------------------------------------------------------------------------------------------
def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _missing(folder: Path, src: CifarSource) -> list[str]:
    return [f for f in (*src.train_files, *src.test_files, src.meta_file) if not (folder / f).is_file()]


def _download(src: CifarSource, archive: Path) -> None:
    """Download ``src.url`` to ``archive`` through a temporary file, renamed only when its md5 is right."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".part", dir=archive.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5(usedforsecurity=False)
    size = 0
    start = time.perf_counter()
    print(f"chanattn: downloading {src.url} to {archive}", file=sys.stderr, flush=True)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(src.url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        if digest.hexdigest() != src.md5:
            raise DataError(f"{src.name}: the download of {src.url} has md5 {digest.hexdigest()}, expected "
                            f"{src.md5} (interrupted or altered); try again, or put the file at {archive}")
        os.replace(tmp, archive)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"{src.name}: could not download {src.url} ({reason}); download it by hand "
                        f"(md5 {src.md5}) and put it at {archive}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    print(f"chanattn: downloaded {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)


def _check_members(tar: tarfile.TarFile, dest: Path) -> None:
    """Pythons without tarfile's extraction filters (3.11.0-3.11.3): refuse what filter="data" refuses."""
    root = dest.resolve()
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not (member.isfile() or member.isdir()) or not target.is_relative_to(root):
            raise tarfile.TarError(f"unsafe member {member.name!r}")


def _extract(src: CifarSource, archive: Path, root: Path) -> None:
    """Extract the archive's data files into ``root/src.folder`` (through a temporary folder)."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, filter="data")
                else:
                    _check_members(tar, tmp)
                    tar.extractall(tmp)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{archive}: cannot extract ({type(exc).__name__}: {exc}); the archive is "
                            f"corrupt: delete it and download {src.url} again") from exc
        missing = _missing(tmp / src.folder, src)
        if missing:
            raise DataError(f"{archive}: has no {src.folder}/{missing[0]}; it is not the {src.name} archive "
                            f"(expected md5 {src.md5} from {src.url})")
        folder = root / src.folder
        folder.mkdir(exist_ok=True)
        for name in (*src.train_files, *src.test_files, src.meta_file):
            os.replace(tmp / src.folder / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ensure_files(src: CifarSource, root: Path, download: bool) -> Path:
    folder = root / src.folder
    missing = _missing(folder, src)
    if not missing:
        return folder
    archive = root / src.archive
    if archive.is_file():
        got = _md5(archive)
        if got != src.md5:
            raise DataError(f"{src.name}: {archive} has md5 {got}, expected {src.md5} (corrupt or "
                            f"incomplete): delete it and download {src.url} again")
    elif download:
        _download(src, archive)
    else:
        what = f"{folder} is incomplete ({missing[0]} missing)" if folder.is_dir() else f"{folder} not found"
        raise DataError(f"{src.name}: {what}: download {src.url} (md5 {src.md5}) and put it at {archive} "
                        "(it is extracted there), or pass download=True to download it")
    _extract(src, archive, root)
    return folder


def load_cifar(name: str, root: str | os.PathLike, *, download: bool = False) -> DataBundle:
    """CIFAR-10 or CIFAR-100 (fine labels) as uint8 (N, 3, 32, 32) tensors: 50000 train, 10000 test.

    Args:
        name: "cifar10" or "cifar100".
        root: folder holding ``cifar-10-batches-py`` / ``cifar-100-python`` or the archive.
        download: download the archive into ``root`` when neither the folder nor the archive is there.

    The folder is used when it has every file; else the archive in ``root`` (md5-checked) is
    extracted; else, with ``download``, it is downloaded (md5-checked) and extracted.
    mean/std are the usual published per-channel values of the train images.
    """
    src = CIFAR_SOURCES[name]
    folder = _ensure_files(src, Path(root).expanduser(), download)
    spec = _spec(src, folder)

    def read(files: tuple[str, ...]) -> Split:
        parts = [_read_batch(folder / f, src) for f in files]
        data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([p[1] for p in parts])
        return Split(torch.from_numpy(data), torch.from_numpy(labels))

    return DataBundle(spec=spec, train=read(src.train_files), test=read(src.test_files))


def _spec(src: CifarSource, folder: Path) -> DatasetSpec:
    return DatasetSpec(name=src.name, num_classes=src.num_classes, in_chans=3, image_size=(32, 32),
                       mean=src.mean, std=src.std, classes=_read_names(folder / src.meta_file, src),
                       crop_padding=CIFAR_CROP_PADDING, hflip=True)


def cifar_spec(name: str, root: str | os.PathLike, *, download: bool = False) -> DatasetSpec:
    """The spec of CIFAR-10/100 (class names from the meta file) without reading the image batches."""
    src = CIFAR_SOURCES[name]
    return _spec(src, _ensure_files(src, Path(root).expanduser(), download))
