"""Tiny ImageNet (3x64x64, 200 classes), read from a user-supplied ``tiny-imagenet-200`` folder.

There is no download: the archive has no stable, checksummed home torchvision knows of. The
official ``val`` split serves as the test split, since the ``test`` images carry no labels.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset
from torchvision import datasets

from dflearn.datasets._common import DatasetInfo, ensure_present, register

ARCHIVE_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class TinyImageNet(datasets.ImageFolder):
    """``train/<wnid>/images/*.JPEG`` or ``val/images`` + ``val/val_annotations.txt``.

    Class indices follow the sorted ``wnids.txt`` for both splits, so they always agree.
    """

    def __init__(self, folder: Path, train: bool = True, **kwargs) -> None:
        self.folder = Path(folder)
        self.train = train  # read by make_dataset, which the base __init__ calls
        super().__init__(str(self.folder / ("train" if train else "val")), **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        wnids = sorted((self.folder / "wnids.txt").read_text().split())
        return wnids, {wnid: i for i, wnid in enumerate(wnids)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], *args, **kwargs):
        if self.train:
            return super().make_dataset(directory, class_to_idx, *args, **kwargs)
        lines = (Path(directory) / "val_annotations.txt").read_text().splitlines()
        rows = [line.split("\t") for line in lines if line.strip()]
        return [(str(Path(directory) / "images" / r[0]), class_to_idx[r[1]]) for r in rows]


@register(
    DatasetInfo(
        "tiny-imagenet",
        200,
        (3, 64, 64),
        (0.4802, 0.4481, 0.3975),
        (0.2770, 0.2691, 0.2821),
        "randaugment-cutout",
    )
)
def build(root: Path, train: bool, download: bool) -> Dataset:
    """The raw Tiny ImageNet split; ``download`` is ignored (there is none)."""
    folder = Path(root) / "tiny-imagenet-200"
    needed = ["wnids.txt", "train", "val/images", "val/val_annotations.txt"]
    ensure_present(
        "tiny-imagenet",
        root,
        lambda: all((folder / name).exists() for name in needed),
        download=download,
        hints=[
            f"download {ARCHIVE_URL} yourself and unzip it in {root}, giving {folder} "
            "(wnids.txt, train/<wnid>/images/*.JPEG, val/images, val/val_annotations.txt)"
        ],
    )
    return TinyImageNet(folder, train=train)
