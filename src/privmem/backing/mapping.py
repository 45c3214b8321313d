"""One MAP_SHARED mapping of a backing file: its address, byte access and zero-copy views.

The mapping is made with a raw ``mmap(2)`` (not Python's ``mmap`` module) because a backing
needs to keep the *address range* reserved while revoking access: ``revoke()`` turns the
mapping PROT_NONE in place and drops its PTEs, so ``hva`` stays a reserved, inaccessible
range (a memslot's userspace_addr that now faults with EFAULT rather than landing in some
unrelated mapping that reused the address), and the same range still serves ``mincore``.

Views are ctypes arrays over the mapping, exported as memoryviews.  The mapping counts the
ones still alive and refuses to revoke or unmap under them (``InvalidState``), so a view can
never outlive its memory: the same rule Python's ``mmap.close()`` enforces with BufferError.
"""

from __future__ import annotations

import ctypes
import weakref

from ..errors import InvalidState
from . import syscalls


class HostMapping:
    """``mmap(size, prot, MAP_SHARED, fd, 0)``.  Offsets are not checked here (the backing
    checks them once, where they enter).

    ``private=True`` (a mapping of guest-private memory) marks it MADV_DONTDUMP and
    MADV_DONTFORK: a core dump reads even a PROT_NONE mapping (the kernel's dump uses a forced
    read, which needs only VM_MAYREAD), so revoking access is not enough to keep the pages out
    of one; and a forked child must not inherit a way to them."""

    def __init__(self, fd: int, size: int, prot: int = syscalls.PROT_READ | syscalls.PROT_WRITE, *,
                 private: bool = False):
        self.addr = syscalls.mmap(size, prot, syscalls.MAP_SHARED, fd)
        self.size = size
        self.prot = prot
        self._views: list[weakref.ref] = []
        if private:
            try:
                syscalls.madvise(self.addr, size, syscalls.MADV_DONTDUMP)
                syscalls.madvise(self.addr, size, syscalls.MADV_DONTFORK)
            except BaseException:
                syscalls.munmap(self.addr, size)
                raise

    @property
    def accessible(self) -> bool:
        return bool(self.addr) and self.prot != syscalls.PROT_NONE

    # host access (callers check bounds and state first)
    def read(self, offset: int, n: int) -> bytes:
        return ctypes.string_at(self.addr + offset, n)

    def write(self, offset: int, data) -> None:
        if not isinstance(data, bytes):
            data = bytes(data)
        ctypes.memmove(self.addr + offset, data, len(data))

    def fill(self, offset: int, size: int, byte: int) -> None:
        ctypes.memset(self.addr + offset, byte, size)

    def view(self, offset: int, size: int) -> memoryview:
        array = (ctypes.c_ubyte * size).from_address(self.addr + offset)
        self._views = [ref for ref in self._views if ref() is not None]
        self._views.append(weakref.ref(array))
        return memoryview(array).cast("B")

    def live_views(self) -> list:
        arrays = [ref() for ref in self._views]
        return [array for array in arrays if array is not None]

    def check_no_views(self, action: str) -> None:
        live = self.live_views()
        if live:
            raise InvalidState(f"cannot {action}: {len(live)} view(s) of the mapping are still alive; "
                               "release them (memoryview.release() or del) first")

    def mincore(self, offset: int, size: int) -> bytes:
        return syscalls.mincore(self.addr + offset, size)

    def revoke(self) -> None:
        """Make the range PROT_NONE in place and drop its PTEs (MADV_DONTNEED on a shared file
        mapping frees nothing).  The address stays reserved; any access now faults."""
        self.check_no_views("revoke host access")
        if self.prot != syscalls.PROT_NONE:
            syscalls.mprotect(self.addr, self.size, syscalls.PROT_NONE)
            self.prot = syscalls.PROT_NONE
            syscalls.madvise(self.addr, self.size, syscalls.MADV_DONTNEED)

    def unmap(self, *, force: bool = False) -> None:
        """munmap; idempotent.  Refuses while views are alive unless ``force`` (used only by
        the finalizer once the views are gone)."""
        if not self.addr:
            return
        if not force:
            self.check_no_views("unmap")
        syscalls.munmap(self.addr, self.size)
        self.addr = 0
