"""Backpropagation: every tap whole, the exact gradient everywhere."""

from __future__ import annotations

from .base import Rule
from .registry import register_rule


@register_rule("bp")
class BP(Rule):
    """Plain autograd through the whole model; taps are optional."""

    name = "bp"
    needs_taps = False
