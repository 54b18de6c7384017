"""ResNet-18 from torchvision with taps after its stages or residual blocks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dflearn.models._common import MODELS, finish, image_shape
from dflearn.taps import Tap

STEMS = ("cifar", "imagenet")
TAP_MODES = ("stages", "blocks")
STAGES = ("layer1", "layer2", "layer3", "layer4")


def _check(option: str, value: str, valid: Sequence[str]) -> None:
    """Raise ValueError naming the valid values when ``value`` is not one of them."""
    if value not in valid:
        raise ValueError(f"unknown {option} {value!r}; valid: {', '.join(valid)}")


def _set_stem(model: nn.Module, stem: str, in_channels: int) -> None:
    """Replace conv1 (and maxpool) as the stem and input channels require."""
    if stem == "cifar":
        # Small images: keep full resolution into layer1, as is usual for CIFAR ResNets.
        model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)


def _add_taps(model: nn.Module, taps: str) -> None:
    """Wrap each stage so a Tap follows the stage or every BasicBlock in it."""
    for name in STAGES:
        stage = getattr(model, name)
        if taps == "stages":
            wrapped = nn.Sequential(stage, Tap())
        else:
            wrapped = nn.Sequential(*(m for block in stage for m in (block, Tap())))
        setattr(model, name, wrapped)


@MODELS.register("resnet18")
def resnet18(
    *,
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    stem: str = "cifar",
    taps: str = "stages",
) -> nn.Module:
    """torchvision's ResNet-18 (untrained) with dflearn taps.

    ``stem="cifar"`` uses a 3x3 stride-1 first conv and no max pool; ``"imagenet"`` keeps
    torchvision's 7x7 stride-2 conv and max pool. ``taps="stages"`` puts a Tap after each
    of layer1..layer4 (4 taps), ``"blocks"`` after every BasicBlock (8 taps).
    """
    _check("stem", stem, STEMS)
    _check("taps", taps, TAP_MODES)
    shape = image_shape(input_shape)
    # Imported here: torchvision's import is slow and only this family needs it.
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_classes)
    _set_stem(model, stem, shape[0])
    _add_taps(model, taps)
    return finish(model, shape, num_classes)
