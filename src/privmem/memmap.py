"""Guest memory maps: where a guest's RAM lies in guest-physical space, and where each piece
lives in the backing files.

A real guest's RAM is not one block at GPA 0.  QEMU's q35 machine splits it around the
32-bit PCI hole; Cloud Hypervisor splits it at 3 GiB.  Traces recorded from such guests
convert addresses on both sides of the hole, so every address privmem handles is translated
through a :class:`GuestMemoryMap` (the shape of vm-memory's ``GuestMemoryMmap``): a sorted
list of RAM :class:`Region` ``(gpa, size)``, each backed by the file range
``[offset, offset + size)`` of *both* backings (the private guest_memfd and the shared
memfd).  Regions are packed one after the other in the files, so a page has the same offset
in both, and nothing anywhere assumes ``offset == gpa``.  An address in a hole is an error
that names the address and the regions around it.

Layouts are registered by name (``LAYOUTS``, filled by ``@layout``): ``flat``, ``q35`` and
``cloud-hypervisor``; ``GuestMemoryMap.from_layout(name, ram)`` builds one.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from .errors import InvalidArgument
from .registry import Registry
from .units import ADDRESS_LIMIT, GiB, MiB, PAGE_SHIFT, PAGE_SIZE, format_size, is_page_aligned

_PAGE_MASK = PAGE_SIZE - 1
_FOUR_GIB = 4 * GiB


class Region(NamedTuple):
    """RAM at ``[gpa, gpa + size)``, backed by ``[offset, offset + size)`` of each backing."""

    gpa: int
    size: int
    offset: int

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def __str__(self) -> str:
        return f"[{self.gpa:#x}, {self.end:#x})"


class GpaRange(NamedTuple):
    """A page-aligned, non-empty range of guest RAM, validated once where it entered (PSC
    request, hypercall, trace, API) by :meth:`GuestMemoryMap.range`; layers below accept it
    as is."""

    gpa: int
    size: int

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def first(self) -> int:
        """First gfn."""
        return self.gpa >> PAGE_SHIFT

    @property
    def stop(self) -> int:
        """End gfn (exclusive)."""
        return (self.gpa + self.size) >> PAGE_SHIFT


class GuestMemoryMap:
    """A guest's RAM regions (module docstring).

    Invariants (``check()``): at least one region; regions sorted by gpa, non-empty,
    disjoint, page aligned, below 2**64; offsets packed: region k's offset is the sum of
    the sizes before it.  Immutable once built.  ``range``/``contains`` cost O(log regions)
    (one bisect; real layouts have one to three regions).
    """

    __slots__ = ("name", "regions", "_starts", "ram_bytes", "top")

    def __init__(self, regions: Iterable[tuple[int, int]], name: str = "custom"):
        spans = [(gpa, size) for gpa, size in regions]
        if not spans:
            raise InvalidArgument("regions", [], "a guest needs at least one RAM region", hex_value=False)
        for index, (gpa, size) in enumerate(spans):
            field = f"regions[{index}]"
            for what, value in (("gpa", gpa), ("size", size)):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise InvalidArgument(f"{field}.{what}", value, "must be an integer", hex_value=False)
            if size <= 0 or not is_page_aligned(size):
                raise InvalidArgument(f"{field}.size", size, "must be a positive multiple of 4 KiB")
            if gpa < 0 or not is_page_aligned(gpa) or gpa + size > ADDRESS_LIMIT:
                raise InvalidArgument(f"{field}.gpa", gpa, "must be 4 KiB aligned and the region below 2**64")
        spans = sorted((int(gpa), int(size)) for gpa, size in spans)     # plain ints below: the fast paths test type
        for (a_gpa, a_size), (b_gpa, _) in zip(spans, spans[1:]):
            if b_gpa < a_gpa + a_size:
                raise InvalidArgument("regions", b_gpa, f"region at {b_gpa:#x} overlaps "
                                      f"[{a_gpa:#x}, {a_gpa + a_size:#x})")
        offset = 0
        built = []
        for gpa, size in spans:
            built.append(Region(gpa, size, offset))
            offset += size
        self.name = name
        self.regions: tuple[Region, ...] = tuple(built)
        self._starts = [r.gpa for r in built]
        self.ram_bytes = offset
        self.top = built[-1].end

    # -- construction --------------------------------------------------------------------

    @classmethod
    def flat(cls, ram: int) -> "GuestMemoryMap":
        return cls([(0, ram)], "flat")

    @classmethod
    def from_layout(cls, name: str, ram: int) -> "GuestMemoryMap":
        """The map a layout gives ``ram`` bytes of RAM (``LAYOUTS``)."""
        entry = LAYOUTS.get(name)
        if entry is None:
            raise InvalidArgument("layout", name, f"unknown (choose from {', '.join(LAYOUTS)})", hex_value=False)
        if not isinstance(ram, int) or isinstance(ram, bool) or ram <= 0 or not is_page_aligned(ram):
            raise InvalidArgument("memory", ram, "must be a positive multiple of 4 KiB")
        return cls(entry.build(ram), name)

    # -- queries ---------------------------------------------------------------------------

    def region_at(self, gpa: int) -> Region | None:
        """The region holding byte ``gpa``, or None (a hole)."""
        index = bisect_right(self._starts, gpa) - 1
        if index >= 0:
            region = self.regions[index]
            if gpa < region.end:
                return region
        return None

    def contains(self, gpa: int, size: int) -> bool:
        """True when every byte of ``[gpa, gpa + size)`` is RAM (adjacent regions count as one)."""
        if size <= 0:
            return False
        index = bisect_right(self._starts, gpa) - 1
        if index < 0:
            return False
        regions, end = self.regions, gpa + size
        while True:
            region = regions[index]
            if gpa >= region.end:
                return False
            if end <= region.end:
                return True
            index += 1
            if index == len(regions) or regions[index].gpa != region.end:
                return False
            gpa = region.end

    def range(self, gpa: int, size: int, field: str = "gpa") -> GpaRange:
        """Validate ``[gpa, gpa + size)``: integers, page aligned, non-empty, inside RAM.
        Raises InvalidArgument naming ``field`` (or ``size``) and, for a hole, the address
        and the regions around it."""
        if (type(gpa) is int and type(size) is int and gpa >= 0 and size > 0
                and not (gpa | size) & _PAGE_MASK and self.contains(gpa, size)):
            return GpaRange(gpa, size)
        for what, value in ((field, gpa), ("size", size)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidArgument(what, value, "must be an integer", hex_value=False)
        if gpa < 0:
            raise InvalidArgument(field, gpa, "must not be negative")
        if size <= 0:
            raise InvalidArgument("size", size, "must be > 0")
        if gpa & _PAGE_MASK:
            raise InvalidArgument(field, gpa, "must be 4 KiB aligned")
        if size & _PAGE_MASK:
            raise InvalidArgument("size", size, "must be a multiple of 4 KiB")
        if self.contains(gpa, size):                 # an int subclass, which the fast path leaves here
            return GpaRange(int(gpa), int(size))
        raise self.outside(gpa, size, field)

    def outside(self, gpa: int, size: int, field: str = "gpa") -> InvalidArgument:
        """The error for a range that is not all RAM: the first byte outside and the
        regions on either side of it."""
        missing = self._first_outside(gpa, gpa + size)
        return InvalidArgument(field, gpa, f"[{gpa:#x}, {gpa + size:#x}) is not all guest RAM: "
                               f"{missing:#x} {self.where(missing)}")

    def _first_outside(self, gpa: int, end: int) -> int:
        pos = gpa
        while pos < end:
            region = self.region_at(pos)
            if region is None:
                return pos
            pos = region.end
        return end

    def where(self, gpa: int) -> str:
        """Words placing an address that is not RAM: in the hole between which regions."""
        index = bisect_right(self._starts, gpa) - 1
        below = self.regions[index] if index >= 0 else None
        above = self.regions[index + 1] if index + 1 < len(self.regions) else None
        if below is None:
            return f"is below the first RAM region {above} ({self.describe()})"
        if above is None:
            return f"is past the last RAM region {below} ({self.describe()})"
        return f"is in the hole between RAM regions {below} and {above}"

    def pieces(self, gpa: int, size: int) -> Iterator[tuple[int, int]] | tuple[tuple[int, int], ...]:
        """``(backing offset, size)`` of each region's part of a range of RAM (trusted: the
        range was validated), ascending."""
        if len(self.regions) == 1:          # the common case, on the conversion path
            region = self.regions[0]
            return ((region.offset + gpa - region.gpa, size),)
        return self._pieces(gpa, size)

    def _pieces(self, gpa: int, size: int) -> Iterator[tuple[int, int]]:
        index = bisect_right(self._starts, gpa) - 1
        end = gpa + size
        regions = self.regions
        while gpa < end:
            region = regions[index]
            stop = min(end, region.end)
            yield region.offset + gpa - region.gpa, stop - gpa
            gpa = stop
            index += 1

    def offset(self, gpa: int) -> int:
        """Backing offset of a RAM address (trusted)."""
        region = self.regions[bisect_right(self._starts, gpa) - 1]
        return region.offset + gpa - region.gpa

    def gpa_of(self, offset: int) -> int:
        """The RAM address backed by ``offset`` (inverse of ``offset``; trusted)."""
        for region in self.regions:
            if offset < region.offset + region.size:
                return region.gpa + offset - region.offset
        raise InvalidArgument("offset", offset, f"past the backings' {self.ram_bytes:#x} bytes")

    def spans_of(self, offset: int, size: int) -> Iterator[tuple[int, int]]:
        """``(gpa, size)`` of the RAM backed by ``[offset, offset + size)`` of the backings,
        split where the regions are not adjacent (the inverse of ``pieces``)."""
        end = offset + size
        for region in self.regions:
            lo, hi = max(offset, region.offset), min(end, region.offset + region.size)
            if lo < hi:
                yield region.gpa + lo - region.offset, hi - lo

    def boundaries(self) -> list[int]:
        """Every region's first and last page address (edges tests like to probe)."""
        out = []
        for region in self.regions:
            out += [region.gpa, region.end - PAGE_SIZE]
        return out

    def describe(self) -> str:
        """``q35: [0x0, 0x80000000) [0x100000000, 0x480000000) (16.0 GiB RAM)``."""
        spans = " ".join(str(r) for r in self.regions)
        return f"{self.name}: {spans} ({format_size(self.ram_bytes)} RAM)"

    def as_json(self) -> list[dict]:
        return [{"gpa": r.gpa, "size": r.size} for r in self.regions]

    def __len__(self) -> int:
        return len(self.regions)

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GuestMemoryMap) and other.regions == self.regions

    def __hash__(self) -> int:
        return hash(self.regions)

    def __repr__(self) -> str:
        return f"GuestMemoryMap({self.describe()})"

    def check(self) -> None:
        """Verify the class invariants; AssertionError naming the broken one."""
        offset, previous_end = 0, -1
        if not self.regions:
            raise AssertionError("GuestMemoryMap: no regions")
        for region in self.regions:
            if region.size <= 0 or (region.gpa | region.size) & _PAGE_MASK or region.end > ADDRESS_LIMIT:
                raise AssertionError(f"GuestMemoryMap: bad region {region}")
            if region.gpa < previous_end:
                raise AssertionError(f"GuestMemoryMap: region {region} overlaps or is out of order")
            if region.offset != offset:
                raise AssertionError(f"GuestMemoryMap: region {region} has offset {region.offset:#x}, "
                                     f"expected {offset:#x}")
            offset += region.size
            previous_end = region.end
        if offset != self.ram_bytes or self.top != self.regions[-1].end:
            raise AssertionError("GuestMemoryMap: ram_bytes or top disagree with the regions")


