"""Naive twin: one bit per 4 KiB page of guest memory, PRIVATE only."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

from ..errors import InvalidArgument
from ..units import PAGE_SHIFT, is_page_aligned
from .validate import ATTR_PRIVATE, check_bitmap, check_range, check_set, check_window

_FULL = 0xFF
_NOT_ALL_SHARED = re.compile(rb"[^\x00]")   # a byte holding a private page
_NOT_ALL_PRIVATE = re.compile(rb"[^\xff]")  # a byte holding a shared page

class BitmapAttributes:
    """One bit per page of ``[0, memory_size)``; a set bit means PRIVATE.

    The other structure discussed for the kernel (and what QEMU's RamBlockAttributes
    keeps): fixed cost memory_size / 32 KiB bytes whatever the guest does.
    Invariants: ``len(_bits) * 8 * PAGE_SIZE >= memory_size`` and no bit is set at or
    beyond the last page.  Addresses past ``memory_size`` are rejected.
    """

    def __init__(self, memory_size: int, supported: int = ATTR_PRIVATE):
        if not isinstance(memory_size, int) or memory_size <= 0 or not is_page_aligned(memory_size):
            raise InvalidArgument("memory_size", memory_size, "must be a positive multiple of 4 KiB")
        if supported & ~ATTR_PRIVATE:
            raise InvalidArgument("supported", supported, "a bitmap holds only PRIVATE")
        self.supported = supported
        self.memory_size = memory_size
        self._npages = memory_size >> PAGE_SHIFT
        self._bits = bytearray((self._npages + 7) // 8)

    def _inside(self, first: int, end: int) -> None:
        if end > self._npages:
            raise InvalidArgument("address", first << PAGE_SHIFT,
                                  f"range ends past guest memory ({self.memory_size:#x} bytes)")

    def get(self, address: int) -> int:
        gfn = address >> PAGE_SHIFT
        return ATTR_PRIVATE if self._bits[gfn >> 3] >> (gfn & 7) & 1 else 0

    def _count(self, first: int, end: int) -> int:
        """Set bits in [first, end)."""
        bits = self._bits
        if end - first < 16:
            return sum(bits[g >> 3] >> (g & 7) & 1 for g in range(first, end))
        head_end, tail_start = (first + 7) & ~7, end & ~7
        return (self._count(first, head_end) + self._count(tail_start, end)
                + int.from_bytes(bits[head_end >> 3:tail_start >> 3], "little").bit_count())

    def has(self, address: int, size: int, attributes: int) -> bool:
        first, end = check_range(address, size)
        if attributes & ~ATTR_PRIVATE or (attributes and end > self._npages):
            return False
        inside_end = min(end, self._npages)
        count = self._count(first, inside_end) if first < inside_end else 0
        return count == (inside_end - first if attributes else 0)

    def set(self, address: int, size: int, attributes: int, flags: int = 0) -> None:
        first, end = check_set(address, size, attributes, flags, self.supported)
        self._inside(first, end)
        if self.has(address, size, attributes):
            return
        bits = self._bits
        if end - first < 16:
            for gfn in range(first, end):
                if attributes:
                    bits[gfn >> 3] |= 1 << (gfn & 7)
                else:
                    bits[gfn >> 3] &= ~(1 << (gfn & 7)) & _FULL
            return
        head_end, tail_start = (first + 7) & ~7, end & ~7
        fill = _FULL if attributes else 0
        bits[head_end >> 3:tail_start >> 3] = bytes([fill]) * ((tail_start - head_end) >> 3)
        for lo, hi in ((first, head_end), (tail_start, end)):
            if lo < hi:
                self.set(lo << PAGE_SHIFT, (hi - lo) << PAGE_SHIFT, attributes)

    def load_bitmap(self, address: int, bits: bytes, attributes: int) -> None:
        first, end = check_bitmap(address, bits, attributes, self.supported)
        self._inside(first, end)
        if not first & 7:  # byte-aligned: one copy
            self._bits[first >> 3:(first >> 3) + len(bits)] = bits if attributes else bytes(len(bits))
            return
        for k in range(end - first):
            gfn = first + k
            if attributes and bits[k >> 3] >> (k & 7) & 1:
                self._bits[gfn >> 3] |= 1 << (gfn & 7)
            else:
                self._bits[gfn >> 3] &= ~(1 << (gfn & 7)) & _FULL

    def ranges(self, address: int = 0, size: int | None = None) -> Iterator[tuple[int, int, int]]:
        first, end = check_window(address, size)
        end = min(end, self._npages)
        gfn = first
        while gfn < end:
            start = self._next(gfn, end, 1)
            if start >= end:
                return
            gfn = self._next(start, end, 0)
            yield start << PAGE_SHIFT, (gfn - start) << PAGE_SHIFT, ATTR_PRIVATE

    def _next(self, gfn: int, end: int, bit: int) -> int:
        """The first page in ``[gfn, end)`` whose bit is ``bit``, or ``end``: page by page
        inside a byte, whole bytes of the other value skipped by a regex search."""
        bits = self._bits
        while gfn < end and gfn & 7:
            if bits[gfn >> 3] >> (gfn & 7) & 1 == bit:
                return gfn
            gfn += 1
        if gfn >= end:
            return end
        found = (_NOT_ALL_SHARED if bit else _NOT_ALL_PRIVATE).search(bits, gfn >> 3)
        if found is None:
            return end
        gfn = found.start() << 3
        while gfn < end:
            if bits[gfn >> 3] >> (gfn & 7) & 1 == bit:
                return gfn
            gfn += 1
        return end

    def pages(self, attributes: int) -> int:
        private = int.from_bytes(self._bits, "little").bit_count()
        if attributes == ATTR_PRIVATE:
            return private
        return ((1 << 64) >> PAGE_SHIFT) - private if attributes == 0 else 0

    def __len__(self) -> int:
        return self._npages

    def to_bytes(self) -> bytes:
        """The bitmap itself: bit ``k & 7`` of byte ``k >> 3`` is page k (``load_bitmap``'s order)."""
        return bytes(self._bits)

    @property
    def nbytes(self) -> int:
        return sys.getsizeof(self._bits)

    def check(self) -> None:
        spare = len(self._bits) * 8 - self._npages
        if spare and self._bits[-1] >> (8 - spare):
            raise AssertionError("BitmapAttributes: bits set past the last page")
