"""The firmware region: the player's code, page tables, stacks, comm pages and op rings, in a
memslot of its own outside guest RAM, just below the shared alias.

So a trace owns every page of RAM, page 0 included, whatever the layout.  The region is
ordinary VMM memory (a memfd), not guest RAM: it has no shared/private state, no discard
policy applies to it, and the host writes it at any time (the op rings are refilled while the
guest runs).  Guest-physical addresses and the player's virtual addresses::

    GPA                                   VA
    [0, top of RAM)   RAM, private view    the same (identity)
    [gpa, +size)      firmware region      [FIRMWARE_VA_TOP - size, FIRMWARE_VA_TOP)
                      (gpa = shared_bit - size)
    shared_bit + P    RAM, shared view     SHARED_VA + P

With a 48-bit guest-physical width the shared bit is 47 and every VA is the sign extension
of its GPA.  Region layout (offsets from its start)::

    0x00000  player code and its dispatch table (CODE_SIZE)
    0x10000  page tables (paging.py), as many pages as the memory map needs
    then per vCPU: stack (STACK_SIZE), comm page (COMM_SIZE), op ring (RING_BYTES)

Comm page of a vCPU (offsets inside the page)::

    0x000  PSC request header + 253 entries; 0x7f0 PSC status (psc.py)
    0x800  mailbox: u64 record, u64 address, u64 actual, u64 count, u32 device status
    0xf00  u32 vcpu id (written by the VMM)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..memmap import GuestMemoryMap
from ..units import MiB, PAGE_SIZE
from . import paging

SHARED_VA = 0xFFFF_8000_0000_0000
FIRMWARE_VA_TOP = 1 << 47            # the top of the canonical lower half
RECORD_BYTES = 32
RING_HALF_RECORDS = 1024             # one refill exit per 1,023 ops
RING_RECORDS = 2 * RING_HALF_RECORDS
RING_BYTES = RING_RECORDS * RECORD_BYTES
CODE_SIZE = 64 * 1024
STACK_SIZE = PAGE_SIZE
COMM_SIZE = PAGE_SIZE
PER_VCPU = STACK_SIZE + COMM_SIZE + RING_BYTES
ALIGN = 2 * MiB                      # the region is mapped with 2 MiB pages

# comm page offsets
PSC_OFFSET = 0x000
MAILBOX = 0x800
MAILBOX_FORMAT = struct.Struct("<QQQQI")      # record, address, actual, count, device status
MB_STATUS = MAILBOX + 32
PARAM_VCPU = 0xF00
DEVICE_OK, DEVICE_REFUSED = 0, 1

# ports (OUT from the guest)
PORT_DONE = 0xE0
PORT_PSC = 0xE1
PORT_DMA_IN = 0xE2
PORT_DMA_OUT = 0xE3
PORT_VERIFY_FAIL = 0xE4
PORT_NOP = 0xE5
PORT_REFILL = 0xE6
PORT_DELAY = 0xE7


def ram_spans(memory_map: GuestMemoryMap) -> list[tuple[int, int]]:
    """Each region rounded out to 2 MiB (the page size that maps it), touching spans merged."""
    spans: list[tuple[int, int]] = []
    for region in memory_map:
        lo = region.gpa // ALIGN * ALIGN
        hi = -(-region.end // ALIGN) * ALIGN
        if spans and lo <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
        else:
            spans.append((lo, hi))
    return spans


def ram_mappings(memory_map: GuestMemoryMap, shared_bit: int) -> list[paging.Mapping]:
    """The player's identity map of RAM, then RAM's shared view (at SHARED_VA, reaching the
    alias at the shared bit)."""
    spans = ram_spans(memory_map)
    return ([paging.Mapping(lo, lo, hi - lo) for lo, hi in spans]
            + [paging.Mapping(SHARED_VA + lo, shared_bit + lo, hi - lo) for lo, hi in spans])


@dataclass(frozen=True)
class FirmwareLayout:
    """Where everything is, for one machine (module docstring).

    Invariants: ``size`` is a multiple of ALIGN; the region lies above the top of RAM and
    below the shared bit; the page tables fit their room; the RAM's shared view fits the
    upper half of the VA space.
    """

    gpa: int
    size: int
    vcpus: int
    shared_bit: int
    table_pages: int
    huge_1g: bool

    @classmethod
    def plan(cls, memory_map: GuestMemoryMap, vcpus: int, shared_bit: int, huge_1g: bool) -> "FirmwareLayout":
        fixed = CODE_SIZE + vcpus * PER_VCPU
        # The firmware's own mapping adds at most a PDPT and a PD (it is far smaller than a GiB).
        table_pages = paging.count_pages(ram_mappings(memory_map, shared_bit), huge_1g) + 2
        size = -(-(fixed + table_pages * PAGE_SIZE) // ALIGN) * ALIGN
        layout = cls(shared_bit - size, size, vcpus, shared_bit, table_pages, huge_1g)
        top = -(-memory_map.top // ALIGN) * ALIGN
        if top > layout.gpa or top > FIRMWARE_VA_TOP - size:
            raise InvalidArgument("memory", memory_map.top, f"RAM must end below {layout.gpa:#x}, where the "
                                  f"firmware region sits under the shared bit {shared_bit:#x}")
        return layout

    # -- addresses -----------------------------------------------------------------------

    @property
    def va(self) -> int:
        return FIRMWARE_VA_TOP - self.size

    @property
    def tables_offset(self) -> int:
        return CODE_SIZE

    @property
    def cr3(self) -> int:
        return self.gpa + self.tables_offset

    def _vcpu_base(self, vcpu: int) -> int:
        return CODE_SIZE + self.table_pages * PAGE_SIZE + vcpu * PER_VCPU

    def stack_top(self, vcpu: int) -> int:
        """Offset of the top of vCPU ``vcpu``'s stack."""
        return self._vcpu_base(vcpu) + STACK_SIZE

    def comm(self, vcpu: int) -> int:
        """Offset of vCPU ``vcpu``'s comm page."""
        return self._vcpu_base(vcpu) + STACK_SIZE

    def ring(self, vcpu: int) -> int:
        """Offset of vCPU ``vcpu``'s op ring."""
        return self._vcpu_base(vcpu) + STACK_SIZE + COMM_SIZE

    def va_of(self, offset: int) -> int:
        return self.va + offset

    def mappings(self, memory_map: GuestMemoryMap) -> list[paging.Mapping]:
        return ram_mappings(memory_map, self.shared_bit) + [paging.Mapping(self.va, self.gpa, self.size)]

    def page_tables(self, memory_map: GuestMemoryMap):
        """The table pages to write from ``tables_offset`` on (paging.build)."""
        mappings = self.mappings(memory_map)
        pages = paging.count_pages(mappings, self.huge_1g)
        if pages > self.table_pages:
            raise AssertionError(f"page tables need {pages} pages, {self.table_pages} reserved")
        return paging.build(mappings, self.cr3, self.huge_1g)


__all__ = ["FirmwareLayout", "SHARED_VA", "RECORD_BYTES", "RING_HALF_RECORDS", "RING_RECORDS", "RING_BYTES",
           "ram_mappings", "ram_spans"]
