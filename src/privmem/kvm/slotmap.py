"""A memslot's ``userspace_addr`` mapping of a guest_memfd.

Measured on this project's host (nested, paravirtualized KVM, Linux 6.18): for a
guest_memfd-only slot (GUEST_MEMFD_FLAG_MMAP | INIT_SHARED) whose userspace_addr is 0 or a
PROT_NONE range, the guest's first instruction fetch from the slot ends in
KVM_EXIT_INTERNAL_ERROR (emulation failure): KVM reaches the memory through
userspace_addr.  With a MAP_SHARED read/write mapping of the same guest_memfd it runs, and
the memory is still the guest_memfd's (punching it zaps both views).

So the VMM gives KVM a mapping of its own here, separate from the private backing's host
mapping that ``seal()`` revokes.  Nothing in privmem reads or writes through it: it is
kernel plumbing, released with ``close()`` or by ``weakref.finalize``.  The emulator needs it
for as long as the guest runs (every guest instruction is emulated here), so it cannot be
dropped at launch.  What the VMM can do, it does: the mapping is MADV_DONTDUMP (no core
dump of the VMM holds the guest's private pages, whatever the coredump_filter) and
MADV_DONTFORK (a child the VMM forks, e.g. a helper process, does not inherit it).  What it
cannot prevent: code in the VMM process that reads the address, or that maps the
guest_memfd again (its fd is open in the process); on this host guest_memfd pages are not
removed from the kernel's direct map either (NO_DIRECT_MAP is not merged).
"""

from __future__ import annotations

from ._sys import MADV_DONTDUMP, MADV_DONTFORK, FdObject, madvise, map_shared


class SlotMapping(FdObject):
    """MAP_SHARED read/write mapping of ``fd`` (not owned) for a memslot's userspace_addr,
    left out of core dumps and of forked children."""

    def __init__(self, fd: int, size: int):
        super().__init__(fd, owned=False)
        addr = map_shared(fd, size, "mmap(memslot userspace_addr)")
        self._attach_mapping(addr, size, owned_fd=False)
        self.addr = addr
        self.size = size
        try:
            madvise(addr, size, MADV_DONTDUMP, "madvise(MADV_DONTDUMP, memslot userspace_addr)")
            madvise(addr, size, MADV_DONTFORK, "madvise(MADV_DONTFORK, memslot userspace_addr)")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        super().close()
        self.addr = 0
