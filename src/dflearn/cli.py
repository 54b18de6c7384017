"""The ``dflearn`` command line: ``train``, ``compare``, ``report`` and ``list``.

Subcommands live in ``COMMANDS``; another module adds one with ``register_command`` (and can
reuse the training options with ``add_run_options``). ``main(argv)`` returns the exit code:
0 success, 1 failure (e.g. missing dataset), 2 bad input (refused before any work),
3 training diverged (NaN/inf loss), 130/143 interrupted by SIGINT/SIGTERM.

Torch is imported only once a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dflearn import bench
from dflearn.config import (
    COMPARE_KEYS,
    DEVICES,
    FEEDBACKS,
    LR_SCHEDULES,
    OPTIMIZERS,
    SCHEDULES,
    STEMS,
    ConfigError,
    RunConfig,
    default_out,
    from_mapping,
    list_configs,
    load_config,
    load_toml,
    parse_int_list,
    parse_str_list,
    to_toml,
    validate,
)

log = logging.getLogger("dflearn.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_DIVERGED = 0, 1, 2, 3

# Namespace entries that are not run settings.
_CONTROL_KEYS = {"command", "config", "resume", "overwrite", "verbose", "quiet", "dirs"}


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, how it declares its options, and what it does."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register_command(
    name: str,
    help: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> None:
    """Add subcommand ``name``; ``run(args)`` returns the exit code."""
    if name in COMMANDS:
        raise ValueError(f"subcommand {name!r} is already registered")
    COMMANDS[name] = Command(help, add_arguments, run)


# ---------------------------------------------------------------------------------------
# Options


def _arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    # argparse shows an ArgumentTypeError's own message instead of "invalid <func> value"
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _help(text: str, key: str) -> str:
    default = getattr(RunConfig(), key)
    return text if default is None else f"{text} (default: {default})"


def add_run_options(parser: argparse.ArgumentParser, *, single: bool = True) -> None:
    """The options of one training run; ``single`` adds ``--rule`` and ``--seed`` (compare
    has ``--rules``/``--seeds`` instead). Every option defaults to "not given", so that a
    ``--config`` file can fill it."""
    rule = parser.add_argument_group("learning rule")
    if single:
        rule.add_argument(
            "--rule", help=_help("bp, dfa, las, ltas or shallow (`dflearn list` shows all)", "rule")
        )
    rule.add_argument(
        "--schedule", choices=SCHEDULES, help="las/ltas head schedule (default: the rule's, fused)"
    )
    rule.add_argument(
        "--feedback",
        choices=FEEDBACKS,
        help="feedback at conv taps (default: the rule's; dfa dense, las conv)",
    )

    model = parser.add_argument_group("model and data")
    model.add_argument("--model", help=_help("mlp, convnet, convnet-bn, resnet18", "model"))
    model.add_argument(
        "--hidden",
        type=_arg_type(parse_int_list),
        metavar="W1,W2,...",
        help="MLP hidden widths, e.g. 1024,1024 (default: the model's)",
    )
    model.add_argument(
        "--stem",
        choices=STEMS,
        help="resnet18 stem: cifar (3x3) or imagenet (7x7 + max-pool) (default: cifar)",
    )
    model.add_argument(
        "--dataset",
        help=_help(
            "mnist, fashion-mnist, kmnist, cifar10, cifar100, svhn, tiny-imagenet", "dataset"
        ),
    )
    model.add_argument(
        "--data-dir",
        metavar="DIR",
        help="data root (default: $DFLEARN_DATA or ~/.cache/dflearn/data)",
    )
    model.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help=_help("share of the training set held out for validation", "val_fraction"),
    )
    model.add_argument(
        "--no-augment", dest="augment", action="store_false", help="no training augmentation"
    )
    model.add_argument(
        "--no-download", dest="download", action="store_false", help="never download missing data"
    )
    model.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="use only the first N training and test samples (quick runs)",
    )
    model.add_argument(
        "--workers", type=int, metavar="N", help=_help("data loader worker processes", "workers")
    )

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, help=_help("training epochs", "epochs"))
    opt.add_argument("--batch-size", type=int, help=_help("batch size", "batch_size"))
    opt.add_argument("--optimizer", choices=OPTIMIZERS, help=_help("optimizer", "optimizer"))
    opt.add_argument("--lr", type=float, help=_help("learning rate", "lr"))
    opt.add_argument("--momentum", type=float, help=_help("SGD momentum", "momentum"))
    opt.add_argument("--weight-decay", type=float, help=_help("weight decay", "weight_decay"))
    opt.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help=_help(
            "per-epoch lr schedule; paper: x0.25 at 50/75/89/94%% of the epochs", "lr_schedule"
        ),
    )
    if single:
        opt.add_argument("--seed", type=int, help=_help("random seed", "seed"))

    run = parser.add_argument_group("run")
    run.add_argument(
        "--device",
        metavar="{" + ",".join(DEVICES) + "}",
        help=_help("auto = cuda when available", "device"),
    )
    run.add_argument(
        "--align-every",
        type=int,
        metavar="N",
        help=("also measure the alignment angles every N steps (default: 0 = at epoch ends only)"),
    )
    default_dir = (
        "runs/<dataset>-<model>-<rule>-seed<seed>"
        if single
        else ("runs/compare-<dataset>-<model>, one <rule>-seed<seed> directory per run")
    )
    run.add_argument("--out", metavar="DIR", help=f"output directory (default: {default_dir})")
    run.add_argument(
        "--config",
        metavar="FILE.toml|NAME",
        help=(
            "read settings from a TOML file, or a packaged config by name (`dflearn list` "
            "shows them); flags given here override it"
        ),
    )
    run.add_argument(
        "--resume",
        action="store_true",
        default=False,
        help="continue the run(s) in --out from the last checkpoint",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        default=False,
        help="replace the run(s) in a non-empty --out",
    )


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=False, help="debug logging")
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=False, help="warnings and errors only"
    )


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in _CONTROL_KEYS}


def resolve_config(
    args: argparse.Namespace,
    *,
    allow: tuple[str, ...] = (),
    refuse: tuple[str, ...] = (),
    saved_config: Callable[[RunConfig], Path] | None = None,
) -> RunConfig:
    """Defaults < saved run (with ``--resume``) < ``--config`` file < flags.

    ``saved_config(cfg)`` names the file a resumed run left its config in (default:
    ``config.toml`` in the run's output directory); ``allow`` are extra keys (compare's).
    """
    flags = _flags(args)
    path = getattr(args, "config", None)
    file_values = load_config(path) if path else {}
    wrong = sorted(set(file_values) & set(refuse))
    if wrong:
        raise ConfigError(f"{path}: {', '.join(wrong)} not taken here (compare takes rules, seeds)")

    def merged(base: RunConfig | None) -> RunConfig:
        from_file = from_mapping(file_values, base=base, allow=allow, source=str(path))
        return from_mapping(flags, base=from_file, allow=allow, source="the options")

    # Resuming: the saved run is the base, so `--resume --epochs 20` alone suffices
    cfg = merged(None)
    saved_config = saved_config or (lambda c: Path(c.out or default_out(c)) / "config.toml")
    saved_file = saved_config(cfg)
    if args.resume and saved_file.is_file():
        cfg = merged(from_mapping(load_toml(saved_file), allow=allow, source=str(saved_file)))
    return cfg


# ---------------------------------------------------------------------------------------
# train


def run_train(args: argparse.Namespace) -> int:
    """``dflearn train``: one run."""
    from dflearn import training

    # rules/seeds are read only so that a compare config is refused with a pointer
    cfg = resolve_config(args, allow=COMPARE_KEYS)
    if cfg.extra:
        raise ConfigError(
            f"{', '.join(sorted(cfg.extra))} belong to `dflearn compare`: run that, or give "
            "`rule` and `seed` for one run"
        )
    cfg = validate(cfg)
    log.info("resolved config:\n%s", to_toml(cfg).rstrip())
    stop = training.StopFlag()
    with training.stop_on_signals(stop), _progress_logging() as progress:
        summary = training.train(
            cfg, resume=args.resume, overwrite=args.overwrite, stop=stop, progress=progress
        )
    log.info("done: %s", _summary_line(summary))
    return EXIT_OK


def _summary_line(summary: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.2f}%"

    angle = summary.get("mean_angle")
    return (
        f"{summary['rule']} seed {summary['seed']}: final test acc "
        f"{pct(summary['final_test_acc'])}, best {pct(summary['best_test_acc'])}, mean angle "
        + ("n/a" if angle is None else f"{angle:.1f}°")
    )


@contextmanager
def _progress_logging() -> Iterator[bool]:
    """Whether to show progress bars (a terminal only); log lines then go through tqdm so
    they do not tear the bar."""
    progress = sys.stderr.isatty()
    if not progress:
        yield False
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger("dflearn")]):
        yield True


# ---------------------------------------------------------------------------------------
# compare


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dflearn compare``: the run options plus rules and seeds."""
    grid = parser.add_argument_group("comparison")
    grid.add_argument(
        "--rules",
        type=_arg_type(parse_str_list),
        metavar="R1,R2,...",
        help="rules to compare (default: bp,dfa,las)",
    )
    grid.add_argument(
        "--seeds",
        type=_arg_type(parse_int_list),
        metavar="S1,S2,...",
        help="seeds per rule (default: 0)",
    )
    add_run_options(parser, single=False)


