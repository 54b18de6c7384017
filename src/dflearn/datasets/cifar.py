"""CIFAR-10 and CIFAR-100 (3x32x32) in torchvision's python-pickle layout."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets

from dflearn.datasets._common import DatasetInfo, ensure_present, register


def _register(info: DatasetInfo, cls: type[datasets.CIFAR10]) -> None:
    """File a raw-split factory for torchvision's ``cls``."""

    def build(root: Path, train: bool, download: bool) -> Dataset:
        folder = Path(root) / cls.base_folder
        files = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        ensure_present(
            info.name,
            root,
            lambda: all((folder / name).is_file() for name in files),
            download=download,
            url=cls.url,
            fetch=lambda: cls(root, train=train, download=True),
            hints=[f"or unpack {cls.url.rsplit('/', 1)[-1]} in {root}, giving {folder}"],
        )
        # Presence above only looks at file names; torchvision still checks every md5 here, so
        # a truncated or foreign file fails loudly instead of training on garbage.
        return cls(root, train=train)

    register(info)(build)


_register(
    DatasetInfo(
        "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "flip"
    ),
    datasets.CIFAR10,
)
_register(
    DatasetInfo(
        "cifar100",
        100,
        (3, 32, 32),
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        "randaugment-cutout",
    ),
    datasets.CIFAR100,
)
