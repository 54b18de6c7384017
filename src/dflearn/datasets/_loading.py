"""Transforms, ``load`` and ``loaders``: from a dataset name to normalised tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from dflearn.datasets._common import DATASETS, INFOS, DatasetInfo, default_root


def info(name: str) -> DatasetInfo:
    """Metadata of dataset ``name``; an unknown name raises an error listing the valid ones."""
    DATASETS.get(name)
    return INFOS[name]


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def transform(meta: DatasetInfo, augment: bool) -> Callable:
    """PIL image -> normalised float tensor, with ``meta``'s training augmentation if asked."""
    before: list = []  # augmentations on the PIL image
    after: list = []  # augmentations on the normalised tensor
    if augment and meta.augmentation == "flip":
        before = [v2.RandomHorizontalFlip()]
    elif augment and meta.augmentation == "randaugment-cutout":
        before = [v2.RandAugment()]
        # Cutout (DeVries & Taylor, 2017) is RandomErasing always applied with a square of a
        # fixed size, filled with 0 = the mean after normalising; 1/16 of the area gives their
        # 8x8 patch on 32x32 CIFAR-100 and 16x16 on 64x64 Tiny ImageNet.
        after = [v2.RandomErasing(p=1.0, scale=(1 / 16, 1 / 16), ratio=(1.0, 1.0), value=0)]
    return v2.Compose(
        [
            *before,
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(meta.mean, meta.std),
            *after,
            v2.ToPureTensor(),
        ]
    )


class TransformedView(Dataset):
    """``transform`` applied to samples ``indices`` of ``base``; views share one copy of data."""

    def __init__(self, base: Dataset, indices: Sequence[int], transform: Callable) -> None:
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[self.indices[i]]
        return self.transform(image), int(label)


# Splits without augmentation are decoded once into tensors up to this size.
CACHE_LIMIT_BYTES = 1 << 30


def cached(view: TransformedView) -> Dataset:
    """``view`` decoded once into a ``TensorDataset`` when it fits the cache limit.

    For a deterministic transform every epoch would redo the same PIL decoding and
    normalising, which costs more than a small MLP's training step.
    """
    first, _ = view[0] if len(view) else (torch.empty(0), 0)
    if len(view) * first.numel() * first.element_size() > CACHE_LIMIT_BYTES:
        return view
    images, labels = zip(*(view[i] for i in range(len(view))))
    decoded = TensorDataset(torch.stack(images), torch.tensor(labels))
    decoded.indices = view.indices  # which samples of the split, as on the view
    return decoded


def load(
    name: str,
    root: str | Path | None = None,
    train: bool = True,
    augment: bool = True,
    download: bool = True,
) -> Dataset:
    """Split ``train`` (else test) of ``name`` as ``(float tensor CxHxW, int label)`` pairs.

    Training augmentation applies only when ``train`` and ``augment``. Missing data is
    downloaded (``download``) or copied from a system package where possible, else
    ``DatasetNotFoundError`` says how to get it.
    """
    raw = _raw(name, root, train, download)
    return TransformedView(raw, range(len(raw)), transform(INFOS[name], train and augment))


@dataclass
class Loaders:
    """Data loaders of one dataset; ``train_generator`` drives the training shuffle order."""

    train: DataLoader
    val: DataLoader | None
    test: DataLoader
    info: DatasetInfo
    train_generator: torch.Generator


def loaders(
    name: str,
    root: str | Path | None = None,
    batch_size: int = 128,
    val_fraction: float = 0.0,
    augment: bool = True,
    download: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    limit: int | None = None,
) -> Loaders:
    """Train, validation and test loaders for dataset ``name``.

    ``limit`` keeps the first ``limit`` samples of the training and test sets; the validation
    set (``val_fraction`` of the kept training samples, drawn with ``seed``) is then carved
    from the training set and sees no augmentation. Saving and restoring
    ``train_generator.get_state()`` reproduces the shuffle order when resuming.
    """
    _check_loader_args(batch_size, val_fraction, seed, num_workers, limit)
    meta = info(name)
    train_raw = _raw(name, root, True, download)
    test_raw = _raw(name, root, False, download)
    train_idx, val_idx = _split(_first(len(train_raw), limit), val_fraction, seed)
    generator = torch.Generator().manual_seed(seed)

    def loader(dataset: Dataset, **kwargs) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, **kwargs)

    plain = transform(meta, augment=False)
    train_view = TransformedView(train_raw, train_idx, transform(meta, augment))
    if not augment or meta.augmentation == "none":
        train_view = cached(train_view)
    return Loaders(
        train=loader(train_view, shuffle=True, generator=generator),
        val=loader(cached(TransformedView(train_raw, val_idx, plain))) if val_idx else None,
        test=loader(cached(TransformedView(test_raw, _first(len(test_raw), limit), plain))),
        info=meta,
        train_generator=generator,
    )


def _raw(name: str, root: str | Path | None, train: bool, download: bool) -> Dataset:
    """The untransformed split, from the registered factory."""
    factory = DATASETS.get(name)
    return factory(Path(root).expanduser() if root is not None else default_root(), train, download)


def _first(n: int, limit: int | None) -> range:
    return range(n if limit is None else min(n, limit))


def _split(indices: range, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random (train, val) index lists; val is empty when ``val_fraction`` is 0."""
    n_val = round(len(indices) * val_fraction)
    if val_fraction > 0:
        n_val = max(n_val, 1)
        if n_val >= len(indices):
            raise ValueError(f"val_fraction={val_fraction} leaves no training samples")
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def _check_loader_args(
    batch_size: int, val_fraction: float, seed: int, num_workers: int, limit: int | None
) -> None:
    if not (_is_int(batch_size) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not (_is_int(num_workers) and num_workers >= 0):
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if not (limit is None or (_is_int(limit) and limit >= 1)):
        raise ValueError(f"limit must be None or an int >= 1, got {limit!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
