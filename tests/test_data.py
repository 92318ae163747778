"""chanattn.data: digits, CIFAR (tiny archives in the real format), image folders, BatchLoader, Augment."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from chanattn.data import (
    CIFAR_SOURCES,
    Augment,
    BatchLoader,
    DatasetSpec,
    Split,
    dataset_spec,
    epoch_seed,
    load_data,
    read_cifar_pickle,
)
from chanattn.data import digits as digits_mod
from chanattn.errors import DataError

# ----------------------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------------------


def test_digits_shapes_split_and_stats() -> None:
    from sklearn.datasets import load_digits

    bundle = load_data("digits")
    spec, train, test = bundle.spec, bundle.train, bundle.test
    assert (len(train), len(test)) == (1437, 360)
    assert train.images.shape == (1437, 1, 8, 8) and train.images.dtype == torch.float32
    assert test.images.shape == (360, 1, 8, 8) and train.labels.dtype == torch.int64
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert (spec.num_classes, spec.in_chans, spec.image_size) == (10, 1, (8, 8))
    assert (spec.hflip, spec.crop_padding) == (False, 1)
    assert spec.classes == tuple("0123456789")
    # Train and test together are exactly the 1797 digits (values 0..16 divided by 16), no image twice.
    raw = load_digits()
    both = torch.cat([train.images, test.images]).reshape(-1, 64) * 16
    order = np.lexsort(both.numpy().T)
    raw_order = np.lexsort(raw.data.T)
    np.testing.assert_array_equal(both.numpy()[order], raw.data[raw_order])
    labels = torch.cat([train.labels, test.labels]).numpy()
    np.testing.assert_array_equal(labels[order], raw.target[raw_order])
    # Stratified: every class keeps its share of the test split within one image.
    full = np.bincount(raw.target, minlength=10)
    assert np.all(np.abs(np.bincount(test.labels.numpy(), minlength=10) - 0.2 * full) <= 1)
    # mean/std are those of the train pixels.
    assert spec.mean[0] == pytest.approx(float(train.images.double().mean()), abs=1e-9)
    assert spec.std[0] == pytest.approx(float(train.images.double().std(unbiased=False)), abs=1e-9)
    assert dataset_spec("digits") == spec


def test_digits_split_is_fixed_and_ignores_seed() -> None:
    a = load_data("digits", seed=0)
    digits_mod._split_arrays.cache_clear()  # recompute from scratch, with another seed
    b = load_data("digits", seed=12345)
    assert torch.equal(a.test.labels, b.test.labels) and torch.equal(a.test.images, b.test.images)
    assert torch.equal(a.train.images, b.train.images)
    assert a.spec == b.spec


def test_unknown_name_and_image_size() -> None:
    with pytest.raises(DataError, match="unknown data set 'mnist'.*digits, cifar10, cifar100, imagefolder"):
        load_data("mnist")
    with pytest.raises(DataError, match="digits images are 8x8"):
        load_data("digits", image_size=32)
    with pytest.raises(DataError, match="imagefolder needs root"):
        load_data("imagefolder")


# ----------------------------------------------------------------------------------------------------------
# CIFAR: tiny archives in the real format (Python 2 pickles: str -> SHORT_BINSTRING/BINSTRING, numpy.core)
# ----------------------------------------------------------------------------------------------------------
class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes what Python 2's cPickle wrote for the CIFAR files: every str/bytes as a byte string."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_string(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        head = (pickle.SHORT_BINSTRING + bytes([len(raw)]) if len(raw) < 256
                else pickle.BINSTRING + struct.pack("<i", len(raw)))
        self.write(head + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_string
    dispatch[str] = _save_string


def py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # Python 2's numpy lived in numpy.core; numpy 2 writes numpy._core.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def make_cifar(tmp: Path, name: str, per_file: int = 3, seed: int = 0) -> tuple[Path, dict]:
    """A tiny archive of ``name`` at tmp/<archive> with the real folder, files and keys."""
    src = CIFAR_SOURCES[name]
    rng = np.random.default_rng(seed)
    stage = tmp / f"stage-{name}"
    folder = stage / src.folder
    folder.mkdir(parents=True)
    expected: dict = {"train": [], "test": []}
    for split, files in (("train", src.train_files), ("test", src.test_files)):
        for f in files:
            data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, src.num_classes, size=per_file)]
            batch = {b"batch_label": f"{f} of {name}".encode(), b"data": data,
                     b"filenames": [f"img_{i}.png".encode() for i in range(per_file)]}
            batch[src.label_key] = labels
            if name == "cifar100":
                batch[b"coarse_labels"] = [v // 5 for v in labels]
            (folder / f).write_bytes(py2_pickle(batch))
            expected[split].append((data, labels))
    names = [f"class_{i:03d}".encode() for i in range(src.num_classes)]
    meta = {src.names_key: names, b"num_vis": 3072}
    if name == "cifar100":
        meta[b"coarse_label_names"] = [f"super_{i}".encode() for i in range(20)]
    (folder / src.meta_file).write_bytes(py2_pickle(meta))
    archive = tmp / src.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=src.folder)
    expected["names"] = tuple(n.decode() for n in names)
    return archive, expected


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Factory: a tiny archive of a CIFAR, CIFAR_SOURCES pointing at it (md5 and file:// URL)."""

    def make(name: str = "cifar10", **kw: object) -> tuple[Path, dict]:
        upstream = tmp_path / "upstream"
        upstream.mkdir(exist_ok=True)
        archive, expected = make_cifar(upstream, name, **kw)
        monkeypatch.setitem(CIFAR_SOURCES, name, dataclasses.replace(
            CIFAR_SOURCES[name], md5=_md5(archive), url=archive.as_uri()))
        return archive, expected

    return make