def _compare_grid(cfg: RunConfig) -> tuple[list[str], list[int]]:
    rules = cfg.extra.get("rules", ["bp", "dfa", "las"])
    seeds = cfg.extra.get("seeds", [0])
    try:
        rules = parse_str_list(rules) if isinstance(rules, str) else [str(r) for r in rules]
        seeds = parse_int_list(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"rules/seeds: {exc}") from None
    if not rules or not seeds:
        raise ConfigError("--rules and --seeds need at least one value each")
    if len(set(rules)) < len(rules) or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--rules {rules} and --seeds {seeds} must not repeat a value")
    return rules, seeds


def _compare_out(cfg: RunConfig) -> Path:
    return Path(cfg.out or Path("runs") / f"compare-{cfg.dataset}-{cfg.model}")


def run_compare(args: argparse.Namespace) -> int:
    """``dflearn compare``: every (rule, seed) pair, then the comparison table and plots."""
    from dflearn import reporting

    out, runs = _plan_compare(args)
    diverged = _train_all(runs, args)

    # The table comes from the saved files, exactly as `dflearn report` builds it
    records = [reporting.load_run(cfg.out) for cfg in runs]
    print(reporting.write_report(out, records))
    log.info("report written to %s (summary.md, summary.json, plots)", out)
    return EXIT_DIVERGED if diverged else EXIT_OK


