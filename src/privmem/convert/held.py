"""Backing memory left behind by conversions and not yet discarded."""

from __future__ import annotations

import itertools
from collections import deque

from ..attrs.ranges import CHUNK_SHIFT, MemoryAttributes
from ..units import ADDRESS_LIMIT, PAGE_SHIFT

HELD_SHARED = 1   # the page is private; its shared backing page is still held
HELD_PRIVATE = 2  # the page is shared; its private backing page is still held
SIDES = {HELD_SHARED: "shared", HELD_PRIVATE: "private"}
_SIDE_MASK, _TAG_SHIFT = 3, 2


class HeldMemory:
    """Which backing pages a conversion left behind, and since when.

    When a page converts, the backing it leaves keeps its memory until something
    discards it: that is the double allocation the UPM thread wants bounded.  ``_store`` maps
    each held page to ``side | tag << 2``: the side whose memory is held (a page holds at
    most one, the side it is not using) and, when ages are tracked, the tag of the hold
    that put it there.  ``_fifo`` lists ``(time, gpa, size, value)`` per hold in order; an
    entry speaks only for pages still carrying its value, so a page that flipped back and
    was held again later is aged from its latest hold, not its first.  Arguments are byte
    ranges already validated by the tracker.

    The books are the attribute store's representation (``MemoryAttributes`` over words), so
    they stay bounded whatever the guest does: per chunk, coalesced runs or one bit plane per
    bit the held values use there.  Without ages (a policy whose ``ages`` is False, such as
    ``never``, ``eager``, ``keep-shared``) the values are the two sides, so a chunk costs at
    most about two bitmaps of it; with ages every hold's tag adds bits, up to
    ``2 + tags.bit_length()`` planes, and each hold also costs its fifo entry and ``_live``
    count (the aging policies' budget bounds how many are held at once).

    Complexity: ``hold``, ``release`` and ``reclaim`` O(log n + k) for k held runs in the range
    (plus the store's O(range / 8) in dense chunks); ``take_oldest`` that per entry taken;
    ``oldest_time`` O(1) amortised (stale entries are dropped once); ``runs`` and ``check``
    O(n).

    Invariants (``check()``): the store's own; ``held_bytes[side]`` equals the bytes the
    store marks with that side; ``_live[value]`` equals the bytes the store marks with each
    tagged value (so a fifo entry is live exactly when its value is a key); fifo times never
    decrease; without age tracking the fifo
    stays empty.  Not thread-safe: the engine holds its lock around every call.
    """

    def __init__(self, track_age: bool = True, *, chunk_shift: int = CHUNK_SHIFT):
        self.track_age = track_age
        self._store = MemoryAttributes(supported=ADDRESS_LIMIT - 1, chunk_shift=chunk_shift)
        self._fifo: deque[tuple[float, int, int, int]] = deque()
        self._tags = itertools.count(1)
        self._live: dict[int, int] = {}   # tagged value -> bytes still held under it
        self.held_bytes = {HELD_SHARED: 0, HELD_PRIVATE: 0}

    @property
    def total(self) -> int:
        return self.held_bytes[HELD_SHARED] + self.held_bytes[HELD_PRIVATE]

    def hold(self, gpa: int, size: int, side: int, now: float) -> int:
        """The pages of ``[gpa, gpa + size)`` left ``side``; its memory is now held.  Memory
        held there for the other side is in use again (the pages just came back to it):
        returns those reclaimed bytes, so a flip costs one store update, not two."""
        first, end = gpa >> PAGE_SHIFT, (gpa + size) >> PAGE_SHIFT
        held = self.held_bytes
        reclaimed = 0
        for lo, hi, value in list(self._store.page_runs(first, end)):
            replaced = (hi - lo) << PAGE_SHIFT
            held[value & _SIDE_MASK] -= replaced
            self._forget(value, replaced)
            if value & _SIDE_MASK != side:
                reclaimed += replaced
        value = side | (next(self._tags) << _TAG_SHIFT if self.track_age else 0)
        self._store.assign_pages(first, end, value)
        held[side] += size
        if self.track_age:
            self._live[value] = size
            self._fifo.append((now, gpa, size, value))
        return reclaimed

    def _forget(self, value: int, size: int) -> None:
        if value >> _TAG_SHIFT:
            left = self._live[value] - size
            if left:
                self._live[value] = left
            else:
                del self._live[value]

    def release(self, gpa: int, size: int, side: int | None = None,
                value: int | None = None) -> list[tuple[int, int, int]]:
        """Stop holding memory in the range (of one side, of one hold's ``value``, or all);
        returns the ``(gpa, size, side)`` runs that were held, which the caller discards."""
        first, end = gpa >> PAGE_SHIFT, (gpa + size) >> PAGE_SHIFT
        out = []
        for lo, hi, held in list(self._store.page_runs(first, end)):
            if (side is not None and held & _SIDE_MASK != side) or (value is not None and held != value):
                continue
            self._store.assign_pages(lo, hi, 0)
            self.held_bytes[held & _SIDE_MASK] -= (hi - lo) << PAGE_SHIFT
            self._forget(held, (hi - lo) << PAGE_SHIFT)
            out.append((lo << PAGE_SHIFT, (hi - lo) << PAGE_SHIFT, held & _SIDE_MASK))
        return out

    def reclaim(self, gpa: int, size: int, side: int) -> int:
        """The pages went back to ``side``: memory held there is in use again, at no cost.
        Returns the bytes reclaimed."""
        return sum(s for _, s, _ in self.release(gpa, size, side))

    def oldest_time(self, before: float | None = None) -> float | None:
        """Time of the oldest hold still in force, or None.  With ``before``, answers None at
        once when even the first fifo entry (live or stale) is not older than ``before``:
        stale entries are only ever older, so the scan is needed only past that point."""
        fifo = self._fifo
        if not fifo or (before is not None and fifo[0][0] >= before):
            return None
        self._skip_stale()
        return fifo[0][0] if fifo else None

    def take_all(self) -> list[tuple[int, int, int]]:
        """Release everything held, coalesced per side."""
        last = ADDRESS_LIMIT - (1 << PAGE_SHIFT)
        runs = self.release(0, last) + self.release(last, 1 << PAGE_SHIFT)
        self._fifo.clear()
        return _merge(runs)

    def take_oldest(self, max_bytes: int, older_than: float | None = None) -> list[tuple[int, int, int]]:
        """Release held runs in the order they were held, up to about ``max_bytes`` (at least
        one entry), optionally only holds made before ``older_than``.  Adjacent runs of one
        side are merged, so neighbouring pages cost one discard."""
        if not self.track_age:
            return self.take_all()
        taken: list[tuple[int, int, int]] = []
        total = 0
        while self._fifo and (not taken or total < max_bytes):
            when, gpa, size, value = self._fifo[0]
            if older_than is not None and when >= older_than:
                break
            self._fifo.popleft()
            if value not in self._live:
                continue
            runs = self.release(gpa, size, value=value)
            taken += runs
            total += sum(s for _, s, _ in runs)
        return _merge(taken)

    def _skip_stale(self) -> None:
        fifo, live = self._fifo, self._live
        while fifo and fifo[0][3] not in live:
            fifo.popleft()

    def runs(self) -> list[tuple[int, int, int]]:
        """Held ``(gpa, size, side)`` runs, ascending (holds of one side merged)."""
        return _merge([(g, s, v & _SIDE_MASK) for g, s, v in self._store.ranges()])

    def check(self) -> None:
        self._store.check()
        counts = {HELD_SHARED: 0, HELD_PRIVATE: 0}
        for _, size, value in self._store.ranges():
            if value & _SIDE_MASK not in counts:
                raise AssertionError(f"HeldMemory: value {value:#x} names no side")
            counts[value & _SIDE_MASK] += size
        if counts != self.held_bytes:
            raise AssertionError(f"HeldMemory: counted {counts}, bookkept {self.held_bytes}")
        live: dict[int, int] = {}
        for _, size, value in self._store.ranges():
            if value >> _TAG_SHIFT:
                live[value] = live.get(value, 0) + size
        if live != self._live:
            raise AssertionError("HeldMemory: live bytes per hold disagree with the store")
        times = [entry[0] for entry in self._fifo]
        if times != sorted(times) or (self._fifo and not self.track_age):
            raise AssertionError("HeldMemory: fifo out of order, or kept without age tracking")


def _merge(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    merged: list[tuple[int, int, int]] = []
    for gpa, size, side in sorted(runs):
        if merged and merged[-1][2] == side and merged[-1][0] + merged[-1][1] == gpa:
            merged[-1] = (merged[-1][0], merged[-1][1] + size, side)
        else:
            merged.append((gpa, size, side))
    return merged