def _check_bundle(bundle, expected: dict, name: str) -> None:
    src = CIFAR_SOURCES[name]
    for split in ("train", "test"):
        data = np.concatenate([d for d, _ in expected[split]]).reshape(-1, 3, 32, 32)
        labels = _flat(lab for _, lab in expected[split])
        got = getattr(bundle, split)
        assert got.images.dtype == torch.uint8 and got.images.shape == data.shape
        np.testing.assert_array_equal(got.images.numpy(), data)
        assert got.labels.tolist() == labels and got.labels.dtype == torch.int64
    spec = bundle.spec
    assert (spec.name, spec.num_classes, spec.in_chans) == (name, src.num_classes, 3)
    assert spec.image_size == (32, 32)
    assert (spec.crop_padding, spec.hflip, spec.mean, spec.std) == (4, True, src.mean, src.std)
    assert spec.classes == expected["names"]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_is_extracted_and_parsed(fake_cifar, tmp_path: Path, name: str) -> None:
    archive, expected = fake_cifar(name)
    root = tmp_path / "root"
    root.mkdir()
    os.replace(archive, root / archive.name)
    _check_bundle(load_data(name, root), expected, name)
    assert sorted(p.name for p in root.iterdir()) == sorted([archive.name, CIFAR_SOURCES[name].folder])
    # The extracted folder alone is enough the second time.
    (root / archive.name).unlink()
    _check_bundle(load_data(name, root), expected, name)
    assert dataset_spec(name, root).classes == expected["names"]


def test_cifar_standard_values() -> None:
    c10, c100 = CIFAR_SOURCES["cifar10"], CIFAR_SOURCES["cifar100"]
    assert (c10.md5, c100.md5) == ("c58f30108f718f92721af3b95e74349a", "eb9058c3a382ffc7106e4002c42a8d85")
    assert c10.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert c100.url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c100.std == (0.2673, 0.2564, 0.2762)


