"""Image classification datasets for dflearn, by name: ``loaders("cifar10", batch_size=128)``.

Data lives under ``default_root()`` (``$DFLEARN_DATA`` or ``~/.cache/dflearn/data``) in
torchvision's layouts; missing data is downloaded when the network is reachable, copied from
Debian's ``dataset-fashion-mnist`` for Fashion-MNIST, or else reported with ways to get it.
"""

from __future__ import annotations

# Imported for their registrations.
from dflearn.datasets import cifar, mnist, svhn, tiny_imagenet  # noqa: F401
from dflearn.datasets._common import DatasetInfo, DatasetNotFoundError, default_root
from dflearn.datasets._loading import Loaders, info, list_datasets, load, loaders

__all__ = [
    "DatasetInfo",
    "DatasetNotFoundError",
    "Loaders",
    "default_root",
    "info",
    "list_datasets",
    "load",
    "loaders",
]
