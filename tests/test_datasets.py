"""Tests for dflearn.datasets on tiny fake files in the real on-disk formats; never online."""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from dflearn import datasets
from dflearn.datasets import _common, mnist
from dflearn.registry import UnknownNameError

REAL_PROBE = _common.network_reachable  # kept before the autouse fixture replaces it

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test may touch the network: the probe always answers 'unreachable'."""
    monkeypatch.setattr(_common, "network_reachable", lambda url, timeout=3.0: False)


@pytest.fixture
def no_md5(monkeypatch):
    """Fake CIFAR/SVHN files cannot match the real md5 sums that torchvision checks.

    Like torchvision's own dataset tests, patch its check to "file exists" for the test only;
    the library keeps the md5 check for real (downloaded or user-supplied) data.
    """

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


def rng_images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX ubyte file: magic (0, 0, 0x08 = ubyte, ndim), big-endian sizes, then the data."""
    header = struct.pack(">4B", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = IDX_FILES[split]
        files = {images: rng_images(n, (28, 28)), labels: np.arange(n, dtype=np.uint8) % 10}
        for name, array in files.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
            else:
                (folder / name).write_bytes(idx_bytes(array))


def write_cifar(root: Path, hundred: bool = False, per_batch: int = 8) -> None:
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    classes = 100 if hundred else 10
    key = "fine_labels" if hundred else "labels"
    batches = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    batches += [] if hundred else ["test_batch"]
    for seed, batch in enumerate(batches):
        data = rng_images(per_batch, (3 * 32 * 32,), seed)
        entry = {"data": data, key: [(seed * per_batch + i) % classes for i in range(per_batch)]}
        (folder / batch).write_bytes(pickle.dumps(entry))
    meta_key = "fine_label_names" if hundred else "label_names"
    meta = {meta_key: [f"class{i}" for i in range(classes)]}
    (folder / ("meta" if hundred else "batches.meta")).write_bytes(pickle.dumps(meta))


def write_tiny_imagenet(root: Path, per_class: int = 3) -> list[str]:
    folder = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # unsorted on purpose: indices follow the sorted order
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rows = []
    for k, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(per_class):
            color = (40 * k, 10 * i, 200)
            Image.new("RGB", (64, 64), color).save(images / f"{wnid}_{i}.JPEG")
        Image.new("L", (64, 64), 50 * k).save(folder / "val" / "images" / f"val_{k}.JPEG")
        rows.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return wnids


def epoch_labels(loader) -> list[int]:
    return [int(y) for _, labels in loader for y in labels]


# --- registry and metadata ---------------------------------------------------------------


def test_list_and_info():
    expected = ["cifar10", "cifar100", "fashion-mnist", "kmnist", "mnist", "svhn", "tiny-imagenet"]
    assert datasets.list_datasets() == expected
    meta = datasets.info("tiny-imagenet")
    assert (meta.num_classes, meta.input_shape) == (200, (3, 64, 64))
    assert len(datasets.info("cifar10").mean) == 3 and len(datasets.info("mnist").std) == 1
    with pytest.raises(AttributeError):
        meta.num_classes = 3  # frozen


@pytest.mark.parametrize("call", [datasets.info, datasets.load, datasets.loaders])
def test_unknown_name_lists_valid_names(call):
    with pytest.raises(UnknownNameError) as err:
        call("imagenet-1k")
    assert "cifar10" in str(err.value) and "fashion-mnist" in str(err.value)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DFLEARN_DATA", str(tmp_path))
    assert datasets.default_root() == tmp_path
    monkeypatch.delenv("DFLEARN_DATA")
    assert datasets.default_root() == Path.home() / ".cache" / "dflearn" / "data"


# --- loading each format ------------------------------------------------------------------


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("kmnist", "KMNIST")])
def test_mnist_family_normalised(tmp_path, name, folder):
    write_idx(tmp_path / folder / "raw")
    train = datasets.load(name, root=tmp_path, download=False)
    test = datasets.load(name, root=tmp_path, train=False, download=False)
    assert (len(train), len(test)) == (30, 10)
    x, y = train[3]
    assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert isinstance(y, int) and y == 3
    meta = datasets.info(name)
    pixels = torch.from_numpy(rng_images(30, (28, 28))[3]).float() / 255
    torch.testing.assert_close(x[0], (pixels - meta.mean[0]) / meta.std[0])


