"""A vCPU's op ring: two segments the player runs through in turn, refilled from the spool.

Each segment holds ``RING_HALF_RECORDS - 1`` op records and ends with a refill record that
points at the other segment.  When the player reaches it, it exits to the VMM (PORT_REFILL)
and moves on to the other segment, which is already full; the VMM meanwhile refills the one
just finished.  The ops left run out in an END record.  So the ring's memory is fixed, and
the spool is read in segment-sized pieces with no Python object per op.

The guest is untrusted and can ring PORT_REFILL whenever it likes: the VMM refills the
segments strictly in turn from the spool, so a misbehaving guest only confuses its own run.
"""

from __future__ import annotations

from .firmware import RECORD_BYTES, RING_HALF_RECORDS
from .program import END_RECORD, K_REFILL, RECORD, Spool


class OpRing:
    """``view``: the ring's memory (``2 * RING_HALF_RECORDS`` records); ``va``: its address
    in the player.  ``prime(spool)`` fills both segments; ``refill()`` the one due next."""

    def __init__(self, view: memoryview, va: int):
        self.view, self.va = view, va
        self._half_bytes = RING_HALF_RECORDS * RECORD_BYTES
        self._spool: Spool | None = None
        self._next = 0
        self.exhausted = False
        self.refills = 0

    def prime(self, spool: Spool) -> None:
        spool.rewind()
        self._spool, self._next, self.exhausted, self.refills = spool, 0, False, 0
        self._fill(0)
        self._fill(1)

    def refill(self) -> None:
        """The player finished segment ``_next``: fill it again."""
        self.refills += 1
        self._fill(self._next)

    def _fill(self, half: int) -> None:
        start = half * self._half_bytes
        ops_bytes = self._half_bytes - RECORD_BYTES
        count = 0 if self.exhausted else self._spool.read_into(self.view[start:start + ops_bytes])
        end = start + count * RECORD_BYTES
        if count * RECORD_BYTES < ops_bytes:
            self.view[end:end + RECORD_BYTES] = END_RECORD
            self.exhausted = True
        else:
            other = self.va + (1 - half) * self._half_bytes
            self.view[end:end + RECORD_BYTES] = RECORD.pack(K_REFILL, 0, 0, 0, other, 0, 0)
        self._next = 1 - half

    def record_at(self, va: int) -> int | None:
        """Offset in ``view`` of the record at player address ``va``, or None if ``va`` is
        not a record of this ring (the guest hands record addresses to the device model)."""
        offset = va - self.va
        if 0 <= offset < len(self.view) and offset % RECORD_BYTES == 0:
            return offset
        return None


__all__ = ["OpRing"]
