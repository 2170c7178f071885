"""Timing helpers of the benchmarks: medians of interleaved calls, measured in one run."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch

Runs = Dict[str, Callable[[], object]]


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def time_interleaved(fns: Runs, repeats: int) -> Dict[str, float]:
    """Median milliseconds of each of ``fns`` after one warm-up call; the calls alternate repeat by repeat,
    so a slow moment of the machine costs every contender alike."""
    for fn in fns.values():
        fn()
    seconds: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds[name].append(timed(fn))
    return {name: 1e3 * statistics.median(values) for name, values in seconds.items()}
