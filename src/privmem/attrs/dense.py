"""A dense chunk: one fixed-size chunk of guest pages kept as a bit plane per attribute bit."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from .bitplane import changes, count, fill, ones_runs, value_runs, window

_SLOT = 8                                  # one list slot or array item
_INT = sys.getsizeof(1 << 20)              # a count, bit or key too large for the small-int cache
# What a store spends per dense chunk besides the chunk itself: its placeholder run (two
# bounds and a value slot), its entry in the chunk dict (slot, hash and key, about 3 slots
# at a dict's usual load, plus the key's int) and its plane table slot.
STORE_ENTRY_BYTES = 3 * _SLOT + 3 * _SLOT + _INT + _SLOT


class DenseChunk:
    """``pages`` consecutive guest pages (a store's chunk), offsets local to the chunk.

    ``planes[i]`` holds one bit per page for the attribute bit ``bits[i]``; a page's attribute
    word is the OR of the bits whose plane has it set, so an ATTR_PRIVATE-only store needs one
    plane (a bitmap) and a word-valued store one per bit its values use in this chunk.  A plane
    reaches only as far as the highest page it ever had set (the bytes past it would all be
    zero), so a guest smaller than a chunk pays for its own pages' bits, not the chunk's.

    Invariants (``check()``):
      1. ``bits`` ascend, each a single bit within the store's ``supported`` mask;
         ``len(planes) == len(bits) == len(ones)``; no plane is longer than ``pages / 8``.
      2. ``ones[i]`` is the number of set bits of ``planes[i]``, and is never 0 (a plane no
         page uses is dropped).
      3. ``transitions`` is the number of offsets ``k`` in ``[1, pages)`` whose page value
         differs from page ``k - 1``'s, and is never 0 (a uniform chunk is a run instead).

    Complexity: ``get`` O(planes); ``assign``, ``uniform`` and ``runs`` O(planes x range / 8)
    machine work and O(planes) Python steps, plus one step per run yielded; ``count`` O(planes
    x pages / 8).  Not thread-safe, like its store.
    """

    __slots__ = ("pages", "bits", "planes", "ones", "transitions")

    def __init__(self, pages: int, bits: list[int], planes: list[bytearray]):
        self.pages = pages
        self.bits = bits
        self.planes = planes
        self.ones = [count(plane, 0, pages) for plane in planes]
        self.transitions = changes([int.from_bytes(plane, "little") for plane in planes], pages).bit_count()

    @classmethod
    def from_runs(cls, pages: int, runs: list[tuple[int, int, int]]) -> DenseChunk:
        """Build from sorted, disjoint ``(lo, hi, value)`` runs of non-zero values (local offsets)."""
        used = 0
        for _, _, value in runs:
            used |= value
        bits = [1 << k for k in range(used.bit_length()) if used >> k & 1]
        planes = [bytearray((runs[-1][1] + 7) >> 3) if runs else bytearray() for _ in bits]
        for lo, hi, value in runs:
            for plane_bit, plane in zip(bits, planes):
                if value & plane_bit:
                    fill(plane, lo, hi, True)
        return cls(pages, bits, planes)

    @classmethod
    def from_bitmap(cls, pages: int, data: bytes, value: int) -> DenseChunk:
        """Pages whose bit is set in ``data`` (at most ``pages / 8`` bytes) have ``value``; the
        rest 0."""
        bits = [1 << k for k in range(value.bit_length()) if value >> k & 1]
        data = bytes(data).rstrip(b"\0")
        return cls(pages, bits, [bytearray(data) for _ in bits])

    @staticmethod
    def footprint(planes: int, plane_bytes: int) -> int:
        """The nbytes a dense chunk of ``planes`` planes of ``plane_bytes`` each adds to its
        store (what its store's form choice weighs): the sizes ``nbytes`` adds up, and the
        store's entry for it."""
        return _CHUNK_BYTES + STORE_ENTRY_BYTES + planes * (plane_bytes + _PLANE_BYTES)


    # -- queries ---------------------------------------------------------------------

    def get(self, page: int) -> int:
        """The attribute word of one page."""
        value, byte, shift = 0, page >> 3, page & 7
        for plane_bit, plane in zip(self.bits, self.planes):
            if byte < len(plane) and plane[byte] >> shift & 1:
                value |= plane_bit
        return value

    def uniform(self, lo: int, hi: int, value: int) -> bool:
        """True when every page of ``[lo, hi)`` has exactly ``value``."""
        bits = self.bits
        if value & ~sum(bits):
            return False
        for plane_bit, plane in zip(bits, self.planes):
            if count(plane, lo, hi) != (hi - lo if value & plane_bit else 0):
                return False
        return True

    def runs(self, lo: int, hi: int, base: int) -> Iterator[tuple[int, int, int]]:
        """Maximal runs of non-zero value inside ``[lo, hi)``, as ``(base + lo', base + hi', value)``."""
        pages, start = hi - lo, base + lo
        if pages == 1:  # a one-page conversion's window: one lookup
            value = self.get(lo)
            if value:
                yield start, start + 1, value
            return
        if len(self.planes) == 1:
            plane_bit = self.bits[0]
            for run_lo, run_hi in ones_runs(window(self.planes[0], lo, hi), pages):
                yield start + run_lo, start + run_hi, plane_bit
            return
        windows = [window(plane, lo, hi) for plane in self.planes]
        for run_lo, run_hi, value in value_runs(windows, self.bits, pages):
            if value:
                yield start + run_lo, start + run_hi, value

    def count(self, value: int) -> int:
        """Pages of the chunk whose attribute word is exactly ``value``."""
        bits, pages = self.bits, self.pages
        if value & ~sum(bits):
            return 0
        if len(bits) == 1:
            return self.ones[0] if value else pages - self.ones[0]
        everything = (1 << pages) - 1
        match = everything
        for plane_bit, plane in zip(bits, self.planes):
            whole = int.from_bytes(plane, "little")
            match &= whole if value & plane_bit else ~whole
        return (match & everything).bit_count()

    def internal_bounds(self) -> int:
        """At least the number of run bounds strictly inside the chunk its runs form would
        store: exact with one plane; with several, a change between two non-zero values
        costs two bounds, so twice the transitions bounds it."""
        return self.transitions if len(self.planes) == 1 else 2 * self.transitions

    @property
    def nbytes(self) -> int:
        """The object, its lists, its planes and its counts."""
        return (sys.getsizeof(self) + sys.getsizeof(self.bits) + sys.getsizeof(self.planes)
                + sys.getsizeof(self.ones) + sum(sys.getsizeof(plane) for plane in self.planes)
                + sum(sys.getsizeof(n) for n in self.ones) + sum(sys.getsizeof(b) for b in self.bits))

    # -- update ----------------------------------------------------------------------

    def assign(self, lo: int, hi: int, value: int) -> None:
        """Give every page of ``[lo, hi)`` the attribute word ``value`` (non-zero bits within
        the store's supported mask), keeping ``ones`` and ``transitions`` exact."""
        planes, pages = self.planes, self.pages
        if hi - lo == 1:
            self._set_page(lo, value)
            return
        left = self.get(lo - 1) if lo else None
        right = self.get(hi) if hi < pages else None
        inner = changes([window(plane, lo, hi) for plane in planes], hi - lo).bit_count() if hi - lo > 1 else 0
        edges = (left is not None and left != self.get(lo)) + (right is not None and right != self.get(hi - 1))
        for plane_bit in (1 << k for k in range(value.bit_length())):
            if value & plane_bit and plane_bit not in self.bits:
                self._add_plane(plane_bit)
        for index, (plane_bit, plane) in enumerate(zip(self.bits, planes)):
            on = bool(value & plane_bit)
            self.ones[index] += (hi - lo if on else 0) - count(plane, lo, hi)
            fill(plane, lo, hi, on)
        if 0 in self.ones:
            self._drop_empty_planes()
        self.transitions += (left is not None and left != value) + (right is not None and right != value) \
            - edges - inner

    def _set_page(self, page: int, value: int) -> None:
        """One page: each neighbour's transition flips when the page's value changes to or from
        the neighbour's; the planes change one bit each."""
        old = self.get(page)
        if old == value:
            return
        for neighbour in (page - 1, page + 1):
            if 0 <= neighbour < self.pages:
                other = self.get(neighbour)
                self.transitions += (other != value) - (other != old)
        if value & ~sum(self.bits):
            for plane_bit in (1 << k for k in range(value.bit_length())):
                if value & plane_bit and plane_bit not in self.bits:
                    self._add_plane(plane_bit)
        emptied = False
        for index, (plane_bit, plane) in enumerate(zip(self.bits, self.planes)):
            if (value ^ old) & plane_bit:
                on = bool(value & plane_bit)
                fill(plane, page, page + 1, on)
                self.ones[index] += 1 if on else -1
                emptied = emptied or not self.ones[index]
        if emptied:
            self._drop_empty_planes()

    def _add_plane(self, plane_bit: int) -> None:
        index = sum(1 for b in self.bits if b < plane_bit)
        self.bits.insert(index, plane_bit)
        self.planes.insert(index, bytearray())
        self.ones.insert(index, 0)

    def _drop_empty_planes(self) -> None:
        keep = [k for k, ones in enumerate(self.ones) if ones]
        self.bits[:] = [self.bits[k] for k in keep]
        self.planes[:] = [self.planes[k] for k in keep]
        self.ones[:] = [self.ones[k] for k in keep]

    # -- invariants ------------------------------------------------------------------

    def check(self, supported: int) -> None:
        """Verify every invariant in the class docstring; raise AssertionError naming the broken one."""
        def fail(why: str) -> None:
            raise AssertionError(f"DenseChunk invariant broken: {why}; bits={self.bits}, ones={self.ones}, "
                                 f"transitions={self.transitions}")

        if not len(self.planes) == len(self.bits) == len(self.ones):
            fail("planes, bits and counts differ in number")
        if self.bits != sorted(self.bits) or len(set(self.bits)) != len(self.bits):
            fail("bits do not ascend")
        for plane_bit, plane, ones in zip(self.bits, self.planes, self.ones):
            if plane_bit.bit_count() != 1 or plane_bit & ~supported:
                fail(f"plane bit {plane_bit:#x} is not one supported bit")
            if len(plane) > self.pages >> 3:
                fail(f"plane of bit {plane_bit:#x} holds {len(plane)} bytes")
            if not ones or ones != count(plane, 0, self.pages):
                fail(f"plane of bit {plane_bit:#x} counts {ones} pages")
        exact = changes([int.from_bytes(plane, "little") for plane in self.planes], self.pages).bit_count()
        if exact != self.transitions or not exact:
            fail(f"{exact} transitions counted")


# Measured from the interpreter, so the form choice follows what nbytes reports.
_CHUNK_BYTES = sys.getsizeof(DenseChunk(8, [], [])) + 3 * sys.getsizeof([]) + _INT
_PLANE_BYTES = sys.getsizeof(bytearray(1)) - 1 + 3 * _SLOT + 2 * _INT
