"""Each guest page's last conversion in a trace: its direction and its time.

Kept as coalesced runs in a :class:`~privmem.attrs.MemoryAttributes` store (as
``convert/held.py`` keeps held memory), never as a per-page array: a trace of a 1 TiB guest
costs a run per range its conversions left distinct, not 268 million entries.  Each run's
attribute word is ``1 | to_private << 1 | stamp << 2``, where ``stamp`` is the conversion's
time in nanoseconds plus one, or 0 for an op without a time; pages never converted hold no run.

Guest RAM starts private (see :mod:`privmem.ops`), so a page never converted is private.
"""

from __future__ import annotations

from typing import NamedTuple

from ..attrs import MemoryAttributes
from ..units import ADDRESS_LIMIT, PAGE_SHIFT

_CONVERTED, _PRIVATE, _STAMP_SHIFT = 1, 2, 2
_MAX_STAMP = (ADDRESS_LIMIT >> _STAMP_SHIFT) - 1


class Piece(NamedTuple):
    """``pages`` pages of a conversion's range that shared one previous state:
    ``converted`` whether the trace converted them before, ``was_private`` their state before
    this conversion, ``t`` the time of their last conversion (None: none, or not timed)."""

    pages: int
    converted: bool
    was_private: bool
    t: float | None


class ConversionHistory:
    """``convert(gpa, size, to_private, t)`` records a conversion and returns the pieces of
    its range with what they were before.  Cost: O(log runs + pieces) per conversion; memory:
    one run per distinct (range, last conversion) left in the trace."""

    def __init__(self) -> None:
        self._store = MemoryAttributes(supported=ADDRESS_LIMIT - 1)

    def convert(self, gpa: int, size: int, to_private: bool, t: float | None = None) -> list[Piece]:
        first, end = gpa >> PAGE_SHIFT, (gpa + size) >> PAGE_SHIFT
        pieces: list[Piece] = []
        position = first
        for lo, hi, word in self._store.page_runs(first, end):
            if lo > position:
                pieces.append(Piece(lo - position, False, True, None))
            stamp = word >> _STAMP_SHIFT
            pieces.append(Piece(hi - lo, True, bool(word & _PRIVATE), (stamp - 1) / 1e9 if stamp else None))
            position = hi
        if position < end:
            pieces.append(Piece(end - position, False, True, None))
        stamp = 0 if t is None else min(_MAX_STAMP, round(t * 1e9) + 1)
        self._store.assign_pages(first, end, _CONVERTED | (_PRIVATE if to_private else 0) | stamp << _STAMP_SHIFT)
        return pieces

    def converted_pages(self) -> int:
        """Distinct pages the trace has converted so far."""
        return sum(hi - lo for lo, hi, _ in self._store.page_runs(0, ADDRESS_LIMIT >> PAGE_SHIFT))

    def __len__(self) -> int:
        """Runs held (what the history costs)."""
        return len(self._store)


def is_noop(pieces: list[Piece], to_private: bool) -> bool:
    """True when every page of a conversion's range was already in the state it asks for."""
    return all(piece.was_private == to_private for piece in pieces)


__all__ = ["ConversionHistory", "Piece", "is_noop"]
