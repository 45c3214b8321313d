"""lazy: hold everything, drain the oldest in coalesced batches past a budget or an age; and
what it shares with adaptive: a byte budget drained oldest first, in batches."""

from __future__ import annotations

from ...units import MiB, PAGE_SIZE
from ..catalogue import policy
from ..protocol import BUDGET_BOUNDED, HoldEverything, Policy
from ..spec import SIZE, TIME, Param, ShareOfMemory

DEFAULT_MAX_AGE = 0.050
BUDGET = Param("budget", SIZE, ShareOfMemory(1, at_least=PAGE_SIZE),
               "held bytes above which the oldest holds are discarded, at every conversion")
BATCH = Param("batch", SIZE, 0, "bytes a drain takes: at most for an age drain, at least for a budget drain "
              "(0: a quarter of the budget, at least 2M)", positive=False)


class Budgeted(Policy):
    """A policy whose books stay within ``budget`` bytes at every conversion boundary: held
    memory queues, aged, and the oldest goes in batches of at least ``batch`` bytes once the
    books pass the budget (so a guest hovering at it does not pay a discard per conversion)."""

    queues = ages = True
    model_property = BUDGET_BOUNDED

    def __init__(self, **values):
        super().__init__(**values)
        self.batch = self.batch or max(self.budget // 4, 2 * MiB)

    @property
    def budget_bytes(self) -> int:
        return self.budget

    def drain_over_budget(self, held) -> list[tuple[int, int, int]]:
        """The oldest holds until the books are back under budget (nothing within it)."""
        if held.total > self.budget:
            return held.take_oldest(max(self.batch, held.total - self.budget))
        return []


@policy("lazy", "queue converted-away memory; drain coalesced batches past a byte budget or an age")
class LazyPolicy(Budgeted, HoldEverything):
    """Hold everything; a page converted back before its discard costs nothing.  Drain the
    oldest held memory in coalesced batches once held bytes exceed ``budget`` or the
    oldest entry is older than ``max_age`` seconds.  One batch per call, so the vCPU whose
    conversion triggers a drain waits for one batch only: an age drain takes up to
    ``batch`` bytes of holds older than ``max_age``; a budget drain takes the oldest holds
    until the books are back under budget (at least ``batch`` bytes), so the budget holds at
    every conversion boundary.  Between conversions a ``Drainer`` thread ticks the engine
    every half ``max_age``, so aged memory goes even when the guest stops converting."""

    params = (BUDGET, Param("max_age", TIME, DEFAULT_MAX_AGE, "holds older than this are discarded"), BATCH)

    @property
    def tick_interval(self) -> float:
        return self.max_age / 2

    def drain(self, held, now, force=False):
        if force:
            return held.take_all()
        if held.total > self.budget:            # drain_over_budget, inlined: this runs every conversion
            return held.take_oldest(max(self.batch, held.total - self.budget))
        oldest = held.oldest_time(before=now - self.max_age)
        if oldest is not None and now - oldest > self.max_age:
            return held.take_oldest(self.batch, older_than=now - self.max_age)
        return []
