"""Run configuration: one dataclass, loaded from TOML, merged with CLI flags, validated.

Precedence, lowest first: the dataclass defaults, the saved config of the run being resumed,
a ``--config`` TOML file (a path, or the name of a config shipped in ``dflearn/configs``, see
:func:`list_configs`), the flags given on the command line. TOML keys are the long option
names with underscores (``batch_size = 64``, ``lr_schedule = "paper"``); ``--no-augment`` is
``augment = false`` and ``--hidden 512,512`` is ``hidden = [512, 512]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ConfigError",
    "RunConfig",
    "COMPARE_KEYS",
    "RESUME_MAY_CHANGE",
    "SCHEDULES",
    "FEEDBACKS",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "DEVICES",
    "load_toml",
    "load_config",
    "list_configs",
    "from_mapping",
    "validate",
    "to_dict",
    "to_toml",
    "parse_int_list",
    "parse_str_list",
    "resume_conflicts",
    "default_out",
]

SCHEDULES = ("fused", "two-pass")
FEEDBACKS = ("dense", "conv")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("none", "paper", "cosine")
DEVICES = ("auto", "cpu", "cuda")

# Keys a config file may hold for `dflearn compare` only; `train` ignores them.
COMPARE_KEYS = ("rules", "seeds")

# What a --resume may change: nothing here alters the numbers of the steps already taken.
# Everything else (rule, lr, seed, ...) would silently not apply (the optimizer state keeps
# the old lr) or would make the checkpoint meaningless, so it is refused.
# Alignment measurements fork the RNG, so align_every changes no training number either.
RESUME_MAY_CHANGE = frozenset(
    {"epochs", "device", "data_dir", "download", "workers", "align_every", "out"}
)


STEMS = ("cifar", "imagenet")  # resnet18: 3x3 stem for 32x32, 7x7 + max-pool for larger


class ConfigError(ValueError):
    """A configuration the run cannot use; the message says what to change."""


@dataclass
class RunConfig:
    """Everything that defines one training run."""

    rule: str = "bp"
    schedule: str | None = None  # None: the rule's default (fused)
    feedback: str | None = None  # None: the rule's default (dfa: dense, las/ltas: conv)
    model: str = "mlp"
    hidden: list[int] | None = None
    stem: str | None = None  # resnet18 only; None: the model's (cifar)
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = True
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "none"
    seed: int = 0
    device: str = "auto"
    align_every: int = 0
    val_fraction: float = 0.0
    augment: bool = True
    limit: int | None = None
    workers: int = 0
    out: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` applied (values are coerced and checked for type)."""
        return from_mapping(changes, base=self)


# ---------------------------------------------------------------------------------------
# Parsing single values


def parse_int_list(text: str) -> list[int]:
    """``"1024,1024"`` -> ``[1024, 1024]``, ``""`` -> ``[]``; ``ValueError`` on anything else."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def parse_str_list(text: str) -> list[str]:
    """``"bp, dfa"`` -> ``["bp", "dfa"]``."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"expected a comma-separated list, got {text!r}")
    return parts


def _as_int(key: str, value: Any) -> int:
    # bool is an int subclass; `epochs = true` is a mistake, not 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return value


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def _as_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    return value


