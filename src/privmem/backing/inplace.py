"""One file for both views of guest memory: the in-place conversion backing.

The in-place conversion series ("[PATCH v7 00/42] guest_memfd: In-place conversion
support", kvm@vger.kernel.org, May 2026) keeps shared and private state per page inside
guest_memfd itself: one physical page serves both states, so a conversion allocates nothing
and discards nothing.  ``InPlaceBacking`` holds one guest_memfd (MMAP | INIT_SHARED;
or a memfd stand-in where there is no KVM) and two MAP_SHARED mappings of it:

* the **private view** (``private_hva``): read/write always; KVM's userspace_addr for the
  guest_memfd slots (this host's emulator reaches guest memory through it), and the way the
  VMM zeroes a page before it changes hands.  Nothing else reads or writes through it.
* the **shared view** (``hva``): the alias memslot's userspace_addr *and* the host's (the
  device model's) view.  A private page is PROT_NONE here: the host cannot read it, the
  guest's shared-view access to it finds no accessible memory (an MMIO exit on this host), as
  the kernel's version unmaps a page from every mapping when it turns private.

Both views are MADV_DONTDUMP and MADV_DONTFORK: a core dump reads even PROT_NONE mappings, and
a forked child must inherit no way to the pages.  What this cannot do that the kernel does:
revoke a mapping another process made of the same file (the kernel unmaps it everywhere).

``change_view(offset, size, shared, zero)`` is one conversion's work on a range: the shared
view's protection and, where asked, the zeroing of the pages that are allocated (measured with
cachestat, so a page never touched stays unallocated: a conversion never allocates), all or
nothing.  ``protect`` and ``zero_allocated`` are its two halves on their own.  Host
access (``read``, ``write``, ``fill``, ``read_into``, ``fill_by_file``) goes through the
shared view: the engine refuses private pages before a byte moves, and a raw touch of one
faults.  ``discard`` (PUNCH_HOLE) frees and zeroes pages without changing their state.
"""

from __future__ import annotations

import ctypes

from ..attrs.ranges import MemoryAttributes
from ..errors import AccessDenied
from ..units import PAGE_SHIFT, PAGE_SIZE
from . import syscalls
from .accounting import measured_ranges
from .mapping import HostMapping
from .memory import _RW, Backing, _check_size, _locked

_NONE = syscalls.PROT_NONE


