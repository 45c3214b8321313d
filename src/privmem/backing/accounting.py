"""Measuring which pages of a backing file are allocated, from the kernel, without a touch.

Two kernel sources, neither of which faults a page in:

- ``cachestat(fd, range)`` gives the *number* of allocated pages in a range (folios in the
  page cache, plus swapped-out shmem pages).  It is exact, counts pages allocated by
  ``fallocate`` that were never faulted, and needs no mapping (so it also works on a
  guest_memfd created without GUEST_MEMFD_FLAG_MMAP).
- ``mincore`` over a mapping of the file gives a per-page vector, but only of *uptodate*
  pages: a page allocated by fallocate and never faulted reads 0.  So it is a lower bound,
  used here only as a hint.

``measured_ranges`` turns counts into ranges: count the window; if the count equals the
hinted pages, the hint is exact there; if it equals the window size, the window is fully
allocated; if it is 0, nothing is; otherwise split in half.  With a hint the usual cases
(pages faulted by host or guest, or a few large pre-allocated blocks) cost one mincore plus a
handful of cachestat calls; the cost grows with the number of boundaries between
allocated-but-unfaulted runs and the rest, times log2(pages).
"""

from __future__ import annotations

import errno
from typing import Callable

from ..errors import SyscallError, Unsupported
from ..units import PAGE_SIZE
from . import syscalls

_LOW_BIT = bytes(i & 1 for i in range(256))   # mincore: only bit 0 is defined


def allocated_pages(counter: syscalls.CachestatCounter, offset: int, size: int) -> int:
    """Allocated pages in [offset, offset + size): resident + swapped out (shmem); a kernel
    without cachestat is said as Unsupported."""
    try:
        return counter.allocated_pages(offset, size)
    except SyscallError as exc:
        if exc.errno == errno.ENOSYS:
            raise Unsupported("cachestat(2) (Linux 6.5+) is needed to measure allocated pages "
                              "without touching them") from exc
        raise


def cachestat_pages(fd: int, offset: int, size: int) -> int:
    """``allocated_pages`` for one call on ``fd``."""
    return allocated_pages(syscalls.CachestatCounter(fd), offset, size)


def measured_ranges(count: Callable[[int, int], int], offset: int, size: int,
                    hint: bytes | Callable[[], bytes | None] | None = None,
                    page_size: int = PAGE_SIZE) -> list[tuple[int, int]]:
    """Coalesced, sorted (offset, size) ranges of allocated pages in [offset, offset + size).

    ``count(offset, size)`` returns the number of allocated pages in a page-aligned range;
    ``hint`` (one byte per page, bit 0 = known allocated, e.g. from mincore) may be None, or
    a callable producing it, called only if the window is neither empty nor full.
    Consistent if nothing changes the file meanwhile; otherwise a best-effort snapshot.
    """
    npages = size // page_size
    known: bytes | None = None
    pending_hint = hint

    def get_known() -> bytes | None:
        nonlocal known, pending_hint
        if pending_hint is not None:
            raw = pending_hint() if callable(pending_hint) else pending_hint
            pending_hint = None
            known = raw.translate(_LOW_BIT) if raw is not None else None
        return known
    out: list[tuple[int, int]] = []

    def emit(lo: int, hi: int) -> None:
        start, length = offset + lo * page_size, (hi - lo) * page_size
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((start, length))

    def emit_known(lo: int, hi: int) -> None:
        pos = lo
        while pos < hi:
            first = known.find(1, pos, hi)
            if first < 0:
                return
            end = known.find(0, first, hi)
            end = hi if end < 0 else end
            emit(first, end)
            pos = end

    stack = [(0, npages)] if npages else []
    while stack:
        lo, hi = stack.pop()
        n = hi - lo
        found = count(offset + lo * page_size, n * page_size)
        if found <= 0:
            continue
        if found >= n:
            emit(lo, hi)
            continue
        vector = get_known()
        hinted = vector.count(1, lo, hi) if vector is not None else 0
        if found <= hinted:
            emit_known(lo, hi)
            continue
        mid = (lo + hi) // 2
        stack.append((mid, hi))
        stack.append((lo, mid))
    return out


def naive_ranges(count: Callable[[int, int], int], offset: int, size: int,
                 page_size: int = PAGE_SIZE) -> list[tuple[int, int]]:
    """The page-at-a-time twin of ``measured_ranges`` (one count per page), for tests."""
    out: list[tuple[int, int]] = []
    for page in range(size // page_size):
        start = offset + page * page_size
        if count(start, page_size):
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], out[-1][1] + page_size)
            else:
                out.append((start, page_size))
    return out
