"""The run store as it was before Store v2 (commit 41b84a0), kept for side-by-side benchmarks.

Not part of the library: ``privmem bench store`` measures today's ``MemoryAttributes``
against this copy, so "set within 2x of the old store" is a figure printed, not a memory.
Sorted, coalesced runs of guest pages in two lists; see ``attrs/ranges.py`` for the store.
"""

from __future__ import annotations

import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterator

from ..attrs.validate import ATTR_PRIVATE, check_range, check_set, check_window
from ..errors import InvalidArgument
from ..units import ADDRESS_LIMIT, PAGE_SHIFT

_TOTAL_PAGES = ADDRESS_LIMIT >> PAGE_SHIFT


class RunStoreV1:
    """The v1 store: per-VM map from guest page ranges to attribute words (shared = 0, PRIVATE = 8).

    The software twin of KVM_SET_MEMORY_ATTRIBUTES' store, but kept as runs instead of
    one XArray entry per 4 KiB page, so a well-behaved guest (mostly private, a few
    shared holes) costs a few hundred runs, not millions of entries.

    Representation: ``_bounds = [start0, end0, start1, end1, ...]`` (gfns, half-open
    runs) and ``_attrs[k]`` for run ``k``.  A lookup is one ``bisect_right`` on
    ``_bounds``: an odd index means the gfn lies inside run ``index // 2``.

    Invariants (``check()`` verifies each):
      1. ``len(_bounds) == 2 * len(_attrs)``.
      2. Every run is non-empty: ``start < end``; every bound is an int in [0, 2**52].
      3. Runs are sorted and disjoint: ``end_k <= start_k+1``.
      4. Attribute 0 (shared) is never stored: every ``_attrs[k]`` is non-zero and
         within ``supported``.
      5. Coalesced: two runs that touch (``end_k == start_k+1``) have different
         attributes, so a uniform range is always exactly one run.

    Not thread-safe: the conversion tracker serialises writers.  Complexity: ``get``
    O(log n); ``has`` O(log n); ``set`` O(log n + k + n) where k runs are replaced and the
    O(n) term is a C-level memmove of the tail; ``ranges`` O(log n + k).
    """

    __slots__ = ("supported", "_bounds", "_attrs")

    def __init__(self, supported: int = ATTR_PRIVATE):
        if not isinstance(supported, int) or supported < 0 or supported >= ADDRESS_LIMIT:
            raise InvalidArgument("supported", supported, "must be a 64-bit attribute mask")
        self.supported = supported
        self._bounds: list[int] = []
        self._attrs: list[int] = []

    # -- queries ---------------------------------------------------------------------

    def get(self, address: int) -> int:
        """Attributes of the page holding ``address`` (any byte address)."""
        index = bisect_right(self._bounds, address >> PAGE_SHIFT)
        return self._attrs[index >> 1] if index & 1 else 0

    def has(self, address: int, size: int, attributes: int) -> bool:
        """True when every page of the range has exactly ``attributes``."""
        first, end = check_range(address, size)
        return self._uniform(first, end, attributes)

    def _uniform(self, first: int, end: int, attributes: int) -> bool:
        bounds = self._bounds
        index = bisect_right(bounds, first)
        if index & 1:
            return attributes != 0 and self._attrs[index >> 1] == attributes and bounds[index] >= end
        return attributes == 0 and (index == len(bounds) or bounds[index] >= end)

    def ranges(self, address: int = 0, size: int | None = None) -> Iterator[tuple[int, int, int]]:
        """Yield ``(address, size, attributes)`` for each stored run inside the window,
        ascending and clipped to it.  Runs are maximal (coalesced) by construction."""
        first, end = check_window(address, size)
        for lo, hi, value in self.page_runs(first, end):
            yield lo << PAGE_SHIFT, (hi - lo) << PAGE_SHIFT, value

    # -- page-level API: gfn arguments, trusted (validated where they entered) --------

    def page_runs(self, first: int, end: int) -> Iterator[tuple[int, int, int]]:
        """``(first gfn, end gfn, attributes)`` of each run inside ``[first, end)``, clipped."""
        bounds, attrs = self._bounds, self._attrs
        run = bisect_right(bounds, first) >> 1
        count = len(attrs)
        while run < count:
            start = bounds[2 * run]
            if start >= end:
                break
            stop = bounds[2 * run + 1]
            yield (start if start > first else first), (stop if stop < end else end), attrs[run]
            run += 1

    def assign_pages(self, first: int, end: int, attributes: int) -> bool:
        """Set ``[first, end)`` to ``attributes`` (already validated); False if nothing changed."""
        if self._uniform(first, end, attributes):
            return False
        self._assign(first, end, attributes)
        return True

    def pages(self, attributes: int) -> int:
        """Number of pages (of the whole 2**64 space) whose attributes equal ``attributes``."""
        bounds = self._bounds
        if attributes == 0:
            return _TOTAL_PAGES - sum(bounds[1::2]) + sum(bounds[0::2])
        return sum(bounds[2 * k + 1] - bounds[2 * k] for k, a in enumerate(self._attrs) if a == attributes)

    def __len__(self) -> int:
        return len(self._attrs)

    @property
    def nbytes(self) -> int:
        """Memory held: both lists plus every distinct int object they point to."""
        seen: set[int] = set()
        total = sys.getsizeof(self._bounds) + sys.getsizeof(self._attrs)
        for value in (*self._bounds, *self._attrs):
            if id(value) not in seen:
                seen.add(id(value))
                total += sys.getsizeof(value)
        return total

    # -- update ----------------------------------------------------------------------

    def set(self, address: int, size: int, attributes: int, flags: int = 0) -> None:
        """Give every page of ``[address, address + size)`` the attributes, all or nothing.

        Validates first (see ``validate.check_set``); returns at once, changing nothing,
        when the range already has exactly these attributes (the kernel's no-op path).
        """
        first, end = check_set(address, size, attributes, flags, self.supported)
        self.assign_pages(first, end, attributes)

    def _assign(self, first: int, end: int, attributes: int) -> None:
        bounds, attrs = self._bounds, self._attrs
        # Runs [lo_run, hi_run) overlap or touch [first, end).  Only the first and the last
        # can keep a remainder; the ones between vanish in one slice assignment.
        lo_run = bisect_left(bounds, first) >> 1
        hi_run = (bisect_right(bounds, end) + 1) >> 1
        pieces: list[tuple[int, int, int]] = []
        if lo_run < hi_run and bounds[2 * lo_run] < first:
            pieces.append((bounds[2 * lo_run], first, attrs[lo_run]))
        if attributes:
            pieces.append((first, end, attributes))
        if lo_run < hi_run and bounds[2 * hi_run - 1] > end:
            pieces.append((end, bounds[2 * hi_run - 1], attrs[hi_run - 1]))
        new_bounds: list[int] = []
        new_attrs: list[int] = []
        for start, stop, value in pieces:
            if new_attrs and new_attrs[-1] == value and new_bounds[-1] == start:
                new_bounds[-1] = stop
            else:
                new_bounds += (start, stop)
                new_attrs.append(value)
        bounds[2 * lo_run:2 * hi_run] = new_bounds
        attrs[lo_run:hi_run] = new_attrs

    def clear(self) -> None:
        """Make every page shared again."""
        self._bounds.clear()
        self._attrs.clear()

    # -- invariants ------------------------------------------------------------------

    def check(self) -> None:
        """Verify every invariant in the class docstring; raise AssertionError with a dump."""
        bounds, attrs = self._bounds, self._attrs

        def fail(why: str) -> None:
            raise AssertionError(f"RunStoreV1 invariant broken: {why}; runs={self.dump()}")

        if len(bounds) != 2 * len(attrs):
            fail(f"{len(bounds)} bounds for {len(attrs)} runs")
        for k, value in enumerate(attrs):
            start, stop = bounds[2 * k], bounds[2 * k + 1]
            if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= _TOTAL_PAGES):
                fail(f"run {k} [{start}, {stop}) is empty or out of range")
            if not value or value & ~self.supported:
                fail(f"run {k} stores attributes {value:#x}")
            if k:
                prev_stop = bounds[2 * k - 1]
                if prev_stop > start:
                    fail(f"run {k} overlaps or precedes run {k - 1}")
                if prev_stop == start and attrs[k - 1] == value:
                    fail(f"runs {k - 1} and {k} touch with equal attributes {value:#x}")

    def dump(self) -> list[tuple[int, int, int]]:
        """Runs as ``(first gfn, end gfn, attributes)``, for failure messages and debugging."""
        return [(self._bounds[2 * k], self._bounds[2 * k + 1], a) for k, a in enumerate(self._attrs)]

    def __repr__(self) -> str:
        return f"RunStoreV1(runs={len(self)}, private_pages={self.pages(ATTR_PRIVATE)})"
