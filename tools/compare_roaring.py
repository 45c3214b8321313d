"""Store v2's hand-written hybrid against pyroaring's BitMap64, side by side.

    .venv/bin/pip install pyroaring && .venv/bin/python tools/compare_roaring.py

Not part of privmem (pyroaring is not a dependency): the measurement behind the decision
recorded in docs/design.md.  ``RoaringAttributes`` is the thinnest ATTR_PRIVATE store on a
64-bit Roaring bitmap that keeps MemoryAttributes' contracts: the same validation, has() as
range cardinalities, ranges() by galloping range_cardinality, nbytes from the library's own
``__sizeof__``.  Roaring does not turn a run container that fragments into a bitmap by
itself: ``run_optimize()`` does, over every container.  So two variants: ``roaring``
optimises after every change (the footprint always in its smaller form) and ``roaring-lazy``
every 4,096 changes and before each footprint (cheaper, but a container may hold up to
16x a bitmap in between).  Word values (the held-memory books' ``side | tag << 2``) would
need one bitmap per bit; only ATTR_PRIVATE is compared.
"""

from __future__ import annotations

import random
import sys
import time

from pyroaring import BitMap64

from privmem.attrs import ATTR_PRIVATE, BitmapAttributes, MemoryAttributes
from privmem.attrs.validate import check_range, check_set, check_window
from privmem.bench.timing import once, rate
from privmem.units import GiB, PAGE_SHIFT, PAGE_SIZE, TiB

P = ATTR_PRIVATE


class RoaringAttributes:
    def __init__(self, optimise_every: int = 1):
        self.supported = P
        self._pages = BitMap64()
        self._every, self._changes = optimise_every, 0

    def get(self, address: int) -> int:
        return P if address >> PAGE_SHIFT in self._pages else 0

    def has(self, address: int, size: int, attributes: int) -> bool:
        first, end = check_range(address, size)
        if attributes == P:
            return self._pages.contains_range(first, end)
        return attributes == 0 and not self._pages.range_cardinality(first, end)

    def set(self, address: int, size: int, attributes: int, flags: int = 0) -> None:
        first, end = check_set(address, size, attributes, flags, self.supported)
        if self.has(address, size, attributes):
            return
        if attributes:
            self._pages.add_range(first, end)
        else:
            self._pages.remove_range(first, end)
        self._changes += 1
        if self._changes % self._every == 0:
            self._pages.run_optimize()

    def load_every_other_page(self, first: int, end: int) -> None:
        self._pages.remove_range(first, end)
        self._pages |= BitMap64(range(first, end, 2))
        self._pages.run_optimize()

    def ranges(self, address: int = 0, size: int | None = None):
        first, end = check_window(address, size)
        pages = self._pages
        while first < end:
            start = next(pages.iter_equal_or_larger(first), None)
            if start is None or start >= end:
                return
            stop, step = start + 1, 1   # [start, stop) is all set; gallop on, halving on a miss
            while stop < end:
                probe = min(stop + step, end)
                if pages.range_cardinality(stop, probe) == probe - stop:
                    stop, step = probe, step * 2
                elif step == 1:
                    break
                else:
                    step //= 2
            yield start << PAGE_SHIFT, (stop - start) << PAGE_SHIFT, P
            first = stop

    @property
    def nbytes(self) -> int:
        if self._every > 1:
            self._pages.run_optimize()
        return sys.getsizeof(self) + sys.getsizeof(self._pages)


def build(store, memory: int, pattern: str) -> None:
    rng = random.Random(1)
    store.set(0, memory, P)
    if pattern == "well-behaved":
        for _ in range(1000):
            size = rng.randint(1, 512)
            store.set(rng.randrange(0, (memory >> PAGE_SHIFT) - size) << PAGE_SHIFT, size << PAGE_SHIFT, 0)
    elif pattern == "every other page (per page)":
        holes = list(range(1, memory >> PAGE_SHIFT, 2))
        rng.shuffle(holes)
        for gfn in holes:
            store.set(gfn << PAGE_SHIFT, PAGE_SIZE, 0)
    elif isinstance(store, RoaringAttributes):  # hostile, bulk
        store.load_every_other_page(0, memory >> PAGE_SHIFT)
    else:
        store.load_bitmap(0, b"\x55" * (memory >> (PAGE_SHIFT + 3)), P)


def measure(name: str, store, memory: int, pattern: str) -> str:
    start = time.perf_counter()
    build(store, memory, pattern)
    build_s = time.perf_counter() - start
    rng = random.Random(2)
    pages = memory >> PAGE_SHIFT
    addresses = [rng.randrange(pages) << PAGE_SHIFT for _ in range(4096)]
    flips = [(g, 0 if store.get(g) else P, store.get(g)) for g in (rng.randrange(pages) << PAGE_SHIFT for _ in range(256))]
    windows = [(rng.randrange(pages - 512) << PAGE_SHIFT, rng.randint(1, 512) << PAGE_SHIFT) for _ in range(1024)]

    def gets(n):
        for a in addresses[:n]:
            store.get(a)

    def sets(n):
        for gpa, other, value in flips[:n // 2]:
            store.set(gpa, PAGE_SIZE, other)
            store.set(gpa, PAGE_SIZE, value)

    def hases(n):
        for gpa, size in windows[:n]:
            store.has(gpa, size, 0)

    get_s = max(rate(gets, len(addresses), 0.02) for _ in range(3))
    set_s = max(rate(sets, 2 * len(flips), 0.02) for _ in range(3))
    has_s = max(rate(hases, len(windows), 0.02) for _ in range(3))
    start = time.perf_counter()
    runs = sum(1 for _ in store.ranges(0, min(memory, GiB)))
    runs_s = runs / (time.perf_counter() - start)
    footprint = store.nbytes
    set_all_ms = once(lambda: store.set(0, memory, P)) * 1e3
    return (f"| {memory // GiB} GiB | {pattern} | {name} | {footprint:,} | {build_s:.3f} | {set_s:,.0f} | {get_s:,.0f} "
            f"| {has_s:,.0f} | {runs_s:,.0f} | {set_all_ms:.3f} |")


def main() -> None:
    print("| guest | pattern | structure | footprint B | build s | set 1 page/s | get/s | has/s | ranges() runs/s "
          "(first GiB) | set all ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    cases = [(GiB, "every other page (per page)"), (TiB, "well-behaved"), (2 * TiB, "well-behaved"),
             (TiB, "hostile (bulk)"), (2 * TiB, "hostile (bulk)")]
    for memory, pattern in cases:
        makers = [("hybrid", MemoryAttributes), ("roaring", RoaringAttributes),
                  ("roaring-lazy", lambda: RoaringAttributes(optimise_every=4096))]
        if memory <= GiB:
            makers.append(("bitmap", lambda: BitmapAttributes(memory)))
        for name, make in makers:
            print(measure(name, make(), memory, pattern), flush=True)


if __name__ == "__main__":
    main()