def test_cifar10_flip_augmentation(tmp_path, no_md5):
    write_cifar(tmp_path)
    plain = datasets.load("cifar10", root=tmp_path, augment=False, download=False)
    assert len(plain) == 40 and len(datasets.load("cifar10", root=tmp_path, train=False)) == 8
    x, _ = plain[0]
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(plain[0][0], x)  # no randomness without augmentation
    augmented = datasets.load("cifar10", root=tmp_path, download=False)
    torch.manual_seed(0)
    draws = [augmented[0][0] for _ in range(20)]
    flipped = [torch.equal(d, x.flip(-1)) for d in draws]
    assert any(flipped) and not all(flipped)
    assert all(f or torch.equal(d, x) for d, f in zip(draws, flipped, strict=True))


def test_cifar100_randaugment_cutout(tmp_path, no_md5):
    write_cifar(tmp_path, hundred=True)
    train = datasets.load("cifar100", root=tmp_path, download=False)
    assert len(train) == 8
    torch.manual_seed(0)
    x, y = train[1]
    assert x.shape == (3, 32, 32) and 0 <= y < 100
    assert int((x == 0).all(dim=0).sum()) >= 8 * 8  # the Cutout square
    plain, _ = datasets.load("cifar100", root=tmp_path, augment=False, download=False)[1]
    assert int((plain == 0).all(dim=0).sum()) == 0
    test, _ = datasets.load("cifar100", root=tmp_path, train=False, download=False)[1]
    torch.testing.assert_close(test, datasets.load("cifar100", root=tmp_path, train=False)[1][0])


def test_cifar_keeps_md5_check_for_real_data(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(RuntimeError, match="corrupted"):
        datasets.load("cifar10", root=tmp_path, download=False)


def test_svhn(tmp_path, no_md5):
    sio = pytest.importorskip("scipy.io")
    folder = tmp_path / "svhn"
    folder.mkdir()
    for split, n in (("train", 12), ("test", 4)):
        labels = np.arange(n).reshape(n, 1) % 10 + 1  # the files label digit 0 as 10
        sio.savemat(folder / f"{split}_32x32.mat", {"X": rng_images(32, (32, 3, n)), "y": labels})
    train = datasets.load("svhn", root=tmp_path, download=False)
    assert len(train) == 12 and len(datasets.load("svhn", root=tmp_path, train=False)) == 4
    assert train[0][0].shape == (3, 32, 32)
    assert [train[i][1] for i in range(12)] == [(i % 10 + 1) % 10 for i in range(12)]


def test_tiny_imagenet(tmp_path):
    wnids = write_tiny_imagenet(tmp_path)
    train = datasets.load("tiny-imagenet", root=tmp_path, augment=False)
    test = datasets.load("tiny-imagenet", root=tmp_path, train=False)
    assert (len(train), len(test)) == (9, 3)
    x, _ = test[0]  # a grayscale JPEG, converted to RGB
    assert x.shape == (3, 64, 64)
    # Both splits index classes by sorted wnid, so labels agree across them.
    assert [test[k][1] for k in range(3)] == [sorted(wnids).index(w) for w in wnids]
    assert sorted({train[i][1] for i in range(9)}) == [0, 1, 2]
    torch.manual_seed(0)
    augmented, _ = datasets.load("tiny-imagenet", root=tmp_path)[0]
    assert int((augmented == 0).all(dim=0).sum()) >= 16 * 16


# --- missing data -------------------------------------------------------------------------


def test_fashion_mnist_debian_fallback(tmp_path, monkeypatch):
    system = tmp_path / "system"
    write_idx(system, gz=True)
    monkeypatch.setattr(mnist, "FASHION_MNIST_SYSTEM_DIR", system)
    root = tmp_path / "data"
    for download in (False, True):  # offline: the download is skipped, then the copy is used
        train = datasets.load("fashion-mnist", root=root, download=download)
        assert len(train) == 30 and train[0][0].shape == (1, 28, 28)
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(sum(IDX_FILES.values(), ()))


def test_missing_data_error_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    start = time.perf_counter()
    with pytest.raises(datasets.DatasetNotFoundError) as err:
        datasets.load("fashion-mnist", root=tmp_path, download=True)
    assert time.perf_counter() - start < 1
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "download" in message and "unreachable" in message
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert "--data-dir" in message and "DFLEARN_DATA" in message


def test_missing_tiny_imagenet_names_the_folder(tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError, match="tiny-imagenet-200"):
        datasets.load("tiny-imagenet", root=tmp_path)


def test_download_runs_when_network_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "network_reachable", lambda url, timeout=3.0: True)
    fetched = []

    def fake_download(self):
        fetched.append(self.raw_folder)
        write_idx(Path(self.raw_folder))

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", fake_download)
    assert len(datasets.load("mnist", root=tmp_path)) == 30 and len(fetched) == 1

    def failing_download(self):
        raise URLError("no route")

    monkeypatch.setattr(torchvision.datasets.KMNIST, "download", failing_download)
    with pytest.raises(datasets.DatasetNotFoundError, match="download failed.*no route"):
        datasets.load("kmnist", root=tmp_path)