def _plan_compare(args: argparse.Namespace) -> tuple[Path, list[RunConfig]]:
    """The output directory and one config per (rule, seed); everything that can be
    refused (names, numbers, a model a rule cannot train, a busy directory) is, here."""
    from dflearn import training

    cfg = resolve_config(
        args,
        allow=COMPARE_KEYS,
        refuse=("rule", "seed"),
        saved_config=lambda c: _compare_out(c) / "compare.toml",
    )
    rules, seeds = _compare_grid(cfg)
    out = _compare_out(cfg)
    runs = [
        validate(cfg.replace(rule=rule, seed=seed, out=str(out / f"{rule}-seed{seed}")))
        for rule in rules
        for seed in seeds
    ]
    for rule in rules:
        training.build_rule(cfg.replace(rule=rule))
    _check_compare_out(out, args)

    # Saved for `compare --resume`; rule and seed of the base config mean nothing here
    shown = to_toml(cfg.replace(out=str(out)), exclude=("rule", "seed"))
    grid = f"rules = {json.dumps(rules)}\nseeds = {json.dumps(seeds)}\n"
    log.info("resolved config:\n%s", (grid + shown).rstrip())
    from dflearn import io

    io.atomic_write_text(out / "compare.toml", f"# dflearn compare config\n{grid}{shown}")
    return out, runs


def _train_all(runs: list[RunConfig], args: argparse.Namespace) -> int:
    """Train the runs one after the other; returns how many diverged (a diverged run is a
    result, not a reason to stop the others)."""
    from dflearn import training

    diverged = 0
    stop = training.StopFlag()
    with training.stop_on_signals(stop), _progress_logging() as progress:
        for i, cfg in enumerate(runs, 1):
            log.info("run %d/%d: %s seed %d -> %s", i, len(runs), cfg.rule, cfg.seed, cfg.out)
            try:
                training.train(
                    cfg, resume=args.resume, overwrite=args.overwrite, stop=stop, progress=progress
                )
            except training.RunDiverged as exc:
                log.error("%s seed %d: %s", cfg.rule, cfg.seed, exc)
                diverged += 1
    return diverged