def test_cifar_missing_files_message(tmp_path: Path) -> None:
    src = CIFAR_SOURCES["cifar10"]
    with pytest.raises(DataError) as info:
        load_data("cifar10", tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    for part in (src.url, src.md5, str(tmp_path / src.archive), "download=True"):
        assert part in message
    # A folder missing one file is named as such.
    (tmp_path / src.folder).mkdir()
    with pytest.raises(DataError, match="incomplete \\(data_batch_1 missing\\)"):
        load_data("cifar10", tmp_path)


def test_cifar_md5_mismatch_names_the_archive(fake_cifar, tmp_path: Path, monkeypatch) -> None:
    archive, _ = fake_cifar("cifar10")
    monkeypatch.setitem(CIFAR_SOURCES, "cifar10", dataclasses.replace(CIFAR_SOURCES["cifar10"], md5="0" * 32))
    with pytest.raises(DataError, match=f"{archive}.* has md5 .*expected 0{{32}}"):
        load_data("cifar10", archive.parent)


def test_cifar_corrupt_archive(tmp_path: Path, monkeypatch) -> None:
    src = CIFAR_SOURCES["cifar10"]
    archive = tmp_path / src.archive
    archive.write_bytes(b"\x1f\x8b\x08 this is not a gzip stream" * 10)
    monkeypatch.setitem(CIFAR_SOURCES, "cifar10", dataclasses.replace(src, md5=_md5(archive)))
    with pytest.raises(DataError, match=f"{archive}: cannot extract"):
        load_data("cifar10", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [src.archive]  # no temporary folder left


def test_cifar_truncated_pickle(fake_cifar, tmp_path: Path) -> None:
    archive, _ = fake_cifar("cifar10")
    load_data("cifar10", archive.parent)
    batch = archive.parent / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3: corrupt or truncated CIFAR pickle"):
        load_data("cifar10", archive.parent)


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _EvilOpen:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.mark.parametrize("dumps", [py2_pickle, lambda obj: pickle.dumps(obj, protocol=4)], ids=["py2", "py3"])
def test_malicious_pickle_is_refused_and_not_run(fake_cifar, tmp_path: Path, dumps) -> None:
    archive, _ = fake_cifar("cifar10")
    load_data("cifar10", archive.parent)
    marker, marker2 = tmp_path / "pwned", tmp_path / "pwned2"
    batch = archive.parent / "cifar-10-batches-py" / "data_batch_1"
    payload = {b"data": _Evil(f"touch {marker}"), b"labels": [0]}
    batch.write_bytes(dumps(payload))
    with pytest.raises(DataError, match=r"data_batch_1: refused to unpickle (posix|os|nt)\.system"):
        load_data("cifar10", archive.parent)
    batch.write_bytes(dumps([_EvilOpen(str(marker2))]))
    with pytest.raises(DataError, match=r"refused to unpickle (io|builtins)\.open"):
        read_cifar_pickle(batch)
    assert not marker.exists() and not marker2.exists()
    # numpy globals other than the three an array needs are refused too.
    batch.write_bytes(b"cnumpy\nfrombuffer\n(C\x00tR.")
    with pytest.raises(DataError, match="refused to unpickle numpy.frombuffer"):
        read_cifar_pickle(batch)


def test_restricted_unpickler_reads_python3_pickles(tmp_path: Path) -> None:
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072) % 251
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2]}, protocol=4))  # numpy._core global
    loaded = read_cifar_pickle(path)
    np.testing.assert_array_equal(loaded[b"data"], data)