def _as_int_list(key: str, value: Any) -> list[int]:
    if isinstance(value, str):
        try:
            return parse_int_list(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    # An empty list is allowed: an MLP without hidden layers (and so without taps)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list of integers, got {value!r}")
    return [_as_int(key, v) for v in value]


def _optional(conv: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda key, value: None if value is None else conv(key, value)


_COERCE: dict[str, Callable[[str, Any], Any]] = {
    "rule": _as_str,
    "schedule": _optional(_as_str),
    "feedback": _optional(_as_str),
    "model": _as_str,
    "hidden": _optional(_as_int_list),
    "stem": _optional(_as_str),
    "dataset": _as_str,
    "data_dir": _optional(_as_str),
    "download": _as_bool,
    "epochs": _as_int,
    "batch_size": _as_int,
    "optimizer": _as_str,
    "lr": _as_float,
    "momentum": _as_float,
    "weight_decay": _as_float,
    "lr_schedule": _as_str,
    "seed": _as_int,
    "device": _as_str,
    "align_every": _as_int,
    "val_fraction": _as_float,
    "augment": _as_bool,
    "limit": _optional(_as_int),
    "workers": _as_int,
    "out": _optional(_as_str),
}


# ---------------------------------------------------------------------------------------
# Loading and merging


def load_toml(path: str | Path) -> dict[str, Any]:
    """The key/value table of a TOML config file; a missing or malformed file is a
    ``ConfigError``."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def list_configs() -> list[str]:
    """The names of the ready-made configs shipped in ``dflearn/configs`` (the paper's
    settings), for ``dflearn compare --config NAME``."""
    folder = resources.files("dflearn") / "configs"
    names = [f.name.removesuffix(".toml") for f in folder.iterdir() if f.name.endswith(".toml")]
    return sorted(names)


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """The table of a ``--config`` value: a TOML file if that path exists, else the packaged
    config of that name (``cifar10-convnet`` or ``cifar10-convnet.toml``)."""
    path = Path(name_or_path)
    if path.exists():
        return load_toml(path)
    name = path.name.removesuffix(".toml")
    # A bare name only: "runs/x.toml" that does not exist is a missing file, not a name
    if path.parent == Path(".") and name in list_configs():
        packaged = resources.files("dflearn") / "configs" / f"{name}.toml"
        # read through the resource (works from a wheel or a zip alike), not a file path
        with packaged.open("rb") as handle:
            return tomllib.load(handle)
    raise ConfigError(
        f"config file not found: {path}; packaged configs (give the bare name): "
        + ", ".join(list_configs())
    )


def from_mapping(
    values: Mapping[str, Any],
    base: RunConfig | None = None,
    *,
    allow: tuple[str, ...] = (),
    source: str = "config",
) -> RunConfig:
    """``base`` (default: the defaults) updated with ``values``.

    Keys in ``allow`` (e.g. the compare-only ``rules``/``seeds``) are kept in ``extra``;
    any other unknown key is an error that lists the valid keys.
    """
    cfg = dataclasses.replace(base) if base is not None else RunConfig()
    cfg.extra = dict(cfg.extra)
    for key, value in values.items():
        key = key.replace("-", "_")
        if key in _COERCE:
            setattr(cfg, key, _COERCE[key](key, value))
        elif key in allow:
            cfg.extra[key] = value
        else:
            valid = ", ".join(sorted([*_COERCE, *allow]))
            raise ConfigError(f"unknown key {key!r} in {source}; valid keys: {valid}")
    return cfg


# ---------------------------------------------------------------------------------------
# Validation


def validate(cfg: RunConfig, *, check_names: bool = True) -> RunConfig:
    """Refuse values no run could use, with a message naming the option; returns ``cfg``.

    ``check_names`` also checks rule, model and dataset against the registries (this
    imports torch).
    """
    _check_numbers(cfg)
    _check_choices(cfg)
    if check_names:
        _check_names(cfg)
    if cfg.hidden is not None and cfg.model != "mlp":
        raise ConfigError(f"--hidden applies to --model mlp only (model is {cfg.model!r})")
    if cfg.stem is not None and cfg.model != "resnet18":
        raise ConfigError(f"--stem applies to --model resnet18 only (model is {cfg.model!r})")
    return cfg


def _check_numbers(cfg: RunConfig) -> None:
    checks = [
        (math.isfinite(cfg.lr) and cfg.lr > 0, "--lr must be > 0", cfg.lr),
        (cfg.batch_size >= 1, "--batch-size must be >= 1", cfg.batch_size),
        (cfg.epochs >= 1, "--epochs must be >= 1", cfg.epochs),
        (cfg.momentum >= 0, "--momentum must be >= 0", cfg.momentum),
        (cfg.weight_decay >= 0, "--weight-decay must be >= 0", cfg.weight_decay),
        (0 <= cfg.val_fraction < 1, "--val-fraction must be in [0, 1)", cfg.val_fraction),
        (cfg.align_every >= 0, "--align-every must be >= 0", cfg.align_every),
        (cfg.seed >= 0, "--seed must be >= 0", cfg.seed),
        (cfg.workers >= 0, "--workers must be >= 0", cfg.workers),
        (cfg.limit is None or cfg.limit >= 1, "--limit must be >= 1", cfg.limit),
    ]
    for ok, message, value in checks:
        # `not ok` (rather than ok is False) also refuses NaN, which fails every comparison
        if not ok:
            raise ConfigError(f"{message} (got {value})")
    if cfg.hidden is not None and any(width < 1 for width in cfg.hidden):
        raise ConfigError(f"--hidden widths must be >= 1 (got {cfg.hidden})")


def _check_choices(cfg: RunConfig) -> None:
    for option, value, choices in [
        ("schedule", cfg.schedule, SCHEDULES),
        ("feedback", cfg.feedback, FEEDBACKS),
        ("optimizer", cfg.optimizer, OPTIMIZERS),
        ("lr-schedule", cfg.lr_schedule, LR_SCHEDULES),
        ("stem", cfg.stem, STEMS),
    ]:
        if value is not None and value not in choices:
            raise ConfigError(f"--{option} must be one of {', '.join(choices)} (got {value!r})")

    # cuda:N is accepted too, for machines with several GPUs
    if cfg.device not in DEVICES and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)} (got {cfg.device!r})")


def _check_names(cfg: RunConfig) -> None:
    import dflearn
    from dflearn import datasets, models

    for kind, value, valid in [
        ("rule", cfg.rule, dflearn.list_rules()),
        ("model", cfg.model, models.list_models()),
        ("dataset", cfg.dataset, datasets.list_datasets()),
    ]:
        if value not in valid:
            raise ConfigError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")


def resume_conflicts(saved: RunConfig, wanted: RunConfig) -> list[str]:
    """The fields a resume would change that it may not (see ``RESUME_MAY_CHANGE``)."""
    return [
        f"{f.name} (run has {getattr(saved, f.name)!r}, asked {getattr(wanted, f.name)!r})"
        for f in dataclasses.fields(RunConfig)
        if f.name not in RESUME_MAY_CHANGE
        and f.name != "extra"
        and getattr(saved, f.name) != getattr(wanted, f.name)
    ]


# ---------------------------------------------------------------------------------------
# Output


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config fields as plain values (without ``extra``)."""
    data = dataclasses.asdict(cfg)
    data.pop("extra")
    return data


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    # A JSON string literal is also a valid TOML basic string
    return json.dumps(str(value))


def to_toml(cfg: RunConfig, header: str = "", exclude: Collection[str] = ()) -> str:
    """The config as a flat TOML document that :func:`load_toml` reads back.

    Keys whose value is ``None`` (meaning "the default") are left out: TOML has no null.
    The standard library reads TOML but cannot write it; a flat table of scalars and
    lists is all we need, so this avoids another dependency.
    """
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in to_dict(cfg).items():
        if value is not None and key not in exclude:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def default_out(cfg: RunConfig) -> str:
    """Where a run writes when ``--out`` is not given."""
    return str(Path("runs") / f"{cfg.dataset}-{cfg.model}-{cfg.rule}-seed{cfg.seed}")
