"""A memslot's ``userspace_addr`` mapping of a guest_memfd.

Measured on this project's host (nested, paravirtualized KVM, Linux 6.18): for a
guest_memfd-only slot (GUEST_MEMFD_FLAG_MMAP | INIT_SHARED) whose userspace_addr is 0 or a
PROT_NONE range, the guest's first instruction fetch from the slot ends in
KVM_EXIT_INTERNAL_ERROR (emulation failure): KVM reaches the memory through
userspace_addr.  With a MAP_SHARED read/write mapping of the same guest_memfd it runs, and
the memory is still the guest_memfd's (punching it zaps both views).

So the VMM gives KVM a mapping of its own here, separate from the private backing's host
mapping that ``seal()`` revokes.  Nothing in privmem reads or writes through it: it is
kernel plumbing, released with ``close()`` or by ``weakref.finalize``.
"""

from __future__ import annotations

from ._sys import FdObject, map_shared


class SlotMapping(FdObject):
    """MAP_SHARED read/write mapping of ``fd`` (not owned) for a memslot's userspace_addr."""

    def __init__(self, fd: int, size: int):
        super().__init__(fd, owned=False)
        addr = map_shared(fd, size, "mmap(memslot userspace_addr)")
        self._attach_mapping(addr, size, owned_fd=False)
        self.addr = addr
        self.size = size

    def close(self) -> None:
        super().close()
        self.addr = 0
