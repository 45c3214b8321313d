"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(fn: Callable[[], None], repeat: int = 5) -> float:
    """Fastest of ``repeat`` runs of ``fn`` (each timed alone)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def once(fn: Callable[[], None]) -> float:
    """Seconds taken by a single call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
