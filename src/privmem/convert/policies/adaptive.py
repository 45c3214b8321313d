"""adaptive: hold only the pages seen flipping back, within a budget; discard the rest."""

from __future__ import annotations

from ...attrs.ranges import MemoryAttributes
from ..catalogue import policy
from ..protocol import DISCARD, HOLD
from .lazy import BATCH, BUDGET, Budgeted


@policy("adaptive", "hold only pages seen flipping back (bounded by the budget); discard the rest at once")
class AdaptivePolicy(Budgeted):
    """Learns which pages flip-flop.  A page is 'hot' once it comes back to a side it left
    earlier, whether its memory there was still held or already discarded.  Hot pages stay
    held (bounded by the budget, no age limit, so no drainer ticks it); cold pages are
    discarded as soon as they are left, so only the flip-floppers are double-allocated."""

    params = (BUDGET, BATCH)

    def __init__(self, **values):
        super().__init__(**values)
        self._hot = MemoryAttributes(supported=1)
        self._discarded = MemoryAttributes(supported=1)

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
        return held.take_all() if force else self.drain_over_budget(held)
