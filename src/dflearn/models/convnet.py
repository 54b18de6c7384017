"""The conv net of Yang, Lee and Park (2024), "Direct Feedback Learning With Local
Alignment Support": three 5x5 conv blocks and two 2048-wide fully connected layers."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dflearn.models._common import MODELS, finish, image_shape
from dflearn.taps import Tap

CHANNELS = (96, 128, 256)
FC_WIDTH = 2048


def _pooled(size: int) -> int:
    """Spatial size after MaxPool2d(3, stride 2) without padding."""
    return (size - 3) // 2 + 1


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    """conv -> [BN] -> ReLU -> pool -> Tap; the 5x5 conv keeps size (padding 2)."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 5, padding=2)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers += [nn.ReLU(), nn.MaxPool2d(3, stride=2), Tap()]
    return layers


def _build(
    input_shape: Sequence[int],
    num_classes: int,
    batch_norm: bool,
    channels: Sequence[int] = CHANNELS,
    fc_width: int = FC_WIDTH,
) -> nn.Module:
    """The conv net as an nn.Sequential; the flattened width follows from input_shape."""
    c, h, w = image_shape(input_shape)
    if len(channels) != 3:
        raise ValueError(f"convnet has three conv blocks: give 3 channel counts, got {channels}")
    layers: list[nn.Module] = []
    for c_in, c_out in zip((c, *channels[:-1]), channels, strict=True):
        layers += _conv_block(c_in, c_out, batch_norm)
        h, w = _pooled(h), _pooled(w)
        if h < 1 or w < 1:
            raise ValueError(f"input_shape {tuple(input_shape)} is too small for convnet")
    layers += [
        nn.Flatten(),
        nn.Linear(channels[-1] * h * w, fc_width), nn.ReLU(), Tap(),
        nn.Linear(fc_width, fc_width), nn.ReLU(), Tap(),
        nn.Linear(fc_width, num_classes),
    ]  # fmt: skip
    return finish(nn.Sequential(*layers), input_shape, num_classes)


@MODELS.register("convnet")
def convnet(
    *,
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    channels: Sequence[int] = CHANNELS,
    fc_width: int = FC_WIDTH,
) -> nn.Sequential:
    """The paper's conv net without batch norm; five taps (three conv, two fc).

    ``channels`` and ``fc_width`` shrink it for quick runs and tests.
    """
    return _build(input_shape, num_classes, False, channels, fc_width)


@MODELS.register("convnet-bn")
def convnet_bn(
    *,
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    channels: Sequence[int] = CHANNELS,
    fc_width: int = FC_WIDTH,
) -> nn.Sequential:
    """The paper's conv net with BatchNorm2d after each convolution; five taps."""
    return _build(input_shape, num_classes, True, channels, fc_width)
