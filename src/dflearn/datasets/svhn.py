"""SVHN (3x32x32, 10 classes; the ``extra`` split is not used). Reading it needs scipy."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets

from dflearn.datasets._common import DatasetInfo, ensure_present, register


def svhn_folder(root: Path) -> Path:
    """SVHN's ``.mat`` files live in their own folder, as torchvision leaves them loose in root."""
    return Path(root) / "svhn"


@register(DatasetInfo("svhn", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)))
def build(root: Path, train: bool, download: bool) -> Dataset:
    """The raw SVHN split; labels are 0-9 (torchvision maps the file's 10 to 0)."""
    if importlib.util.find_spec("scipy") is None:
        raise ImportError("the svhn dataset needs scipy to read its .mat files: pip install scipy")
    split = "train" if train else "test"
    url, filename, _ = datasets.SVHN.split_list[split]
    folder = svhn_folder(root)
    ensure_present(
        "svhn",
        root,
        (folder / filename).is_file,
        download=download,
        url=url,
        fetch=lambda: datasets.SVHN(folder, split=split, download=True),
        hints=[f"or put {filename} in {folder}"],
    )
    return datasets.SVHN(folder, split=split)  # checks the md5
