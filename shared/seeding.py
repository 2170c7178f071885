"""Seeded random initialisation that leaves the caller's random state alone."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def seeded(seed: int, build: Callable[[], T]) -> T:
    """Call ``build()`` with the torch RNG seeded to ``seed``; the global RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
