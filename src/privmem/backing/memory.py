"""Memory backings: one file of ``size`` bytes addressed by offset (docs/design.md, "backing/").

- ``SharedBacking.create(size)``: a memfd with a MAP_SHARED read/write mapping (shared memory,
  the memslot's userspace_addr).
- ``PrivateBacking.from_guest_memfd(fd, size)``: a guest_memfd created by the VM elsewhere.
  Before launch the host may populate it through a MAP_SHARED mapping (needs
  GUEST_MEMFD_FLAG_MMAP | INIT_SHARED); ``seal()`` marks launch and revokes host access.
- ``PrivateBacking.standin(size)``: a memfd with the same rules, for hosts without /dev/kvm.

Allocation accounting is measured from the kernel and never touches a page: cachestat(2)
for counts, mincore on the backing's own mapping as a hint for ranges (see ``accounting``).

Ranges are half-open ``(offset, size)`` in bytes; ``discard``/``allocate``/accounting ranges
must be page aligned and inside the file, host access ranges only inside the file.  Errors:
``InvalidArgument`` for bad ranges, ``InvalidState`` after close, ``AccessDenied`` for host
access to sealed (or never host-accessible) private memory, ``SyscallError`` from the kernel.
"""

from __future__ import annotations

import functools
import threading
import weakref

from ..errors import AccessDenied, InvalidArgument, InvalidState, SyscallError
from ..units import PAGE_SIZE, is_page_aligned
from . import syscalls
from .accounting import allocated_pages, measured_ranges
from .mapping import HostMapping

_PUNCH = syscalls.FALLOC_FL_PUNCH_HOLE | syscalls.FALLOC_FL_KEEP_SIZE
_ALLOCATE = syscalls.FALLOC_FL_KEEP_SIZE
_RW = syscalls.PROT_READ | syscalls.PROT_WRITE


class _Resources:
    """What a backing owns: its fd, its mapping and any further mappings of the file.
    Released by ``close()`` or, as a fallback, by ``weakref.finalize``; if views of the
    mapping are still alive then, the release waits for the last of them (a view never
    outlives its memory)."""

    def __init__(self, fd: int, mapping: HostMapping | None, extra: tuple[HostMapping, ...] = ()):
        self.fd = fd
        self.mapping = mapping
        self.extra = list(extra)

    def release(self) -> None:
        mapping = self.mapping
        if mapping is not None:
            live = mapping.live_views()
            if live:
                for array in live:
                    weakref.finalize(array, self.release)
                return
            self.mapping = None
            try:
                mapping.unmap(force=True)
            except SyscallError:
                pass
        while self.extra:
            try:
                self.extra.pop().unmap(force=True)
            except SyscallError:
                pass
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                syscalls.close(fd)
            except SyscallError:
                pass


