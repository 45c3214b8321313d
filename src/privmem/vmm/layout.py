"""The guest memory map the Machine and the trace player agree on.

Guest-physical, in bytes (page P's shared view is at P | shared_bit)::

    0x000000 - 0x001000   unused (null page)                         private
    0x001000 - 0x010000   player code (CODE_GPA, at most 60 KiB)      private, loaded before launch
    0x010000 - 0x030000   stacks, 4 KiB per vCPU (MAX_VCPUS = 32)     private
    0x030000 - 0x050000   comm pages, 4 KiB per vCPU                  shared: PSC request (psc.py),
                                                                      mailbox, parameters
    0x050000 - 0x200000   op lists (16-byte records, program.py)      shared: written by the VMM
    0x200000 - memory     workload memory (RESERVED_BYTES = 2 MiB)    initial state: Machine(initial=)

Op lists live in SHARED memory so that the VMM can hand the guest new work after launch
without touching private memory.  Comm page of vCPU i (offsets inside the page)::

    0x000  PSC request header + 253 entries; 0x7f0 PSC status (psc.py)
    0x800  mailbox: u32 gpa, u32 size, u32 pattern, u32 actual, u32 count
    0xf00  u32 shared_bit, u32 vcpu id   (parameters written by the VMM)

Guest data work is sampled.  On this host the player is emulated (~0.6-1.7 µs per guest
instruction; ``rep stos`` ~0.1 µs per byte), so touching every byte of a page would drown the
costs the machine exists to measure (conversions, discards, re-faults).  WRITE and VERIFY
therefore touch SAMPLE_OFFSETS of every 4 KiB page (the first and the last qword): enough to
tell a page holding the pattern from one that was discarded (reads zero) or holds another
pattern.  ``Machine(data_check="full")`` encodes the exact every-byte routines instead (for
tests).  TOUCH reads one byte per page.  The device side (DMA, done by the VMM on the host)
is byte-exact: DMA_IN writes every byte; DMA_OUT compares every byte under "full" and every
byte of each page's sample under "sampled", because a sampled guest WRITE defines only those
(a guest WRITE of every byte costs ~400 µs per page here: it would again be most of a run).
"""

from __future__ import annotations

import struct

from ..units import MiB, PAGE_SIZE

RESERVED_BYTES = 2 * MiB
MAX_VCPUS = 32

CODE_GPA = 0x1000
CODE_LIMIT = 0x10000
STACKS_GPA = 0x10000
STACK_SIZE = PAGE_SIZE
PRIVATE_RESERVED_END = STACKS_GPA + MAX_VCPUS * STACK_SIZE      # 0x30000
COMM_GPA = PRIVATE_RESERVED_END
COMM_SIZE = PAGE_SIZE
OPS_GPA = COMM_GPA + MAX_VCPUS * COMM_SIZE                       # 0x50000
OPS_END = RESERVED_BYTES

# comm page offsets
MAILBOX = 0x800
MAILBOX_FORMAT = struct.Struct("<IIIII")    # gpa, size, pattern, actual, count
PARAMS = 0xF00
PARAMS_FORMAT = struct.Struct("<II")        # shared_bit, vcpu id

# the bytes of each 4 KiB page a sampled WRITE / VERIFY touches: (offset, size)
SAMPLE_OFFSETS = ((0, 8), (PAGE_SIZE - 8, 8))

# ports (OUT from the guest)
PORT_DONE = 0xE0
PORT_PSC = 0xE1
PORT_DMA_IN = 0xE2
PORT_DMA_OUT = 0xE3
PORT_VERIFY_FAIL = 0xE4
PORT_NOP = 0xE5

# flat 32-bit protected mode, set through KVM_SET_SREGS (no GDT in memory)
CODE_SELECTOR, DATA_SELECTOR = 0x08, 0x10


def stack_top(vcpu: int) -> int:
    return STACKS_GPA + (vcpu + 1) * STACK_SIZE


def comm_gpa(vcpu: int) -> int:
    return COMM_GPA + vcpu * COMM_SIZE


def shared_bit_for(memory: int) -> int:
    """Smallest power of two >= memory: the 'shared bit' of the alias."""
    return 1 << (memory - 1).bit_length()
