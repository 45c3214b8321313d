"""Interleaved rounds: the order runs go in, and what a set of rounds of one configuration says.

Benchmarks that compare configurations run them round by round, each round in a rotated
order, so machine noise (other work on the host, cache state) spreads over all of them; a
configuration's time is its best round, and the relative spread of its rounds is the noise
its ratios are read against.
"""

from __future__ import annotations


def rotated(items, round_index: int) -> tuple:
    """``items`` rotated by ``round_index``, so no configuration always runs first (cold
    caches) or last."""
    items = tuple(items)
    shift = round_index % len(items) if items else 0
    return items[shift:] + items[:shift]


def interleaved(configs, repeat: int, measure, describe=str, progress=None) -> dict:
    """``measure(config)`` for every configuration, ``repeat`` rounds, each round in a rotated
    order; returns each configuration's results in round order.  ``progress(text)`` before
    each run, ``text`` saying which (``describe(config)``) and which round."""
    runs = {config: [] for config in configs}
    for round_index in range(repeat):
        for config in rotated(runs, round_index):
            if progress:
                progress(f"{describe(config)} (round {round_index + 1}/{repeat})")
            runs[config].append(measure(config))
    return runs


def best(runs):
    """The fastest of ``runs`` (objects with ``wall_s``), or None."""
    return min(runs, key=lambda run: run.wall_s) if runs else None


def spread(runs) -> float:
    """Relative spread (max - min) / min of the rounds' times; 0 for a single round."""
    walls = [run.wall_s for run in runs]
    return (max(walls) - min(walls)) / min(walls) if len(walls) > 1 and min(walls) else 0.0
