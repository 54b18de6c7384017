"""dflearn: direct feedback learning rules (BP, DFA, LAS, LTAS) for PyTorch."""

from . import models
from .alignment import angle
from .heads import ConvHead, Head, LinearHead
from .registry import UnknownNameError
from .rules import Rule, create_rule, list_rules
from .taps import Tap, insert_taps, named_taps

__version__ = "0.1.0"

__all__ = [
    "ConvHead",
    "Head",
    "LinearHead",
    "Rule",
    "Tap",
    "UnknownNameError",
    "angle",
    "create_rule",
    "insert_taps",
    "list_rules",
    "models",
    "named_taps",
]
