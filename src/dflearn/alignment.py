"""Angles between teaching signals (or updates) and the BP gradients."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def angle(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Angle in degrees between ``a`` and ``b`` along ``dim``.

    Uses ``2 atan2(|u - v|, |u + v|)`` on the unit vectors u, v rather than
    ``acos(cos)``: acos loses half the digits near 0 and 180 degrees, so equal
    vectors would read as about 0.1 degree in float32 instead of 0. A zero
    vector has no direction: its angle is NaN.
    """
    norm_a = a.norm(dim=dim, keepdim=True)
    norm_b = b.norm(dim=dim, keepdim=True)
    u, v = a / norm_a, b / norm_b
    rad = 2 * torch.atan2((u - v).norm(dim=dim), (u + v).norm(dim=dim))
    return torch.rad2deg(rad)


def mean_angle(signal: Tensor, grad: Tensor) -> float:
    """Per-sample angle between two ``(N, ...)`` tensors, averaged over N.

    Samples whose true gradient or signal is zero (no direction) are left
    out; if every sample is such, the result is NaN.
    """
    per_sample = angle(signal.flatten(1).double(), grad.flatten(1).double())
    finite = per_sample[~per_sample.isnan()]
    return finite.mean().item() if finite.numel() else math.nan


def flat_angle(a: list[Tensor], b: list[Tensor]) -> float:
    """Angle between two lists of tensors, each read as one long vector."""
    flat_a = torch.cat([t.detach().double().flatten() for t in a])
    flat_b = torch.cat([t.detach().double().flatten() for t in b])
    return angle(flat_a, flat_b, dim=0).item()
