"""Learning rules, one module each, created by name."""

from . import bp, dfa, las, ltas, shallow  # noqa: F401  (each registers itself)
from .base import Rule, frozen_running_stats
from .registry import RULES, create_rule, list_rules, rule_options

__all__ = ["RULES", "Rule", "create_rule", "frozen_running_stats", "list_rules", "rule_options"]
