"""Tests for the model registry and families."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dflearn import models
from dflearn.taps import Tap, named_taps

# Small settings so every registered model builds and runs quickly.
SMALL: dict[str, dict] = {
    "mlp": {"input_shape": (1, 8, 8), "num_classes": 5, "hidden": (16, 12)},
    "convnet": {"input_shape": (3, 16, 16), "num_classes": 7},
    "convnet-bn": {"input_shape": (1, 28, 28), "num_classes": 7},
    "resnet18": {"input_shape": (3, 16, 16), "num_classes": 6},
}
EXPECTED_TAPS = {"mlp": 2, "convnet": 5, "convnet-bn": 5, "resnet18": 4}


def small(name: str) -> dict:
    # A newly registered family must add small settings here to be tested.
    assert name in SMALL, f"no small test settings for model {name!r}"
    return SMALL[name]


def without_taps(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Tap replaced by nn.Identity."""
    clone = copy.deepcopy(model)
    for path, _ in named_taps(clone):
        parent_path, _, attr = path.rpartition(".")
        parent = clone.get_submodule(parent_path) if parent_path else clone
        setattr(parent, attr, nn.Identity())
    return clone


def batch(model: nn.Module, n: int = 3, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, *model.input_shape, dtype=dtype)


@pytest.mark.parametrize("name", models.list_models())
def test_output_shape_and_attributes(name: str) -> None:
    kwargs = small(name)
    model = models.create(name, **kwargs)
    assert model.input_shape == tuple(kwargs["input_shape"])
    assert model.num_classes == kwargs["num_classes"]
    assert model(batch(model)).shape == (3, kwargs["num_classes"])


@pytest.mark.parametrize("name", models.list_models())
def test_tap_count(name: str) -> None:
    assert len(named_taps(models.create(name, **small(name)))) == EXPECTED_TAPS[name]


@pytest.mark.parametrize("name", models.list_models())
def test_taps_are_identity(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name, **small(name)).eval()
    plain = without_taps(model).eval()
    assert not named_taps(plain)
    x = batch(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", models.list_models())
def test_float64(name: str) -> None:
    model = models.create(name, **small(name)).to(torch.float64)
    out = model(batch(model, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        models.create("no-such-model")
    for name in models.list_models():
        assert name in str(err.value)


def test_registered_names() -> None:
    assert {"mlp", "convnet", "convnet-bn", "resnet18"} <= set(models.list_models())


def test_mlp_layout() -> None:
    model = models.create("mlp", sizes=[20, 8, 6, 4], activation="tanh")
    kinds = [type(m) for m in model]
    assert kinds == [
        nn.Flatten,
        nn.Linear, nn.Tanh, Tap,
        nn.Linear, nn.Tanh, Tap,
        nn.Linear,
    ]  # fmt: skip
    widths = [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)]
    assert widths == [(20, 8), (8, 6), (6, 4)]
    assert model.input_shape == (20,)
    assert model.num_classes == 4


def test_mlp_sizes_and_shape_agree() -> None:
    a = models.create("mlp", sizes=[64, 16, 12, 5])
    b = models.create("mlp", input_shape=(1, 8, 8), num_classes=5, hidden=(16, 12))
    assert [type(m) for m in a] == [type(m) for m in b]
    shapes = [(n, p.shape) for n, p in a.named_parameters()]
    assert shapes == [(n, p.shape) for n, p in b.named_parameters()]


def test_mlp_identity_is_linear() -> None:
    model = models.create("mlp", sizes=[6, 5, 4, 3], activation="identity", bias=False)
    assert sum(isinstance(m, nn.Identity) for m in model) == 2
    x = torch.randn(2, 6)
    w = torch.eye(6)
    for m in model:
        if isinstance(m, nn.Linear):
            w = m.weight @ w
    torch.testing.assert_close(model(x), x @ w.T)


def test_mlp_no_hidden_layers() -> None:
    model = models.create("mlp", sizes=[10, 3])
    assert [type(m) for m in model] == [nn.Flatten, nn.Linear]
    assert not named_taps(model)


def test_mlp_bad_activation() -> None:
    with pytest.raises(ValueError, match="leaky_relu"):
        models.create("mlp", sizes=[4, 3, 2], activation="swishy")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"input_shape": (4,)},
        {"sizes": [8, 2], "input_shape": (3, 3)},
        {"sizes": [8, 2], "num_classes": 3},
    ],
)
def test_mlp_bad_sizes(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        models.create("mlp", **kwargs)


def test_convnet_bn_has_batch_norm() -> None:
    plain = models.create("convnet", input_shape=(3, 16, 16))
    bn = models.create("convnet-bn", input_shape=(3, 16, 16))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 3
    convs = [m for m in plain if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (96, (5, 5), (2, 2)),
        (128, (5, 5), (2, 2)),
        (256, (5, 5), (2, 2)),
    ]


def test_convnet_default_shape() -> None:
    model = models.create("convnet")
    assert model.input_shape == (3, 32, 32) and model.num_classes == 10
    first_fc = next(m for m in model if isinstance(m, nn.Linear))
    assert first_fc.in_features == 256 * 3 * 3


def test_convnet_too_small() -> None:
    with pytest.raises(ValueError):
        models.create("convnet", input_shape=(3, 8, 8))


def test_resnet_blocks_taps() -> None:
    model = models.create("resnet18", input_shape=(3, 16, 16), num_classes=4, taps="blocks")
    assert len(named_taps(model)) == 8
    assert model(batch(model, n=2)).shape == (2, 4)


def test_resnet_stem_and_channels() -> None:
    cifar = models.create("resnet18", input_shape=(1, 16, 16), num_classes=3)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.in_channels == 1
    assert isinstance(cifar.maxpool, nn.Identity)
    imnet = models.create("resnet18", input_shape=(3, 32, 32), num_classes=3, stem="imagenet")
    assert imnet.conv1.kernel_size == (7, 7) and imnet.conv1.stride == (2, 2)
    assert isinstance(imnet.maxpool, nn.MaxPool2d)
    assert imnet(batch(imnet, n=2)).shape == (2, 3)


@pytest.mark.parametrize(("option", "value"), [("stem", "tiny"), ("taps", "layers")])
def test_resnet_bad_options(option: str, value: str) -> None:
    with pytest.raises(ValueError, match="valid"):
        models.create("resnet18", input_shape=(3, 16, 16), **{option: value})
