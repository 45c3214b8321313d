"""The raw calls the wrappers share: ioctl, mmap and munmap through libc, and an fd owner.

ctypes (not ``fcntl.ioctl``) so that the argument is passed by address without a copy,
KVM_RUN releases the GIL, and a signal that interrupts KVM_RUN comes back as EINTR
instead of being retried.  Every failure becomes ``KvmError(name, errno)`` here.
"""

from __future__ import annotations

import ctypes
import os
import weakref

from ..errors import KvmError

_libc = ctypes.CDLL(None, use_errno=True)

_ioctl = _libc.ioctl
_ioctl.restype = ctypes.c_int
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)

_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)

_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)

_madvise = _libc.madvise
_madvise.restype = ctypes.c_int
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

PROT_READ, PROT_WRITE = 1, 2
MADV_DONTFORK, MADV_DONTDUMP = 10, 16       # include/uapi/asm-generic/mman-common.h
MAP_SHARED = 1
MAP_FAILED = ctypes.c_void_p(-1).value

get_errno = ctypes.get_errno


def ioctl(fd: int, name: str, request: int, arg: int = 0) -> int:
    """ioctl(fd, request, arg) where ``arg`` is an int or an address; raise KvmError(name)."""
    ret = _ioctl(fd, request, arg)
    if ret < 0:
        raise KvmError(name, get_errno())
    return ret


def map_shared(fd: int, size: int, name: str) -> int:
    """mmap(fd, size, RW, MAP_SHARED) -> address; raise KvmError(name)."""
    addr = _mmap(None, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if addr is None or addr == MAP_FAILED:
        raise KvmError(name, get_errno())
    return addr


def madvise(addr: int, size: int, advice: int, name: str) -> None:
    """madvise(addr, size, advice); raise KvmError(name)."""
    if _madvise(addr, size, advice) != 0:
        raise KvmError(name, get_errno())


def _release(fd: int, addr: int, size: int) -> None:
    if addr:
        _munmap(addr, size)
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


class FdObject:
    """Owns one fd (and optionally one mapping of it).

    ``close()`` is idempotent; the object is a context manager; a ``weakref.finalize``
    releases fd and mapping if the owner forgets.  After close the fd reads as -1, so any
    further ioctl fails with ``KvmError(<ioctl>, EBADF)`` rather than hitting a reused fd.
    """

    def __init__(self, fd: int, *, owned: bool = True):
        self.fd = fd
        self._map_addr = 0
        self._map_size = 0
        self._finalizer = weakref.finalize(self, _release, fd if owned else -1, 0, 0)

    def _attach_mapping(self, addr: int, size: int, *, owned_fd: bool = True) -> None:
        self._finalizer.detach()
        self._map_addr, self._map_size = addr, size
        self._finalizer = weakref.finalize(self, _release, self.fd if owned_fd else -1, addr, size)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        self._finalizer()
        self.fd = -1
        self._map_addr = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self.fd}>"