def test_cifar_bad_content_is_named(fake_cifar, tmp_path: Path) -> None:
    archive, _ = fake_cifar("cifar10")
    load_data("cifar10", archive.parent)
    batch = archive.parent / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}))
    with pytest.raises(DataError, match="test_batch: labels must lie in 0..9"):
        load_data("cifar10", archive.parent)
    batch.write_bytes(py2_pickle({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match=r"test_batch: expected b'data' as a uint8 array of shape \(N, 3072"):
        load_data("cifar10", archive.parent)


def test_cifar_download(fake_cifar, tmp_path: Path, capsys, monkeypatch) -> None:
    archive, expected = fake_cifar("cifar100")
    root = tmp_path / "new" / "root"
    _check_bundle(load_data("cifar100", root, download=True), expected, "cifar100")
    assert _md5(root / archive.name) == _md5(archive)
    assert "downloading file://" in capsys.readouterr().err
    # Already there: no second download (the URL now points nowhere).
    src = CIFAR_SOURCES["cifar100"]
    monkeypatch.setitem(CIFAR_SOURCES, "cifar100", dataclasses.replace(src, url=(tmp_path / "gone").as_uri()))
    load_data("cifar100", root, download=True)
    assert "downloading" not in capsys.readouterr().err
    # A download whose md5 is wrong is not kept; an unreachable URL is one clear error.
    root2 = tmp_path / "root2"
    monkeypatch.setitem(CIFAR_SOURCES, "cifar100", dataclasses.replace(src, md5="f" * 32))
    with pytest.raises(DataError, match="download of file://.* has md5 .*expected f{32}"):
        load_data("cifar100", root2, download=True)
    assert list(root2.iterdir()) == []
    monkeypatch.setitem(CIFAR_SOURCES, "cifar100", dataclasses.replace(src, url=(tmp_path / "gone").as_uri()))
    with pytest.raises(DataError, match=f"could not download file://.*gone .*put it at {root2}"):
        load_data("cifar100", root2, download=True)
    assert list(root2.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------
# imagefolder
# ----------------------------------------------------------------------------------------------------------
def _save(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10),
          mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    (img.convert(mode) if mode != "RGB" else img).save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    _save(root / "train" / "cat" / "a.png", (255, 0, 0))
    _save(root / "train" / "cat" / "b.jpg", (250, 0, 0), size=(40, 20))
    _save(root / "train" / "cat" / "sub" / "c.bmp", (255, 0, 0), size=(5, 9))
    _save(root / "train" / "dog" / "a.PNG", (0, 255, 0), mode="RGBA")
    _save(root / "train" / "dog" / "b.webp", (0, 255, 0), size=(8, 8))
    _save(root / "train" / "eel" / "a.png", (128, 128, 128), mode="L")
    (root / "train" / "eel" / "notes.txt").write_text("not an image")
    _save(root / "val" / "cat" / "x.png", (255, 0, 0))
    _save(root / "val" / "dog" / "y.png", (0, 255, 0))
    return root


def test_imagefolder_in_memory(folder: Path) -> None:
    bundle = load_data("imagefolder", folder, image_size=8)
    spec, train, test = bundle.spec, bundle.train, bundle.test
    assert spec.classes == ("cat", "dog", "eel") and spec.num_classes == 3 and spec.in_chans == 3
    assert (spec.image_size, spec.hflip, spec.crop_padding) == ((8, 8), True, 1)
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 2] and test.labels.tolist() == [0, 1]
    assert train.images.shape == (6, 3, 8, 8) and train.images.dtype == torch.uint8
    # A solid colour stays solid.
    assert train.images[0].flatten(1).unique(dim=1).tolist() == [[255], [0], [0]]
    assert train.images[5].unique().tolist() == [128]  # grey "L" image -> RGB
    assert (train.images[1, 0] > 240).all() and (train.images[1, 1:] < 10).all()  # jpg, resized and cropped
    x = train.images.double() / 255
    assert spec.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert spec.std == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-9)
    assert load_data("imagefolder", folder).spec.image_size == (32, 32)  # default size


def test_imagefolder_test_folder_and_errors(folder: Path) -> None:
    os.replace(folder / "val", folder / "test")
    assert load_data("imagefolder", folder, image_size=4).test.labels.tolist() == [0, 1]
    _save(folder / "test" / "fox" / "z.png", (1, 2, 3))
    with pytest.raises(DataError, match=r"test/fox is a class that .*train does not have \(3 train classes"):
        load_data("imagefolder", folder, image_size=4)
    (folder / "test" / "fox" / "z.png").unlink()
    (folder / "test" / "fox").rmdir()
    bad = folder / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        load_data("imagefolder", folder, image_size=4)
    bad.unlink()
    (folder / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="train/empty has no images"):
        load_data("imagefolder", folder, image_size=4)
    (folder / "train" / "empty").rmdir()
    os.replace(folder / "test", folder / "other")
    with pytest.raises(DataError, match="neither .*val nor .*test found"):
        load_data("imagefolder", folder)


def test_imagefolder_dataset_path_matches_memory(folder: Path) -> None:
    memory = load_data("imagefolder", folder, image_size=8)
    lazy = load_data("imagefolder", folder, image_size=8, in_memory=False)
    assert lazy.train.images is None and len(lazy.train) == 6
    assert lazy.spec.mean == (0.485, 0.456, 0.406)  # ImageNet's on this path
    for workers in (0, 1):
        kw = dict(shuffle=True, seed=3, num_workers=workers)
        got = list(BatchLoader(lazy.train, 4, **kw))
        want = list(BatchLoader(memory.train, 4, **kw))
        assert len(got) == len(want) == 2
        for (x, y), (x2, y2) in zip(got, want):
            assert torch.equal(x, x2) and torch.equal(y, y2) and x.dtype == torch.uint8


# ----------------------------------------------------------------------------------------------------------
# BatchLoader
# ----------------------------------------------------------------------------------------------------------
def _indexed_split(n: int) -> Split:
    """Images whose single pixel is their index, so batches show which samples they hold."""
    return Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n))


def _flat(lists) -> list[int]:
    return list(itertools.chain.from_iterable(lists))