# -- layouts -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    name: str
    summary: str
    build: Callable[[int], list[tuple[int, int]]]


LAYOUTS: Registry[Layout] = Registry("layout")


def layout(name: str, summary: str):
    """Register ``build(ram) -> [(gpa, size), ...]`` as a named layout."""
    def register(build: Callable[[int], list[tuple[int, int]]]):
        LAYOUTS.add(name, Layout(name, summary, build))
        return build
    return register


def _split_around_hole(ram: int, below_4g: int) -> list[tuple[int, int]]:
    low = min(ram, below_4g)
    regions = [(0, low)]
    if ram > low:
        regions.append((_FOUR_GIB, ram - low))
    return regions


@layout("flat", "all RAM in one region at GPA 0 (the default for generated workloads)")
def _flat(ram: int) -> list[tuple[int, int]]:
    return [(0, ram)]


Q35_SPLIT_THRESHOLD = 0xB000_0000     # hw/i386/pc_q35.c: RAM >= 2.75 GiB splits at 2 GiB


@layout("q35", "QEMU q35: RAM >= 2.75 GiB splits at 2 GiB, else all low (up to 2.75 GiB); "
               "the rest from 4 GiB")
def _q35(ram: int) -> list[tuple[int, int]]:
    lowmem = 2 * GiB if ram >= Q35_SPLIT_THRESHOLD else Q35_SPLIT_THRESHOLD
    return _split_around_hole(ram, lowmem)