class InPlaceBacking(Backing):
    """One guest_memfd (or stand-in) serving both views (module docstring).  All pages start
    PROT_NONE in the shared view (private) unless ``initial_shared``."""

    kind = "guest_memfd (in place)"

    def __init__(self, fd: int, size: int, *, kind: str, initial_shared: bool = False, owns_fd: bool = True):
        _check_size(size)
        private_view = HostMapping(fd, size, _RW, private=True)
        try:
            shared_view = HostMapping(fd, size, _RW if initial_shared else _NONE, private=True)
        except BaseException:
            private_view.unmap()
            raise
        super().__init__(fd, size, shared_view, owns_fd=owns_fd, extra_mappings=(private_view,))
        self.kind = kind
        self._private_view = private_view
        self.protection_changes = 0
        # Which pages the shared view makes accessible: host access is refused (AccessDenied)
        # anywhere else, before a byte is touched, instead of faulting the process.
        self._accessible = MemoryAttributes(supported=1)
        if initial_shared:
            self._accessible.set(0, size, 1)

    @classmethod
    def from_guest_memfd(cls, fd: int, size: int, *, initial_shared: bool = False,
                         owns_fd: bool = True) -> "InPlaceBacking":
        """Wrap a guest_memfd created with GUEST_MEMFD_FLAG_MMAP | INIT_SHARED."""
        actual = syscalls.fstat(fd).st_size
        if actual != size:
            from ..errors import InvalidArgument
            raise InvalidArgument("size", size, f"guest_memfd fd {fd} has st_size {actual:#x}")
        return cls(fd, size, kind="guest_memfd (in place)", initial_shared=initial_shared, owns_fd=owns_fd)

    @classmethod
    def standin(cls, size: int, *, initial_shared: bool = False,
                name: str = "privmem-inplace-standin") -> "InPlaceBacking":
        """A memfd with the same two views, for hosts without /dev/kvm."""
        _check_size(size)
        fd = syscalls.memfd_create(name, syscalls.MFD_CLOEXEC)
        try:
            syscalls.ftruncate(fd, size)
            return cls(fd, size, kind="memfd-standin (in place)", initial_shared=initial_shared)
        except BaseException:
            syscalls.close(fd)
            raise

    @property
    def private_hva(self) -> int:
        """The private view's address: KVM's userspace_addr for the guest_memfd slots."""
        return self._private_view.addr if not self.closed else 0

    # -- conversions --------------------------------------------------------------------

    @_locked
    def change_view(self, offset: int, size: int, shared: bool, zero: bool) -> int:
        """One conversion of ``[offset, offset + size)``: the shared view becomes read/write
        (``shared``) or PROT_NONE, and the allocated pages are zeroed where ``zero`` (always
        when they turn shared).  Returns the bytes zeroed.  All or nothing: a failed mprotect
        changes nothing, a failure after it restores the protection.

        Turning shared, the zeroing comes after the mprotect and before the host's API may
        touch the pages (both under this lock): a failed mprotect must not cost the guest its
        private data, and the host never reads it."""
        self._check_range(offset, size)
        self._mprotect(offset, size, shared)
        try:
            zeroed = self._zero(offset, size) if zero or shared else 0
        except BaseException:
            self._mprotect(offset, size, not shared)
            raise
        self._mark(offset, size, shared)
        return zeroed

    @_locked
    def protect(self, offset: int, size: int, shared: bool) -> None:
        """The shared view of ``[offset, offset + size)`` becomes read/write (``shared``) or
        PROT_NONE, contents untouched (``set_initial``)."""
        self._check_range(offset, size)
        self._mprotect(offset, size, shared)
        self._mark(offset, size, shared)

    @_locked
    def zero_allocated(self, offset: int, size: int) -> int:
        """Zero the allocated pages of the range through the private view; returns the bytes
        zeroed.  Pages never allocated read as zero already and stay unallocated."""
        self._check_range(offset, size)
        return self._zero(offset, size)

    def _mprotect(self, offset: int, size: int, shared: bool) -> None:
        # mprotect makes the kernel drop the PTEs and KVM's mappings of the range (its MMU
        # notifier), so no stale view survives.  SyscallError (e.g. ENOMEM: the process's
        # limit of memory areas, vm.max_map_count) leaves the range as it was.
        syscalls.mprotect(self._mapping.addr + offset, size, _RW if shared else _NONE)
        self.protection_changes += 1

    def _mark(self, offset: int, size: int, shared: bool) -> None:
        self._accessible.assign_pages(offset >> PAGE_SHIFT, (offset + size) >> PAGE_SHIFT, 1 if shared else 0)

    def _zero(self, offset: int, size: int) -> int:
        base = self._private_view.addr
        if size == PAGE_SIZE:           # the common case: one cachestat, no bisection
            if self._count_pages(offset, size):
                ctypes.memset(base + offset, 0, size)
                return size
            return 0
        zeroed = 0
        for start, length in measured_ranges(self._count_pages, offset, size):
            ctypes.memset(base + start, 0, length)
            zeroed += length
        return zeroed

    # -- host access through the shared view ----------------------------------------------

    def _host_mapping(self) -> HostMapping:
        self._check_open()
        return self._mapping

    def _check_bytes(self, offset: int, n: int) -> None:
        super()._check_bytes(offset, n)
        if n:
            first = offset & ~(PAGE_SIZE - 1)
            end = (offset + n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            if not self._accessible.has(first, end - first, 1):
                raise AccessDenied(f"host access to [{offset:#x}, {offset + n:#x}) of the {self.kind} backing "
                                   "refused: the shared view of a page there is revoked (the page is private)")

    @_locked
    def read_into(self, offset: int, buffer) -> int:
        """Copy ``len(buffer)`` bytes at ``offset`` out of the shared view (guest_memfd has no
        read(2)).  The caller has checked the pages are shared."""
        mapping = self._host_mapping()
        self._check_bytes(offset, len(buffer))
        target = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        ctypes.memmove(target, mapping.addr + offset, len(buffer))
        return len(buffer)

    @_locked
    def fill_by_file(self, offset: int, size: int, byte: int, chunk: int = 1 << 20) -> None:
        """``fill`` (guest_memfd has no write(2)): through the shared view."""
        self.fill(offset, size, byte)

    def seal(self) -> None:
        """Launch.  Nothing to revoke: the host never had a view of private pages here."""

    @property
    def sealed(self) -> bool:
        return False

    def _hint(self, offset: int, size: int):
        """No mincore hint: the shared view is PROT_NONE over private pages (cachestat alone)."""
        return None


__all__ = ["InPlaceBacking"]
