"""MNIST-style datasets: MNIST, Fashion-MNIST and Kuzushiji-MNIST (1x28x28, 10 classes)."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets

from dflearn.datasets._common import DatasetInfo, ensure_present, register

# Where Debian's ``dataset-fashion-mnist`` package puts its files; tests point it elsewhere.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def raw_folder(cls: type[datasets.MNIST], root: Path) -> Path:
    """Where torchvision's ``cls`` looks for the unpacked IDX files."""
    return Path(root) / cls.__name__ / "raw"


def copy_system_fashion_mnist(root: Path, source: Path | None = None) -> bool:
    """Unpack Debian's Fashion-MNIST into torchvision's layout under ``root``.

    Returns False when the package's files are absent. No md5 check: Debian recompressed the
    files, so the gzip bytes differ from upstream's while the contents are the same.
    """
    source = FASHION_MNIST_SYSTEM_DIR if source is None else Path(source)
    if not all((source / f"{name}.gz").is_file() for name in _FILES):
        return False
    target = raw_folder(datasets.FashionMNIST, root)
    target.mkdir(parents=True, exist_ok=True)
    for name in _FILES:
        if not (target / name).is_file():
            _gunzip_atomic(source / f"{name}.gz", target / name)
    return True


def _gunzip_atomic(src: Path, dest: Path) -> None:
    """Unpack ``src`` to ``dest`` via a temp file, so an interrupted copy never looks complete."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with gzip.open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _register(info: DatasetInfo, cls: type[datasets.MNIST], apt: bool = False) -> None:
    """File a raw-split factory for torchvision's ``cls``; ``apt`` adds the Debian fallback."""

    def build(root: Path, train: bool, download: bool) -> Dataset:
        folder = raw_folder(cls, root)
        hints = [f"or put the unpacked (gunzipped) files {', '.join(_FILES)} in {folder}"]
        if apt:
            hints.insert(
                0,
                f"sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu); dflearn "
                f"then copies it from {FASHION_MNIST_SYSTEM_DIR}",
            )
        ensure_present(
            info.name,
            root,
            lambda: all((folder / name).is_file() for name in _FILES),
            download=download,
            url=cls.mirrors[0],
            fetch=lambda: cls(root, train=train, download=True),
            fallback=(lambda: copy_system_fashion_mnist(root)) if apt else None,
            hints=hints,
        )
        return cls(root, train=train)

    register(info)(build)


_register(DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,)), datasets.MNIST)
_register(
    DatasetInfo("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,)),
    datasets.FashionMNIST,
    apt=True,
)
_register(DatasetInfo("kmnist", 10, (1, 28, 28), (0.1918,), (0.3483,)), datasets.KMNIST)
