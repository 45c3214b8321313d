"""Naive twin: one dict entry per 4 KiB page, as the kernel's XArray stores attributes."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from ..units import ADDRESS_LIMIT, PAGE_SHIFT
from .validate import ATTR_PRIVATE, check_bitmap, check_range, check_set, check_window


class PageMapAttributes:
    """Reference model for ``MemoryAttributes``: ``_pages[gfn] = attributes``.

    Invariants: no entry holds 0 (absent means shared, as in the kernel); every value is
    within ``supported``.  Set and ranges cost O(pages); use only where pages fit in memory.
    """

    def __init__(self, supported: int = ATTR_PRIVATE):
        self.supported = supported
        self._pages: dict[int, int] = {}

    def get(self, address: int) -> int:
        return self._pages.get(address >> PAGE_SHIFT, 0)

    def has(self, address: int, size: int, attributes: int) -> bool:
        first, end = check_range(address, size)
        pages = self._pages
        if attributes == 0 and len(pages) < end - first:
            return not any(first <= gfn < end for gfn in pages)
        return all(pages.get(gfn, 0) == attributes for gfn in range(first, end))

    def set(self, address: int, size: int, attributes: int, flags: int = 0) -> None:
        first, end = check_set(address, size, attributes, flags, self.supported)
        if self.has(address, size, attributes):
            return
        pages = self._pages
        if attributes:
            pages.update(dict.fromkeys(range(first, end), attributes))
        elif end - first > len(pages):
            for gfn in [g for g in pages if first <= g < end]:
                del pages[gfn]
        else:
            for gfn in range(first, end):
                pages.pop(gfn, None)

    def load_bitmap(self, address: int, bits: bytes, attributes: int) -> None:
        first, end = check_bitmap(address, bits, attributes, self.supported)
        for gfn in range(first, end):
            k = gfn - first
            if attributes and bits[k >> 3] >> (k & 7) & 1:
                self._pages[gfn] = attributes
            else:
                self._pages.pop(gfn, None)

    def ranges(self, address: int = 0, size: int | None = None) -> Iterator[tuple[int, int, int]]:
        first, end = check_window(address, size)
        run: list[int] | None = None
        for gfn in sorted(g for g in self._pages if first <= g < end):
            value = self._pages[gfn]
            if run and run[1] == gfn and run[2] == value:
                run[1] += 1
                continue
            if run:
                yield run[0] << PAGE_SHIFT, (run[1] - run[0]) << PAGE_SHIFT, run[2]
            run = [gfn, gfn + 1, value]
        if run:
            yield run[0] << PAGE_SHIFT, (run[1] - run[0]) << PAGE_SHIFT, run[2]

    def pages(self, attributes: int) -> int:
        if attributes == 0:
            return (ADDRESS_LIMIT >> PAGE_SHIFT) - len(self._pages)
        return sum(1 for value in self._pages.values() if value == attributes)

    def __len__(self) -> int:
        return len(self._pages)

    @property
    def nbytes(self) -> int:
        """The dict plus its key objects (values are the cached small int 8)."""
        return sys.getsizeof(self._pages) + sum(sys.getsizeof(gfn) for gfn in self._pages)

    def check(self) -> None:
        for gfn, value in self._pages.items():
            if not value or value & ~self.supported:
                raise AssertionError(f"PageMapAttributes: page {gfn:#x} stores {value:#x}")
