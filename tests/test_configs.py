"""The packaged configs (``dflearn/configs/*.toml``): each one loads, validates, builds its
model under every rule it lists, and takes one training step on tiny fake data in the real
on-disk format of its dataset. New config files are picked up by ``list_configs()``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from dflearn import cli, datasets, training
from dflearn.config import (
    COMPARE_KEYS,
    ConfigError,
    from_mapping,
    list_configs,
    load_config,
    validate,
)

# The writers of the real formats live with the dataset tests; reused, not copied
from test_datasets import write_cifar, write_idx, write_tiny_imagenet

# Small batches keep the full-size models (46M-parameter MLP, ResNet-18 at 64x64) cheap on CPU;
# BatchNorm needs more than one sample per batch in training mode.
STEP_BATCH = 2

EXPECTED = {
    "mnist-mlp",
    "cifar10-mlp",
    "cifar10-convnet",
    "cifar10-convnet-bn",
    "cifar10-resnet18",
    "cifar100-mlp",
    "cifar100-convnet",
    "cifar100-convnet-bn",
    "cifar100-resnet18",
    "tiny-imagenet-resnet18",
}


@pytest.fixture(autouse=True)
def no_md5(monkeypatch):
    """Fake CIFAR files cannot match the real md5 sums: torchvision's check becomes "file
    exists" for these tests only (as in test_datasets.py)."""
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )


def write_fake(dataset: str, root: Path) -> None:
    """A few samples of ``dataset`` in its real format under ``root``."""
    if dataset == "mnist":
        write_idx(root / "MNIST" / "raw")
    elif dataset in ("cifar10", "cifar100"):
        write_cifar(root, hundred=dataset == "cifar100")
    elif dataset == "tiny-imagenet":
        write_tiny_imagenet(root)
    else:
        pytest.fail(f"no fake-data writer for {dataset!r}: add one to test_configs.py")


def compare_config(name: str):
    """The base config of ``dflearn compare --config NAME``, validated, with its grid."""
    cfg = validate(from_mapping(load_config(name), allow=COMPARE_KEYS, source=name))
    return cfg, cfg.extra["rules"], cfg.extra["seeds"]


def test_the_paper_settings_are_packaged():
    assert EXPECTED <= set(list_configs())


@pytest.mark.parametrize("name", list_configs())
def test_config_settings(name):
    cfg, rules, seeds = compare_config(name)
    tiny = cfg.dataset == "tiny-imagenet"
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.lr_schedule) == (
        "adam",
        1e-4,
        1e-4,
        "paper",
    )
    assert (cfg.batch_size, cfg.epochs) == ((64, 500) if tiny else (128, 100))
    assert rules == ["bp", "dfa", "las", "ltas"] and seeds == [0, 1, 2]
    assert cfg.augment and cfg.device == "auto"
    assert name == f"{cfg.dataset}-{cfg.model}"  # the file name says what it trains


@pytest.mark.parametrize("name", list_configs())
def test_config_trains_one_step(name, tmp_path):
    cfg, rules, seeds = compare_config(name)
    write_fake(cfg.dataset, tmp_path)
    data = datasets.loaders(
        cfg.dataset,
        root=tmp_path,
        batch_size=STEP_BATCH,
        augment=cfg.augment,
        download=False,
        seed=seeds[0],
    )
    x, y = next(iter(data.train))
    num_classes = datasets.info(cfg.dataset).num_classes
    for rule in rules:
        run = validate(cfg.replace(rule=rule, seed=seeds[0]))
        torch.manual_seed(run.seed)
        learner = training.build_rule(run)
        optimizer = training.make_optimizer(run, learner.parameters())
        assert training.make_scheduler(run, optimizer) is not None
        first = next(learner.model.parameters())
        before = first.detach().clone()
        loss, out = learner.step(x, y, optimizer)
        assert torch.isfinite(loss) and out.shape == (STEP_BATCH, num_classes), rule
        # Every listed rule trains the first layer (shallow would not; it is in no config)
        assert not torch.equal(first.detach(), before), rule


def test_name_resolves_like_a_path(tmp_path):
    packaged = load_config("cifar10-convnet")
    assert load_config("cifar10-convnet.toml") == packaged
    copy = tmp_path / "mine.toml"
    copy.write_text('model = "convnet"\n')
    assert load_config(copy) == {"model": "convnet"}
    args = cli.build_parser().parse_args(["compare", "--config", "cifar10-convnet", "--lr", "0.1"])
    cfg = cli.resolve_config(args, allow=COMPARE_KEYS)
    assert (cfg.model, cfg.dataset, cfg.lr) == ("convnet", "cifar10", 0.1)  # flags win


@pytest.mark.parametrize("given", ["cifar10-convnett", "missing/cifar10-convnet.toml"])
def test_unknown_config_lists_packaged_names(given):
    with pytest.raises(ConfigError) as err:
        load_config(given)
    message = str(err.value)
    assert given in message and all(name in message for name in list_configs())


def test_cli_unknown_config_and_list(capsys):
    assert cli.main(["compare", "--config", "no-such-config"]) == cli.EXIT_USAGE
    assert "cifar10-convnet" in capsys.readouterr().err
    assert cli.main(["list"]) == cli.EXIT_OK
    assert "configs:  " + ", ".join(list_configs()) in capsys.readouterr().out


def test_train_refuses_a_compare_config(capsys):
    # Silently training bp alone from a compare config would be the wrong experiment.
    assert cli.main(["train", "--config", "mnist-mlp"]) == cli.EXIT_USAGE
    assert "dflearn compare" in capsys.readouterr().err