def _epoch(loader: BatchLoader) -> list[list[int]]:
    batches = []
    for x, y in loader:
        assert torch.equal(x.view(-1).long(), y)
        batches.append(y.tolist())
    assert len(batches) == len(loader)
    return batches


def test_loader_order_is_a_function_of_seed_and_epoch() -> None:
    split = _indexed_split(50)
    a, b = BatchLoader(split, 8, shuffle=True, seed=1), BatchLoader(split, 8, shuffle=True, seed=1)
    first = _epoch(a)
    assert first == _epoch(b) == _epoch(a)  # same (seed, epoch): same batches, every time
    assert sorted(_flat(first)) == list(range(50))  # each index once per epoch
    assert [len(bt) for bt in first] == [8] * 6 + [2]
    a.set_epoch(1)
    second = _epoch(a)
    assert second != first and sorted(_flat(second)) == list(range(50))
    b.set_epoch(1)
    assert _epoch(b) == second  # a resumed run at epoch 1 sees the same batches
    assert _epoch(BatchLoader(split, 8, shuffle=True, seed=2)) != first
    assert _flat(_epoch(BatchLoader(split, 8, shuffle=False))) == list(range(50))
    assert epoch_seed(0, 1) != epoch_seed(1, 0)


@pytest.mark.parametrize("n, world", [(23, 4), (24, 4), (3, 4), (10, 3)])
def test_loader_shards(n: int, world: int) -> None:
    split = _indexed_split(n)
    # Evaluation: no padding; the ranks partition the data exactly once.
    shards = [_flat(_epoch(BatchLoader(split, 5, shuffle=True, seed=7, rank=r, world_size=world,
                                       pad_to_equal=False))) for r in range(world)]
    assert sorted(_flat(shards)) == list(range(n))
    # Training: every rank the same number of samples and batches; the padding repeats the order's start.
    loaders = [BatchLoader(split, 5, shuffle=True, seed=7, rank=r, world_size=world) for r in range(world)]
    shards = [_flat(_epoch(ld)) for ld in loaders]
    per = -(-n // world)
    assert all(len(s) == per for s in shards) and len({len(ld) for ld in loaders}) == 1
    assert set(_flat(shards)) == set(range(n))
    interleaved = [shards[i % world][i // world] for i in range(per * world)]
    perm = interleaved[:n]
    assert sorted(perm) == list(range(n))
    assert interleaved[n:] == (perm * world)[:per * world - n]


def test_loader_drop_last_and_errors() -> None:
    split = _indexed_split(10)
    kept = _epoch(BatchLoader(split, 3, shuffle=True, drop_last=True))
    assert [len(b) for b in kept] == [3, 3, 3]
    assert [len(b) for b in _epoch(BatchLoader(split, 3, shuffle=True))] == [3, 3, 3, 1]
    assert len(BatchLoader(split, 3, shuffle=False, rank=1, world_size=2, drop_last=True)) == 1
    with pytest.raises(ValueError, match="rank < world_size"):
        BatchLoader(split, 3, shuffle=False, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(split, 0, shuffle=False)


# ----------------------------------------------------------------------------------------------------------
# Augment
# ----------------------------------------------------------------------------------------------------------
SPEC = DatasetSpec(name="t", num_classes=2, in_chans=3, image_size=(6, 5), mean=(0.5, 0.4, 0.3),
                   std=(0.2, 0.25, 0.5), classes=("a", "b"), crop_padding=2, hflip=True)


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 6, 5), generator=g, dtype=torch.uint8)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(SPEC.mean).view(1, 3, 1, 1)) / torch.tensor(SPEC.std).view(1, 3, 1, 1)


def test_augment_eval_is_normalisation_only() -> None:
    aug = Augment(SPEC)
    x = _images()
    want = _normalise(x.float() / 255)
    assert torch.allclose(aug(x, train=False), want, atol=1e-6)
    aug.eval()
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.allclose(out, want, atol=1e-6)
    floats = x.float() / 255  # float input is taken as [0, 1], not divided again
    assert torch.allclose(aug(floats), want, atol=1e-6)


def test_augment_crop_and_flip_against_a_loop() -> None:
    aug = Augment(SPEC)
    x = _images(24)
    out = aug(x, torch.Generator().manual_seed(5))
    padded = torch.nn.functional.pad(x.float() / 255, (2, 2, 2, 2))
    # Reference, one image at a time, from the documented draws: offsets y, offsets x, flip mask.
    g = torch.Generator().manual_seed(5)
    dy, dx = torch.randint(0, 5, (24,), generator=g), torch.randint(0, 5, (24,), generator=g)
    flip = torch.rand(24, generator=g) < 0.5
    flips = set()
    for i in range(24):
        crop = padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 5]
        crop = crop.flip(2) if flip[i] else crop
        assert torch.allclose(out[i], _normalise(crop[None])[0], atol=1e-6)
        # And, independently of the draws: the output is one of the 2 * 5 * 5 shifts (and flips) of the pad.
        shifts = {(a, b, f): padded[i, :, a:a + 6, b:b + 5] for a in range(5) for b in range(5)
                  for f in (False, True)}
        matches = [k for k, v in shifts.items()
                   if torch.allclose(_normalise((v.flip(2) if k[2] else v)[None])[0], out[i], atol=1e-6)]
        assert matches == [(int(dy[i]), int(dx[i]), bool(flip[i]))]
        flips.add(bool(flip[i]))
    assert flips == {False, True} and len(set(dy.tolist())) > 1