def _locked(method):
    """Run under the backing's lock: ``close()``/``seal()`` never unmap or close under an
    in-flight call (which could fault the process, or hit a reused fd number)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


def _check_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or not is_page_aligned(size):
        raise InvalidArgument("size", size, "must be a positive multiple of the page size")
    return size


class Backing:
    """Common part of every backing (the contract in docs/design.md).

    Attributes: ``kind`` ("memfd", "guest_memfd", "memfd-standin"), ``size``, ``fd`` (-1 after
    close), ``hva`` (address of the host mapping, 0 if none).  ``close()`` is idempotent;
    backings are context managers and are released by ``weakref.finalize`` if forgotten.
    Thread-safe: calls on one backing are serialized by a lock (fallocate of a whole GiB
    holds it for ~0.2 s; typical 4 KiB-2 MiB discards for µs).
    """

    kind = "backing"

    def __init__(self, fd: int, size: int, mapping: HostMapping | None, *, owns_fd: bool = True,
                 extra_mappings: tuple[HostMapping, ...] = ()):
        self.size = size
        self.fd = fd
        self._mapping = mapping
        self._lock = threading.RLock()
        self._counter = syscalls.CachestatCounter(fd)
        self._resources = _Resources(fd if owns_fd else -1, mapping, extra_mappings)
        self._finalizer = weakref.finalize(self, self._resources.release)

    # state ---------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def hva(self) -> int:
        """Host address of this backing's mapping (a memslot's userspace_addr); 0 if none."""
        mapping = self._mapping
        return mapping.addr if mapping is not None and not self.closed else 0

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidState(f"{self.kind} backing is closed")

    def _check_range(self, offset: int, size: int) -> None:
        """Page-aligned, non-empty, inside the file: where file ranges enter."""
        self._check_open()
        if not is_page_aligned(offset) or offset < 0:
            raise InvalidArgument("offset", offset, "must be page aligned and non-negative")
        if not is_page_aligned(size) or size <= 0:
            raise InvalidArgument("size", size, "must be a positive multiple of the page size")
        if offset + size > self.size:
            raise InvalidArgument("offset + size", offset + size, f"past the end of the backing ({self.size:#x})")

    def _check_bytes(self, offset: int, n: int) -> None:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise InvalidArgument("offset", offset, f"range of {n} bytes is outside the backing ({self.size:#x})")

    # file operations ----------------------------------------------------------------
    @_locked
    def discard(self, offset: int, size: int) -> None:
        """Free the pages: fallocate(PUNCH_HOLE | KEEP_SIZE).  Later reads/faults see zeroes."""
        self._check_range(offset, size)
        syscalls.fallocate(self.fd, _PUNCH, offset, size)

    @_locked
    def allocate(self, offset: int, size: int) -> None:
        """Pre-allocate the pages: fallocate(KEEP_SIZE).  Contents are unchanged (zero if new)."""
        self._check_range(offset, size)
        syscalls.fallocate(self.fd, _ALLOCATE, offset, size)

    # accounting (measured, never touching a page) ---------------------------------------
    def _count_pages(self, offset: int, size: int) -> int:
        # Under the backing's lock (every caller holds it): the counter's structs are shared.
        return allocated_pages(self._counter, offset, size)

    def _hint(self, offset: int, size: int):
        """A lazy mincore over the backing's own mapping (any protection), or None."""
        mapping = self._mapping
        if mapping is None:
            return None
        return lambda: mapping.mincore(offset, size)

    def allocated_bytes(self) -> int:
        """Bytes of the file the kernel holds memory for (cachestat over the whole file).
        Cost follows the allocated pages: ~8 ms for a fully allocated GiB, µs when empty."""
        return self.allocated_bytes_in(0, self.size)

    @_locked
    def allocated_bytes_in(self, offset: int, size: int) -> int:
        """``allocated_bytes`` for the window [offset, offset + size)."""
        self._check_range(offset, size)
        return self._count_pages(offset, size) * PAGE_SIZE

    @_locked
    def allocated_ranges(self, offset: int = 0, size: int | None = None) -> list[tuple[int, int]]:
        """Sorted, coalesced (offset, size) ranges the kernel holds memory for, in the window.

        cachestat counts, refined by bisection, with mincore on the backing's own mapping as
        a hint (a lower bound: it misses fallocated, never-faulted pages).  1 GiB: µs when
        empty, ~8 ms when full, ~15-25 ms plus ~30 µs per range when mixed.  A snapshot: not atomic against concurrent faults/punches.
        """
        if size is None:
            size = self.size - offset
        self._check_range(offset, size)
        return measured_ranges(self._count_pages, offset, size, self._hint(offset, size))

    # host access through the mapping --------------------------------------------------
    def _host_mapping(self) -> HostMapping:
        self._check_open()
        mapping = self._mapping
        if mapping is None or not mapping.accessible:
            raise AccessDenied(f"{self.kind} backing has no host read/write mapping")
        return mapping

    @_locked
    def read(self, offset: int, n: int) -> bytes:
        mapping = self._host_mapping()
        self._check_bytes(offset, n)
        return mapping.read(offset, n)

    @_locked
    def write(self, offset: int, data) -> None:
        mapping = self._host_mapping()
        self._check_bytes(offset, len(data))
        mapping.write(offset, data)

    @_locked
    def read_into(self, offset: int, buffer) -> int:
        """Read ``len(buffer)`` bytes at ``offset`` with a file read (preadv), not through the
        mapping: pages never written read as zeros and stay unallocated, and the caller's
        buffer bounds the memory used.  AccessDenied where host access is."""
        self._host_mapping()
        self._check_bytes(offset, len(buffer))
        return syscalls.pread_into(self.fd, buffer, offset)

    @_locked
    def fill_by_file(self, offset: int, size: int, byte: int, chunk: int = 1 << 20) -> None:
        """``fill`` with file writes (pwrite), not through the mapping: the pages are
        allocated in the file but never mapped in this process, so a device writing a large
        range does not grow the VMM's resident set.  AccessDenied where host access is."""
        self._host_mapping()
        if not 0 <= byte <= 0xFF:
            raise InvalidArgument("byte", byte, "must be 0..255")
        self._check_bytes(offset, size)
        block = bytes((byte,)) * min(size, chunk)
        done = 0
        while done < size:
            n = min(len(block), size - done)
            written = syscalls.pwrite(self.fd, memoryview(block)[:n], offset + done)
            done += written

    @_locked
    def fill(self, offset: int, size: int, byte: int) -> None:
        mapping = self._host_mapping()
        if not 0 <= byte <= 0xFF:
            raise InvalidArgument("byte", byte, "must be 0..255")
        self._check_bytes(offset, size)
        mapping.fill(offset, size, byte)

    @_locked
    def view(self, offset: int = 0, size: int | None = None) -> memoryview:
        """A zero-copy, writable memoryview of [offset, offset + size).  While any view is
        alive, ``close()`` (and ``seal()``) raise InvalidState; release views when done."""
        mapping = self._host_mapping()
        if size is None:
            size = self.size - offset
        self._check_bytes(offset, size)
        return mapping.view(offset, size)

    # lifetime ---------------------------------------------------------------------------
    @_locked
    def close(self) -> None:
        """Unmap and close the fd; idempotent.  InvalidState if views are still alive."""
        if self.closed:
            return
        mapping = self._mapping
        if mapping is not None:
            mapping.check_no_views("close the backing")
        self._finalizer()
        self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"<{type(self).__name__} {self.kind} size={self.size:#x} {state}>"