@layout("cloud-hypervisor", "Cloud Hypervisor: RAM up to 3 GiB, the rest from 4 GiB "
                            "(arch/src/x86_64/layout.rs)")
def _cloud_hypervisor(ram: int) -> list[tuple[int, int]]:
    return _split_around_hole(ram, 3 * GiB)


def infer_layout(ranges: Iterable[tuple[int, int]], ram: int | None = None) -> GuestMemoryMap:
    """The map a recording's addresses imply: q35 when any range ends above 4 GiB (RAM below
    2 GiB and from 4 GiB up), else flat.  ``ram``, if known, is the guest's RAM size;
    otherwise the smallest RAM the ranges fit in, rounded up to 2 MiB (for q35 at least the
    2.75 GiB from which QEMU splits at 2 GiB)."""
    highest = max((gpa + size for gpa, size in ranges), default=0)
    chunk = 2 * MiB
    if highest > _FOUR_GIB:
        if ram is None:
            high = (highest - _FOUR_GIB + chunk - 1) // chunk * chunk
            ram = max(Q35_SPLIT_THRESHOLD, 2 * GiB + high)
        return GuestMemoryMap.from_layout("q35", ram)
    if ram is None:
        ram = max(chunk, (highest + chunk - 1) // chunk * chunk)
    return GuestMemoryMap.flat(ram)


__all__ = ["GpaRange", "GuestMemoryMap", "LAYOUTS", "Layout", "Q35_SPLIT_THRESHOLD", "Region",
           "infer_layout", "layout"]
