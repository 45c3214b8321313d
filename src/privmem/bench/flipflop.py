"""`privmem bench flipflop`: one page converted back and forth, under every policy.

OVMF's DMA bounce pattern reduced to its core: the same page flips private->shared->
private N times and is touched on each side (so each discard really frees a page and
each flip back really re-allocates one).  Runs on real backings: a memfd for shared
memory and a guest_memfd-rules stand-in for private memory (the engine and the syscalls
are the same ones the KVM machine uses).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..attrs import MemoryAttributes
from ..backing import PrivateBacking, SharedBacking
from ..convert import POLICIES, ConversionEngine, ConversionTracker, make_policy
from ..units import MiB, PAGE_SIZE

MEMORY = 64 * MiB
PAGE_GPA = 8 * MiB
MAX_FLIPS = 1_000_000       # round trips: about 30 s under eager


@dataclass
class FlipFlopResult:
    policy: str
    flips: int
    wall_s: float
    us_per_conversion: float
    discards: int
    discarded_bytes: int
    reclaimed_bytes: int
    peak_double_allocated_bytes: int
    budget_bytes: int | None


def run_policy(policy_name: str, flips: int, memory: int = MEMORY) -> FlipFlopResult:
    policy = make_policy(policy_name, memory)
    with SharedBacking.create(memory) as shared, PrivateBacking.standin(memory) as private:
        engine = ConversionEngine(ConversionTracker(MemoryAttributes()), policy, shared, private)
        engine.set_initial(0, memory, private=True)
        touch_private, touch_shared = b"\xa5" * 8, b"\x5a" * 8
        start = time.perf_counter()
        for _ in range(flips):
            engine.convert(PAGE_GPA, PAGE_SIZE, False)
            shared.write(PAGE_GPA, touch_shared)
            engine.convert(PAGE_GPA, PAGE_SIZE, True)
            private.write(PAGE_GPA, touch_private)
        wall = time.perf_counter() - start
        stats = engine.stats
        return FlipFlopResult(policy_name, flips, wall, wall / (2 * flips) * 1e6, stats.discards,
                              stats.discarded_bytes, stats.reclaimed_bytes,
                              stats.peak_double_allocated_bytes, policy.budget_bytes)


def run(flips: int = 10_000, policies=tuple(POLICIES)) -> list[FlipFlopResult]:
    return [run_policy(name, flips) for name in policies]


def as_json(results):
    return [asdict(r) for r in results]


def table(results):
    from ..units import format_size
    from .tables import compact

    out = compact(f"privmem bench flipflop: one page flipped {results[0].flips:,} times each way",
                  ("policy", "discard\nsyscalls", "discarded", "reclaimed\nfree", "peak double\nalloc", "budget",
                   "µs/\nconversion"))
    for r in results:
        out.add_row(r.policy, f"{r.discards:,}", format_size(r.discarded_bytes), format_size(r.reclaimed_bytes),
                    format_size(r.peak_double_allocated_bytes),
                    format_size(r.budget_bytes) if r.budget_bytes else "-", f"{r.us_per_conversion:.1f}")
    return out


def headline(results) -> list[str]:
    by = {r.policy: r for r in results}
    lines = []
    if "eager" in by and "lazy" in by:
        eager, lazy = by["eager"], by["lazy"]
        share = lazy.discards / eager.discards if eager.discards else 0.0
        lines.append(f"lazy issued {lazy.discards:,} discard syscalls = {share:.2%} of eager's {eager.discards:,}; "
                     f"peak double allocation {lazy.peak_double_allocated_bytes:,} B within a budget of "
                     f"{lazy.budget_bytes:,} B")
    return lines
