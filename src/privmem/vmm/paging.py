"""x86-64 four-level page tables for the player, as pure logic: mappings in, table pages out.

The player runs in long mode, which needs paging.  Its tables map each RAM region's private
view at the identity, its shared view at ``SHARED_VA + gpa`` (the guest-physical alias at the
shared bit), and the firmware region.  Leaves are 2 MiB pages, or 1 GiB pages where the
vCPU's CPUID offers them (pdpe1gb) and a mapping covers a whole aligned GiB, so a 1 TiB guest
needs a few MiB of tables at most and the emulated walker reads two or three levels.
Accessed and dirty bits are preset, so walking never writes a table.

``build(mappings, base_gpa, huge_1g)`` returns the table pages in the order they are placed
from ``base_gpa`` on (the PML4 first: CR3 = base_gpa); ``count_pages`` says how many that is,
so the firmware layout can reserve the room before anything is built.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ..units import GiB, MiB, PAGE_SIZE

PRESENT, WRITABLE, ACCESSED, DIRTY, LARGE = 1 << 0, 1 << 1, 1 << 5, 1 << 6, 1 << 7
TABLE_FLAGS = PRESENT | WRITABLE | ACCESSED
LEAF_FLAGS = PRESENT | WRITABLE | ACCESSED | DIRTY | LARGE
ENTRIES = 512
PAGE_2M, PAGE_1G, SPAN_PDPT = 2 * MiB, GiB, 512 * GiB
VA_BITS = 48
_CANONICAL_MASK = (1 << VA_BITS) - 1


class Mapping(NamedTuple):
    """Virtual ``[va, va + size)`` -> guest-physical ``[gpa, gpa + size)``, 2 MiB aligned."""

    va: int
    gpa: int
    size: int


def _leaves(mappings: Iterable[Mapping], huge_1g: bool) -> dict[int, list[tuple[int, int, int]]]:
    """Per 1 GiB of (48-bit) VA: ``(va, gpa, size)`` leaf runs, each a whole 1 GiB page or a
    run of 2 MiB pages inside that GiB."""
    per_gib: dict[int, list[tuple[int, int, int]]] = {}
    for va, gpa, size in mappings:
        if (va | gpa | size) % PAGE_2M:
            raise ValueError(f"mapping {va:#x} -> {gpa:#x} (+{size:#x}) is not 2 MiB aligned")
        va &= _CANONICAL_MASK
        end = va + size
        while va < end:
            gib = va // PAGE_1G
            stop = min(end, (gib + 1) * PAGE_1G)
            per_gib.setdefault(gib, []).append((va, gpa, stop - va))
            gpa += stop - va
            va = stop
    if huge_1g:
        for gib, runs in per_gib.items():
            if len(runs) == 1 and runs[0][2] == PAGE_1G and runs[0][1] % PAGE_1G == 0:
                per_gib[gib] = [(runs[0][0], runs[0][1], -1)]       # -1: one 1 GiB leaf
    return per_gib


def _plan(mappings: Iterable[Mapping], huge_1g: bool):
    per_gib = _leaves(mappings, huge_1g)
    pdpts = sorted({gib // ENTRIES for gib in per_gib})
    pds = sorted(gib for gib, runs in per_gib.items() if runs[0][2] != -1)
    return per_gib, pdpts, pds


def count_pages(mappings: Iterable[Mapping], huge_1g: bool) -> int:
    """Table pages ``build`` will produce: one PML4, a PDPT per 512 GiB used, a PD per GiB
    mapped with 2 MiB pages."""
    _, pdpts, pds = _plan(list(mappings), huge_1g)
    return 1 + len(pdpts) + len(pds)


def build(mappings: Iterable[Mapping], base_gpa: int, huge_1g: bool) -> Iterator[bytes]:
    """The table pages, 4 KiB each, to be placed one after the other from ``base_gpa``
    (PML4 first).  Mappings must not overlap in VA unless they map the same GPA there."""
    per_gib, pdpts, pds = _plan(list(mappings), huge_1g)
    pdpt_gpa = {index: base_gpa + (1 + k) * PAGE_SIZE for k, index in enumerate(pdpts)}
    pd_gpa = {gib: base_gpa + (1 + len(pdpts) + k) * PAGE_SIZE for k, gib in enumerate(pds)}

    pml4 = [0] * ENTRIES
    for index in pdpts:
        pml4[index] = pdpt_gpa[index] | TABLE_FLAGS
    yield struct.pack(f"<{ENTRIES}Q", *pml4)
    for index in pdpts:
        pdpt = [0] * ENTRIES
        for gib in range(index * ENTRIES, (index + 1) * ENTRIES):
            runs = per_gib.get(gib)
            if runs is None:
                continue
            pdpt[gib % ENTRIES] = (runs[0][1] | LEAF_FLAGS) if runs[0][2] == -1 else (pd_gpa[gib] | TABLE_FLAGS)
        yield struct.pack(f"<{ENTRIES}Q", *pdpt)
    for gib in pds:
        pd = [0] * ENTRIES
        for va, gpa, size in per_gib[gib]:
            first = (va % PAGE_1G) // PAGE_2M
            count = size // PAGE_2M
            pd[first:first + count] = range(gpa | LEAF_FLAGS, gpa + size, PAGE_2M)
        yield struct.pack(f"<{ENTRIES}Q", *pd)


def translate(pages: list[bytes], base_gpa: int, va: int) -> int | None:
    """Walk the tables ``build`` made (as a CPU would) for ``va``; the GPA, or None if
    unmapped.  For tests."""
    def entry(table_gpa: int, index: int) -> int:
        page = pages[(table_gpa - base_gpa) // PAGE_SIZE]
        return struct.unpack_from("<Q", page, index * 8)[0]

    va &= _CANONICAL_MASK
    table = base_gpa
    for shift in (39, 30, 21):
        value = entry(table, (va >> shift) % ENTRIES)
        if not value & PRESENT:
            return None
        address = value & ~0xFFF & ((1 << 52) - 1)
        if value & LARGE:
            return (address & ~((1 << shift) - 1)) + (va & ((1 << shift) - 1))
        table = address
    return None


__all__ = ["LEAF_FLAGS", "Mapping", "TABLE_FLAGS", "build", "count_pages", "translate"]