def _mapped_memfd(name: str, size: int, private: bool = False) -> tuple[int, int, HostMapping]:
    """A memfd of ``size`` bytes and a read/write MAP_SHARED mapping of it; nothing touched."""
    _check_size(size)
    fd = syscalls.memfd_create(name, syscalls.MFD_CLOEXEC)
    try:
        syscalls.ftruncate(fd, size)
        return fd, size, HostMapping(fd, size, _RW, private=private)
    except BaseException:
        syscalls.close(fd)
        raise


class SharedBacking(Backing):
    """Shared guest memory: a memfd plus a MAP_SHARED read/write mapping (``hva``)."""

    kind = "memfd"

    @classmethod
    def create(cls, size: int, name: str = "privmem-shared") -> "SharedBacking":
        """A memfd of ``size`` bytes, mapped; nothing is allocated or touched."""
        return cls(*_mapped_memfd(name, size))


class PrivateBacking(Backing):
    """Private guest memory: a guest_memfd (or a memfd stand-in with the same rules).

    Before ``seal()`` the host may populate it through its mapping (``write``/``fill``/
    ``read``/``view``).  ``seal()`` = launch: the mapping becomes PROT_NONE in place and its
    PTEs are dropped; afterwards host access raises AccessDenied, while ``discard``,
    ``allocate`` and the accounting keep working (they never touch a page).

    ``hva`` is the mapping's address, unchanged by ``seal()`` (the range stays reserved, so a
    memslot that was given it faults cleanly instead of hitting a reused address).  For a
    guest_memfd-only slot (FLAG_MMAP) KVM serves guest faults from the guest_memfd; passing
    0 or ``hva`` as userspace_addr is the machine's choice (see the report / tests).
    """

    kind = "guest_memfd"

    def __init__(self, fd: int, size: int, mapping: HostMapping | None, *, kind: str, owns_fd: bool = True):
        super().__init__(fd, size, mapping, owns_fd=owns_fd)
        self.kind = kind
        self._sealed = False

    @classmethod
    def from_guest_memfd(cls, fd: int, size: int, mmap_flag: bool = True, *, init_shared: bool = True,
                         owns_fd: bool = True) -> "PrivateBacking":
        """Wrap a guest_memfd fd of ``size`` bytes (it is closed with the backing if ``owns_fd``;
        on failure here the caller still owns it).

        ``mmap_flag``: the fd was created with GUEST_MEMFD_FLAG_MMAP.  ``init_shared``: also
        with INIT_SHARED, so the host may fault pages before launch.  MMAP without
        INIT_SHARED gets a PROT_NONE mapping only (any access would SIGBUS): no host access,
        but ``hva`` and the mincore hint exist.  Without MMAP there is no mapping at all
        (mmap gives ENODEV): ``hva`` is 0 and accounting uses cachestat alone.
        """
        _check_size(size)
        actual = syscalls.fstat(fd).st_size
        if actual != size:
            raise InvalidArgument("size", size, f"guest_memfd fd {fd} has st_size {actual:#x}")
        mapping = None
        if mmap_flag:
            mapping = HostMapping(fd, size, _RW if init_shared else syscalls.PROT_NONE, private=True)
        return cls(fd, size, mapping, kind="guest_memfd", owns_fd=owns_fd)

    @classmethod
    def standin(cls, size: int, name: str = "privmem-private-standin") -> "PrivateBacking":
        """A memfd playing guest_memfd for hosts without /dev/kvm: same rules, same accounting."""
        return cls(*_mapped_memfd(name, size, private=True), kind="memfd-standin")

    @property
    def sealed(self) -> bool:
        return self._sealed

    @_locked
    def seal(self) -> None:
        """Launch: revoke host access for good.  Idempotent.  InvalidState if closed or if
        views of the mapping are still alive (nothing changes then)."""
        self._check_open()
        if self._sealed:
            return
        if self._mapping is not None:
            self._mapping.revoke()
        self._sealed = True

    def _host_mapping(self) -> HostMapping:
        self._check_open()
        if self._sealed:
            raise AccessDenied(f"{self.kind} backing is sealed (launched): the host may not touch private memory")
        return super()._host_mapping()


__all__ = ["Backing", "PrivateBacking", "SharedBacking"]
