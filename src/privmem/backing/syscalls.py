"""Thin wrappers over the syscalls a memory backing needs.

One function per syscall, named after it, no policy.  Every failure is raised as
``SyscallError(<call>, errno, detail)`` with the fd / offset / length in ``detail``, so the
message points at the man page and the exact arguments.  ctypes (``use_errno=True``) is used
where Python has no binding (fallocate, mincore, cachestat, raw mmap); ctypes calls release
the GIL, so a long fallocate does not stall vCPU threads.

Facts these wrappers were checked against (Linux 6.18, this project's host):

- ``cachestat(2)`` (6.5+) counts the folios in a file's page cache without touching them.
  It works on a guest_memfd with any flags (no mmap needed) and counts pages allocated by
  ``fallocate(KEEP_SIZE)`` that nobody has faulted yet.  1 GiB fully allocated: ~8 ms; an
  empty range: a few µs (cost follows the allocated pages, not the range).
- ``mincore(2)`` on a file mapping reports *uptodate* page-cache folios (or present PTEs).
  On guest_memfd and memfd alike, pages allocated by fallocate but never faulted are **not**
  uptodate, so mincore misses them.  1 GiB (262144 pages): ~11–16 ms.
- ``lseek(SEEK_DATA)`` on a guest_memfd: ESPIPE.  On a memfd it treats non-uptodate folios
  as holes, so it also misses fallocate-preallocated pages (st_blocks and cachestat count them).
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import NamedTuple

from ..errors import SyscallError

_libc = ctypes.CDLL(None, use_errno=True)

_c_off = ctypes.c_int64

_fallocate = _libc.fallocate
_fallocate.restype = ctypes.c_int
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, _c_off, _c_off)

_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, _c_off)

_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)

_mprotect = _libc.mprotect
_mprotect.restype = ctypes.c_int
_mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

_madvise = _libc.madvise
_madvise.restype = ctypes.c_int
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

_mincore = _libc.mincore
_mincore.restype = ctypes.c_int
_mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# include/uapi/linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
# include/uapi/linux/fs.h
SEEK_DATA = 3
SEEK_HOLE = 4
# include/uapi/asm-generic/mman-common.h, mman.h
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_FIXED = 0x01, 0x02, 0x10
MADV_DONTNEED = 4
MADV_REMOVE = 9
MADV_DONTFORK = 10
MADV_DONTDUMP = 16
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
MFD_CLOEXEC = 0x0001
# arch/x86/entry/syscalls/syscall_64.tbl
SYS_cachestat = 451

MAP_FAILED = ctypes.c_void_p(-1).value


def _fail(call: str, detail: str) -> SyscallError:
    return SyscallError(call, ctypes.get_errno(), detail)


def _os_fail(call: str, exc: OSError, detail: str) -> SyscallError:
    return SyscallError(call, exc.errno, detail)


def memfd_create(name: str, flags: int = MFD_CLOEXEC) -> int:
    """memfd_create(name, flags) -> fd."""
    try:
        return os.memfd_create(name, flags)
    except OSError as exc:
        raise _os_fail("memfd_create", exc, f"name={name!r} flags={flags:#x}") from None


def ftruncate(fd: int, length: int) -> None:
    try:
        os.ftruncate(fd, length)
    except OSError as exc:
        raise _os_fail("ftruncate", exc, f"fd={fd} length={length:#x}") from None


def fstat(fd: int) -> os.stat_result:
    try:
        return os.fstat(fd)
    except OSError as exc:
        raise _os_fail("fstat", exc, f"fd={fd}") from None


def close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError as exc:
        raise _os_fail("close", exc, f"fd={fd}") from None


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(fd, mode, offset, length); mode is FALLOC_FL_* bits."""
    if _fallocate(fd, mode, offset, length) != 0:
        raise _fail("fallocate", f"fd={fd} mode={mode:#x} offset={offset:#x} len={length:#x}")


def pread_into(fd: int, buffer, offset: int) -> int:
    """preadv(fd, [buffer], offset) -> bytes read.  A read of a memfd hole copies zeros
    without allocating the page (unlike a fault through a mapping)."""
    try:
        return os.preadv(fd, [buffer], offset)
    except OSError as exc:
        raise _os_fail("preadv", exc, f"fd={fd} offset={offset:#x} len={len(buffer):#x}") from None


def pwrite(fd: int, data, offset: int) -> int:
    """pwrite(fd, data, offset) -> bytes written."""
    try:
        return os.pwrite(fd, data, offset)
    except OSError as exc:
        raise _os_fail("pwrite", exc, f"fd={fd} offset={offset:#x} len={len(data):#x}") from None


def lseek(fd: int, offset: int, whence: int) -> int:
    """lseek(fd, offset, whence) -> new offset.  SEEK_DATA past the last data gives ENXIO."""
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        raise _os_fail("lseek", exc, f"fd={fd} offset={offset:#x} whence={whence}") from None


