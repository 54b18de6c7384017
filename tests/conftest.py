"""Shared test fixtures: tiny datasets on disk in their real formats (never the network)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

FAKE_TRAIN, FAKE_TEST = 256, 128


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX ubyte file: magic (0, 0, 0x08 = ubyte, ndim), big-endian sizes, then the data."""
    header = struct.pack(">4B", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def learnable_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose class (0-9) is a bright horizontal band at row 2*label + 4,
    on noise: easy enough that a tiny MLP learns it within an epoch or two."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 80, (n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row = 2 * int(label) + 4
        images[i, row : row + 3, 4:24] = 255
    return images, labels


def write_fake_mnist(root: Path, folder: str, n_train: int, n_test: int) -> Path:
    """Unpacked IDX files where torchvision's ``folder`` class (e.g. ``FashionMNIST``) looks:
    ``root/<folder>/raw/``. Returns ``root``."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = learnable_images(n, seed)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    return root


@pytest.fixture(scope="session")
def fake_fashion_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a tiny Fashion-MNIST (256 train, 128 test samples of 1x28x28,
    10 classes) in torchvision's raw layout; pass it as ``--data-dir``."""
    return write_fake_mnist(tmp_path_factory.mktemp("data"), "FashionMNIST", FAKE_TRAIN, FAKE_TEST)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tests use tiny tensors: on a small, busy machine OpenMP threads mostly
    # wait for each other.
    import torch

    torch.set_num_threads(1)