def test_augment_flip_only_and_no_flip() -> None:
    x = _images(32)
    out = Augment(SPEC, crop_padding=0)(x, torch.Generator().manual_seed(1))
    plain, mirrored = _normalise(x.float() / 255), _normalise(x.float().flip(3) / 255)
    same = [torch.allclose(out[i], plain[i], atol=1e-6) for i in range(32)]
    flipped = [torch.allclose(out[i], mirrored[i], atol=1e-6) for i in range(32)]
    assert all(s != f for s, f in zip(same, flipped)) and 0 < sum(flipped) < 32
    out = Augment(SPEC, crop_padding=0, hflip=False)(x, torch.Generator().manual_seed(1))
    assert torch.allclose(out, plain, atol=1e-6)


def test_augment_reproducible_and_constant_image() -> None:
    aug, x = Augment(SPEC), _images(8)
    a = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(4)))
    white = torch.full((64, 3, 6, 5), 255, dtype=torch.uint8)
    value = ((1 - torch.tensor(SPEC.mean)) / torch.tensor(SPEC.std)).view(1, 3, 1, 1)
    border = (-torch.tensor(SPEC.mean) / torch.tensor(SPEC.std)).view(1, 3, 1, 1)
    assert torch.allclose(aug(white, train=False), value.expand(64, 3, 6, 5))
    out = aug(white, torch.Generator().manual_seed(0))
    # Every pixel is the image's (white) or the padding's (black), normalised; the centre is always white.
    assert torch.all(torch.isclose(out, value) | torch.isclose(out, border))
    assert torch.allclose(out[:, :, 2:4, 2:3], value.expand(64, 3, 2, 1))
    assert torch.isclose(out, border).any()


def test_augment_digits_spec_and_errors() -> None:
    spec = load_data("digits").spec
    aug = Augment(spec)
    x = torch.rand(4, 1, 8, 8)
    assert aug(x, torch.Generator().manual_seed(0)).shape == (4, 1, 8, 8)
    assert repr(aug) == "Augment(digits, crop_padding=1, hflip=False)"
    with pytest.raises(ValueError, match=r"expected \(N, 1, H, W\)"):
        aug(torch.rand(4, 3, 8, 8))
    with pytest.raises(TypeError, match="uint8 or floating-point"):
        aug(torch.zeros(4, 1, 8, 8, dtype=torch.int32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_and_augment_on_cuda() -> None:
    split = Split(_images(40), torch.arange(40))
    for cache in (False, True):
        loader = BatchLoader(split, 16, shuffle=True, seed=2, device="cuda", cache_on_device=cache)
        batches = list(loader)
        cpu = list(BatchLoader(split, 16, shuffle=True, seed=2))
        assert all(x.is_cuda and y.is_cuda for x, y in batches)
        for (x, y), (xc, yc) in zip(batches, cpu):
            assert torch.equal(x.cpu(), xc) and torch.equal(y.cpu(), yc)
    aug = Augment(SPEC).cuda()
    x = batches[0][0]
    out = aug(x, torch.Generator(device="cuda").manual_seed(0))
    assert out.is_cuda and out.shape == x.shape
    assert torch.allclose(aug(x, train=False).cpu(), _normalise(x.cpu().float() / 255), atol=1e-6)