def mmap(length: int, prot: int, flags: int, fd: int, offset: int = 0, addr: int = 0) -> int:
    """mmap(addr, length, prot, flags, fd, offset) -> address of the mapping."""
    result = _mmap(addr or None, length, prot, flags, fd, offset)
    if result is None or result == MAP_FAILED:
        raise _fail("mmap", f"fd={fd} len={length:#x} prot={prot:#x} flags={flags:#x} offset={offset:#x}")
    return result


def munmap(addr: int, length: int) -> None:
    if _munmap(addr, length) != 0:
        raise _fail("munmap", f"addr={addr:#x} len={length:#x}")


def mprotect(addr: int, length: int, prot: int) -> None:
    if _mprotect(addr, length, prot) != 0:
        raise _fail("mprotect", f"addr={addr:#x} len={length:#x} prot={prot:#x}")


def madvise(addr: int, length: int, advice: int) -> None:
    if _madvise(addr, length, advice) != 0:
        raise _fail("madvise", f"addr={addr:#x} len={length:#x} advice={advice}")


def mincore(addr: int, length: int, page_size: int = 4096) -> bytes:
    """mincore(addr, length) -> one byte per page; bit 0 set = resident (uptodate in the page
    cache or mapped).  Never faults a page in.  ``addr`` must be page aligned."""
    vec = ctypes.create_string_buffer((length + page_size - 1) // page_size)
    if _mincore(addr, length, vec) != 0:
        raise _fail("mincore", f"addr={addr:#x} len={length:#x}")
    return vec.raw


class _cachestat_range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _cachestat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("nr_dirty", ctypes.c_uint64),
                ("nr_writeback", ctypes.c_uint64), ("nr_evicted", ctypes.c_uint64),
                ("nr_recently_evicted", ctypes.c_uint64)]


class CacheStat(NamedTuple):
    """Page counts from cachestat(2) (include/uapi/linux/mman.h ``struct cachestat``).

    For shmem (memfd) ``nr_evicted`` counts pages swapped out: still allocated.
    """

    nr_cache: int
    nr_dirty: int
    nr_writeback: int
    nr_evicted: int
    nr_recently_evicted: int


def cachestat(fd: int, offset: int, length: int, flags: int = 0) -> CacheStat:
    """cachestat(fd, {offset, length}, &cstat, flags).  ``length`` 0 means to end of file.
    ENOSYS before Linux 6.5."""
    rng = _cachestat_range(offset, length)
    out = _cachestat()
    ret = _syscall(ctypes.c_long(SYS_cachestat), ctypes.c_int(fd), ctypes.byref(rng), ctypes.byref(out),
                   ctypes.c_uint(flags))
    if ret != 0:
        raise _fail("cachestat", f"fd={fd} offset={offset:#x} len={length:#x}")
    return CacheStat(out.nr_cache, out.nr_dirty, out.nr_writeback, out.nr_evicted, out.nr_recently_evicted)


class CachestatCounter:
    """cachestat(2) of one fd with its argument structs built once: the per-conversion path
    (one call per page an in-place conversion may zero) pays the syscall, not ctypes'
    allocations.  Not thread-safe: the caller serializes (the backing's lock)."""

    def __init__(self, fd: int):
        self._range, self._out = _cachestat_range(0, 0), _cachestat()
        self._args = (ctypes.c_long(SYS_cachestat), ctypes.c_int(fd), ctypes.byref(self._range),
                      ctypes.byref(self._out), ctypes.c_uint(0))
        self._fd = fd

    def allocated_pages(self, offset: int, length: int) -> int:
        """Pages of [offset, offset + length) the file holds memory for: in the page cache
        or swapped out (shmem counts those as evicted)."""
        self._range.off, self._range.len = offset, length
        if _syscall(*self._args) != 0:
            raise _fail("cachestat", f"fd={self._fd} offset={offset:#x} len={length:#x}")
        return self._out.nr_cache + self._out.nr_evicted


def seek_data_extents(fd: int, offset: int, end: int) -> list[tuple[int, int]]:
    """(offset, size) extents SEEK_DATA/SEEK_HOLE reports in [offset, end).

    Kept for comparison only: on memfd it misses fallocate-preallocated pages (see the module
    docstring), and guest_memfd does not implement it (ESPIPE).  Backings use cachestat.
    """
    extents: list[tuple[int, int]] = []
    pos = offset
    while pos < end:
        try:
            data = os.lseek(fd, pos, SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:     # no data at or after pos
                break
            raise _os_fail("lseek", exc, f"fd={fd} offset={pos:#x} whence=SEEK_DATA") from None
        if data >= end:
            break
        hole = lseek(fd, data, SEEK_HOLE)
        extents.append((data, min(hole, end) - data))
        pos = hole
    return extents
