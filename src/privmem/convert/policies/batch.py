"""batch: hold everything, and discard all of it every ``n`` conversions."""

from __future__ import annotations

from ..catalogue import policy
from ..protocol import HoldEverything
from ..spec import INT, Param


@policy("batch", "hold converted-away memory; discard all of it every n conversions (discard in batches)")
class BatchPolicy(HoldEverything):
    """Discard in batches: everything left behind is held, so a page that flips back within a
    batch costs nothing, and every ``n``-th conversion that changes pages discards all held
    memory in coalesced runs.  No ages to keep and nothing timed, so no drainer: held memory
    is bounded by what ``n`` conversions can leave behind, not by bytes (no ``budget_bytes``)."""

    params = (Param("n", INT, 64, "conversions between two batch discards"),)
    queues = True           # all held memory goes at the next batch
    model_params = {"n": 4}

    def __init__(self, **values):
        super().__init__(**values)
        self._converted = 0
        self._due = False

    def converted(self, conversion, now):
        self._converted += 1
        if self._converted == self.n:
            self._converted, self._due = 0, True

    def drain(self, held, now, force=False):
        if not (force or self._due):
            return []
        self._due = False
        return held.take_all()
