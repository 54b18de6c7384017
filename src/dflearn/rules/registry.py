"""The rule registry: list, get and create learning rules by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from ..registry import Registry

RULES: Registry = Registry("rule")  # name -> Rule subclass


def register_rule(name: str) -> Callable:
    """Class decorator that files a rule under ``name``."""
    return RULES.register(name)


def list_rules() -> list[str]:
    """Names of the registered learning rules."""
    return RULES.names()


def create_rule(name: str, model: nn.Module, num_classes: int | None = None, **options):
    """Build the rule ``name`` around ``model``.

    ``num_classes`` is checked against the model's output (and inferred when
    omitted). Options are keywords of the rule's class, e.g. ``seed``,
    ``schedule`` (las, ltas), ``feedback`` (dfa, las, ltas), ``head_init``.
    An option the rule does not take is refused with the ones it does.
    """
    accepted = rule_options(name)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"rule {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(sorted(accepted))}"
        )
    return RULES.get(name)(model, num_classes, **options)


def rule_options(name: str) -> set[str]:
    """Options the rule ``name`` accepts: keyword-only parameters of its
    ``__init__`` chain."""
    names: set[str] = set()
    for klass in RULES.get(name).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                names.add(p.name)
    return names
