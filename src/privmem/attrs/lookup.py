"""The lookup cache: per block of pages, what ``MemoryAttributes.get`` found there last time."""

from __future__ import annotations

import re
import sys

UNKNOWN, SHARED, SINGLE, MIXED = 0, 1, 2, 3
_KNOWN = re.compile(rb"[^\x00]")
MIN_SHIFT = 6     # blocks of at least 64 pages: the cache costs at most 1/8 of a bitmap of its extent
LOG_BLOCKS = 14   # at most 16,384 blocks: 16 KiB, whatever the store covers


class LookupCache:
    """One code per block of ``2**shift`` pages over ``[0, blocks << shift)``.

    A get that lands in a uniform block returns the block's value without a bisect over the
    run bounds, so lookups in guests with a few thousand runs cost about what a bitmap's do.
    A code says: ``SHARED`` every page of the block is 0; ``SINGLE`` every page holds the
    store's one non-zero value (stores whose ``supported`` mask is one bit); ``MIXED`` look it
    up; ``UNKNOWN`` not learnt yet (learnt by the next get in the block).  The store forgets the
    codes of every block a change overlaps, so a known code is always true.

    The cache is built on the first get, sized to the store's highest run bound: the blocks
    are as small as ``MIN_SHIFT`` allows but at most 2**LOG_BLOCKS of them and no larger than
    a chunk, so it costs at most 16 KiB; pages past its extent are looked up.

    Invariants (checked by the store's ``check()``): ``len(codes) == blocks``; every code is
    one of the four; a ``SHARED`` or ``SINGLE`` block is uniform with that value.
    """

    __slots__ = ("shift", "blocks", "extent", "limit", "codes", "values")

    def __init__(self, top: int, chunk_shift: int, single: int | None):
        log = min(max(top - 1, 1).bit_length(), chunk_shift + LOG_BLOCKS)
        self.shift = min(chunk_shift, max(MIN_SHIFT, log - LOG_BLOCKS))
        self.blocks = 1 << max(log - self.shift, 0)
        self.extent = self.blocks << self.shift    # pages covered: [0, extent)
        self.limit = self.max_extent(chunk_shift)  # the extent it could grow to
        self.codes = bytearray(self.blocks)
        # code -> the value get returns at once, or None to look it up
        self.values = (None, 0, single, None)

    @staticmethod
    def max_extent(chunk_shift: int) -> int:
        """The highest page extent a cache can cover."""
        return 1 << (chunk_shift + LOG_BLOCKS)

    def forget(self, first: int, end: int) -> None:
        """Pages ``[first, end)`` changed: their blocks are unknown again."""
        shift = self.shift
        lo, last = first >> shift, (end - 1) >> shift
        if lo == last:
            if lo < self.blocks:
                self.codes[lo] = UNKNOWN
        elif lo < self.blocks:
            hi = min(last + 1, self.blocks)
            self.codes[lo:hi] = bytes(hi - lo)

    def known(self):
        """``(first gfn, end gfn, code)`` of every block with a known code (for ``check()``)."""
        shift = self.shift
        for match in _KNOWN.finditer(self.codes):
            block = match.start()
            yield block << shift, (block + 1) << shift, self.codes[block]

    @property
    def nbytes(self) -> int:
        return sys.getsizeof(self) + sys.getsizeof(self.codes) + sys.getsizeof(self.values)