def _check_compare_out(out: Path, args: argparse.Namespace) -> None:
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; give one")
    busy = out.is_dir() and any(out.iterdir())
    if busy and not (args.resume or args.overwrite):
        raise ConfigError(
            f"output directory {out} is not empty; use --overwrite to replace the runs there "
            "or --resume to continue them (finished runs are reused)"
        )


# ---------------------------------------------------------------------------------------
# report and list


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dflearn report``."""
    parser.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="a run directory, or a directory holding runs (searched deeply)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help=(
            "where to write summary.md, summary.json and plots (default: DIR when a single "
            "directory of runs is given)"
        ),
    )


def run_report(args: argparse.Namespace) -> int:
    """``dflearn report``: rebuild the table and plots from saved runs."""
    from dflearn import reporting

    runs = reporting.find_runs(args.dirs)
    out = _report_out(args, reporting)
    table = reporting.format_table(reporting.summarize(runs))
    if out is not None:
        table = reporting.write_report(out, runs)
        log.info("report written to %s", out)
    print(table)
    return EXIT_OK


def _report_out(args: argparse.Namespace, reporting: Any) -> Path | None:
    given = getattr(args, "out", None)
    out = Path(given) if given else None
    if out is None and len(args.dirs) == 1:
        out = Path(args.dirs[0])
    # A run's own summary.json must never be replaced by a report's
    if out is not None and reporting.is_run_dir(out):
        if given:
            raise ConfigError(f"--out {out} is a run directory; choose another one")
        log.info("%s is a single run: table only (give --out to write files)", out)
        return None
    if out is None:
        raise ConfigError("several directories given: say where to write with --out")
    return out


def run_list(args: argparse.Namespace) -> int:
    """``dflearn list``: the registered rules, models and datasets, and the packaged configs."""
    import dflearn
    from dflearn import datasets, models

    print("rules:    " + ", ".join(dflearn.list_rules()))
    print("models:   " + ", ".join(models.list_models()))
    print("datasets: " + ", ".join(datasets.list_datasets()))
    print("configs:  " + ", ".join(list_configs()))
    return EXIT_OK


register_command("train", "train one network with one learning rule", add_run_options, run_train)
register_command(
    "compare",
    "train several rules over several seeds and compare them",
    add_compare_arguments,
    run_compare,
)
register_command(
    "report",
    "rebuild the comparison table and plots from saved runs",
    add_report_arguments,
    run_report,
)
register_command(
    "list", "list the available rules, models, datasets and configs", lambda parser: None, run_list
)
register_command(
    "bench",
    "time training steps of every rule against bp (ratios measured in one run)",
    bench.add_arguments,
    bench.run,
)


# ---------------------------------------------------------------------------------------
# main


def build_parser() -> argparse.ArgumentParser:
    """The ``dflearn`` parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="dflearn",
        description="Train networks with direct feedback learning rules (BP, DFA, LAS, LTAS).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        # SUPPRESS: an option not given stays out of the namespace, so a --config file
        # (or the saved run, on --resume) can supply it
        child = sub.add_parser(
            name, help=command.help, description=command.help, argument_default=argparse.SUPPRESS
        )
        command.add_arguments(child)
        _add_verbosity(child)
    return parser


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


@contextmanager
def _logging(args: argparse.Namespace) -> Iterator[None]:
    """Log dflearn's messages to stderr for the duration of one command."""
    logger = logging.getLogger("dflearn")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dflearn`` command line with ``argv`` (default: ``sys.argv[1:]``); returns
    the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already reported
        return int(exc.code or 0)
    with _logging(args):
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    """Run the chosen command, turning the expected failures into a message + exit code."""
    from dflearn.reporting import ReportError  # matplotlib only; cheap next to torch

    try:
        return COMMANDS[args.command].run(args)
    except (ConfigError, ReportError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - mapped below, re-raised when unknown
        return _known_failure(exc)


def _known_failure(exc: Exception) -> int:
    from dflearn.datasets import DatasetNotFoundError
    from dflearn.training import RunStopped

    if isinstance(exc, RunStopped):
        log.error("%s", exc)
        return exc.exit_code
    if isinstance(exc, DatasetNotFoundError):
        log.error("%s", exc)
        return EXIT_FAILURE
    raise exc


if __name__ == "__main__":
    sys.exit(main())