def test_network_probe_on_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert REAL_PROBE(f"http://127.0.0.1:{port}/x", timeout=1.0)
    assert not REAL_PROBE(f"http://127.0.0.1:{port}/x", timeout=1.0)


@pytest.mark.skipif(
    not (mnist.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist(tmp_path):
    train = datasets.load("fashion-mnist", root=tmp_path, download=False)
    test = datasets.load("fashion-mnist", root=tmp_path, train=False, download=False)
    assert (len(train), len(test)) == (60000, 10000)


# --- loaders ------------------------------------------------------------------------------


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    write_idx(tmp_path / "MNIST" / "raw", n_train=50, n_test=20)
    return tmp_path


def test_loaders_val_split_and_limit(mnist_root):
    out = datasets.loaders("mnist", root=mnist_root, batch_size=8, val_fraction=0.25, limit=40)
    train, val = out.train.dataset.indices, out.val.dataset.indices
    assert (len(train), len(val), len(out.test.dataset)) == (30, 10, 20)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(40))
    assert out.info == datasets.info("mnist")
    x, y = next(iter(out.train))
    assert x.shape == (8, 1, 28, 28) and y.dtype == torch.int64
    assert datasets.loaders("mnist", root=mnist_root, limit=5).test.dataset.indices == range(5)
    assert datasets.loaders("mnist", root=mnist_root).val is None


def test_val_uses_plain_transform(tmp_path, no_md5):
    write_cifar(tmp_path)
    out = datasets.loaders("cifar10", root=tmp_path, val_fraction=0.5, seed=1)
    plain = datasets.load("cifar10", root=tmp_path, augment=False)
    first = out.val.dataset.indices[0]
    torch.testing.assert_close(out.val.dataset[0][0], plain[first][0])


def test_loaders_deterministic(mnist_root):
    def order(seed: int) -> list[int]:
        return epoch_labels(
            datasets.loaders("mnist", root=mnist_root, batch_size=7, seed=seed).train
        )

    assert order(3) == order(3) and order(3) != order(4)
    out = datasets.loaders("mnist", root=mnist_root, batch_size=7, seed=3)
    state = out.train_generator.get_state()
    first = epoch_labels(out.train)
    assert epoch_labels(out.train) != first  # a new order each epoch
    out.train_generator.set_state(state)
    assert epoch_labels(out.train) == first
    split = [datasets.loaders("mnist", root=mnist_root, val_fraction=0.2, seed=s) for s in (5, 5)]
    assert split[0].val.dataset.indices == split[1].val.dataset.indices


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 2.5},
        {"val_fraction": 1.0},
        {"val_fraction": -0.1},
        {"num_workers": -1},
        {"limit": 0},
        {"seed": "a"},
    ],
)
def test_loaders_reject_bad_arguments(kwargs, tmp_path):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        datasets.loaders("mnist", root=tmp_path, **kwargs)


def test_val_fraction_too_large_for_limit(mnist_root):
    with pytest.raises(ValueError, match="no training samples"):
        datasets.loaders("mnist", root=mnist_root, val_fraction=0.9, limit=1)
