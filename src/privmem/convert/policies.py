"""Discard policies: what happens to the backing memory a conversion leaves behind.

A policy is pure logic.  For each conversion it says whether the side being left is
discarded now or held; ``drain`` picks held memory to discard later.  The engine runs
the syscalls and keeps the books.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attrs.ranges import MemoryAttributes
from ..errors import InvalidArgument
from ..units import MiB
from .held import HELD_SHARED, HeldMemory

DISCARD, HOLD = "discard", "hold"


class Policy:
    name = ""
    summary = ""
    drains = False  # does it discard held memory later (so held memory is "queued")?

    def holds(self, side: int) -> bool:
        """True when memory left on ``side`` is always held whole (the engine's fast path:
        ``left_behind`` would answer one HOLD piece for any range)."""
        return False

    def left_behind(self, side: int, gpa: int, size: int) -> list[tuple[int, int, str]]:
        """Split a range whose ``side`` was left into ``(gpa, size, DISCARD|HOLD)`` pieces."""
        raise NotImplementedError

    def drain(self, held: HeldMemory, now: float, force: bool = False) -> list[tuple[int, int, int]]:
        """Held runs ``(gpa, size, side)`` to discard now (already released from ``held``)."""
        return held.take_all() if force and self.drains else []

    def entered(self, gpa: int, size: int, reclaimed: int) -> None:
        """Pages converted into a side; ``reclaimed`` bytes of them found their memory still held."""


class NeverPolicy(Policy):
    name, summary = "never", "no discard at all: the time lower bound, as plain SNP had"

    def holds(self, side):
        return True

    def left_behind(self, side, gpa, size):
        return [(gpa, size, HOLD)]


class EagerPolicy(Policy):
    name, summary = "eager", "discard the side being left in the same step (today's QEMU; the seed's SNP+UPM)"

    def left_behind(self, side, gpa, size):
        return [(gpa, size, DISCARD)]


class KeepSharedPolicy(Policy):
    name = "keep-shared"
    summary = "never discard shared memory; still punch private memory on private->shared"

    def holds(self, side):
        return side == HELD_SHARED

    def left_behind(self, side, gpa, size):
        return [(gpa, size, HOLD if side == HELD_SHARED else DISCARD)]


@dataclass
class LazyPolicy(Policy):
    """Hold everything; a page converted back before its discard costs nothing.  Drain the
    oldest held memory in coalesced batches once held bytes exceed ``budget`` or the
    oldest entry is older than ``max_age`` seconds.  One batch per call, so the vCPU whose
    conversion triggers a drain waits for one batch only: an age drain takes up to
    ``batch`` bytes of holds older than ``max_age``; a budget drain takes the oldest holds
    until the books are back under budget (at least ``batch`` bytes), so the budget holds at
    every conversion boundary.  Between conversions a ``Drainer`` thread ticks the engine,
    so aged memory goes even when the guest stops converting."""

    budget: int
    max_age: float = 0.050
    batch: int = 0
    name = "lazy"
    summary = "queue converted-away memory; drain coalesced batches past a byte budget or an age"
    drains = True

    def __post_init__(self):
        if self.budget <= 0:
            raise InvalidArgument("budget", self.budget, "must be positive")
        if self.max_age <= 0:
            raise InvalidArgument("max_age", self.max_age, "must be positive", hex_value=False)
        self.batch = self.batch or max(self.budget // 4, 2 * MiB)

    def holds(self, side):
        return True

    def left_behind(self, side, gpa, size):
        return [(gpa, size, HOLD)]

    def drain(self, held, now, force=False):
        if force:
            return held.take_all()
        if held.total > self.budget:
            return held.take_oldest(max(self.batch, held.total - self.budget))
        oldest = held.oldest_time(before=now - self.max_age)
        if oldest is not None and now - oldest > self.max_age:
            return held.take_oldest(self.batch, older_than=now - self.max_age)
        return []


@dataclass
class AdaptivePolicy(LazyPolicy):
    """Learns which pages flip-flop.  A page is 'hot' once it comes back to a side it left
    earlier, whether its memory there was still held or already discarded.  Hot pages stay
    held (bounded by the budget, no age limit); cold pages are discarded as soon as they are
    left, so only the flip-floppers are double-allocated."""

    name = "adaptive"
    summary = "hold only pages seen flipping back (bounded by the budget); discard the rest at once"

    def __post_init__(self):
        super().__post_init__()
        self._hot = MemoryAttributes(supported=1)
        self._discarded = MemoryAttributes(supported=1)

    def holds(self, side):
        return False

    def entered(self, gpa, size, reclaimed):
        if reclaimed or next(self._discarded.ranges(gpa, size), None) is not None:
            self._hot.set(gpa, size, 1)

    def left_behind(self, side, gpa, size):
        pieces, cursor = [], gpa
        for hot_gpa, hot_size, _ in self._hot.ranges(gpa, size):
            if hot_gpa > cursor:
                pieces.append((cursor, hot_gpa - cursor, DISCARD))
            pieces.append((hot_gpa, hot_size, HOLD))
            cursor = hot_gpa + hot_size
        if cursor < gpa + size:
            pieces.append((cursor, gpa + size - cursor, DISCARD))
        for piece_gpa, piece_size, verdict in pieces:
            if verdict == DISCARD:
                self._discarded.set(piece_gpa, piece_size, 1)
        return pieces

    def drain(self, held, now, force=False):
        if force or held.total > self.budget:
            return super().drain(held, now, force)
        return []


POLICIES = {cls.name: cls for cls in (NeverPolicy, EagerPolicy, KeepSharedPolicy, LazyPolicy, AdaptivePolicy)}


def make_policy(name: str, memory: int, budget: int | None = None, max_age: float | None = None) -> Policy:
    """A policy by name; the lazy kinds default to a budget of 1% of guest memory and 50 ms."""
    cls = POLICIES.get(name)
    if cls is None:
        raise InvalidArgument("policy", name, f"unknown (choose from {', '.join(POLICIES)})", hex_value=False)
    if not cls.drains:
        return cls()
    kwargs = {"budget": budget if budget is not None else max(memory // 100, 4096)}
    if max_age is not None:
        kwargs["max_age"] = max_age
    return cls(**kwargs)
