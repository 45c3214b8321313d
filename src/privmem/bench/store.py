"""`privmem bench store`: the run store against a bitmap and a per-page map.

Guests of 1 GiB, 64 GiB and 1 TiB under two patterns:
  well-behaved  all private, then 1,000 scattered shared holes of 1-512 pages;
  fragmented    all private, then every other page of a 1 GiB window made shared,
                in a shuffled order (a badly behaved guest; order matters to a sorted store).
For each structure: footprint, ops/s of set (a hole flipped and healed), get and has
(random 1-512 page ranges), and the time to set one 1 GiB range.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..attrs import ATTR_PRIVATE, BitmapAttributes, MemoryAttributes, PageMapAttributes
from ..units import GiB, PAGE_SHIFT, PAGE_SIZE, TiB
from .timing import once as _once, rate

GUESTS = {"1GiB": GiB, "64GiB": 64 * GiB, "1TiB": TiB}
PATTERNS = ("well-behaved", "fragmented")
PAGEMAP_LIMIT = 64 * GiB  # the per-page map needs ~100 B per page: 64 GiB of guest is ~1.7 GB of dict


@dataclass
class StoreResult:
    structure: str
    guest: str
    pattern: str
    memory: int
    footprint_bytes: int
    entries: int
    build_s: float
    set_ops_s: float
    get_ops_s: float
    has_ops_s: float
    set_1gib_ms: float


def _structures(memory: int, include_pagemap: bool) -> dict[str, Callable[[], object]]:
    makers: dict[str, Callable[[], object]] = {
        "ranges": MemoryAttributes,
        "bitmap": lambda: BitmapAttributes(memory),
    }
    if include_pagemap and memory <= PAGEMAP_LIMIT:
        makers["pagemap"] = PageMapAttributes
    return makers


def _holes(memory: int, rng: random.Random) -> list[tuple[int, int]]:
    pages = memory >> PAGE_SHIFT
    out = []
    for _ in range(1000):
        size = rng.randint(1, 512)
        first = rng.randrange(0, pages - size)
        out.append((first << PAGE_SHIFT, size << PAGE_SHIFT))
    return out


def _build(store, memory: int, pattern: str, rng: random.Random) -> list[tuple[int, int]]:
    store.set(0, memory, ATTR_PRIVATE)
    if pattern == "well-behaved":
        holes = _holes(memory, rng)
    else:
        holes = [(gfn << PAGE_SHIFT, PAGE_SIZE) for gfn in range(1, GiB >> PAGE_SHIFT, 2)]
        rng.shuffle(holes)
    for gpa, size in holes:
        store.set(gpa, size, 0)
    return holes


def measure(structure: str, make, guest: str, memory: int, pattern: str, seed: int = 1) -> StoreResult:
    rng = random.Random(seed)
    store = make()
    gc.collect()
    start = time.perf_counter()
    holes = _build(store, memory, pattern, rng)
    build_s = time.perf_counter() - start

    pages = memory >> PAGE_SHIFT
    addresses = [rng.randrange(pages) << PAGE_SHIFT for _ in range(4096)]
    windows = []
    for _ in range(1024):
        size = rng.randint(1, 512)
        windows.append((rng.randrange(pages - size) << PAGE_SHIFT, size << PAGE_SHIFT))
    flips = [holes[rng.randrange(len(holes))] for _ in range(256)]

    def do_get(n):
        get = store.get
        for a in addresses[:n]:
            get(a)

    def do_has(n):
        has = store.has
        for gpa, size in windows[:n]:
            has(gpa, size, 0)

    def do_set(n):
        st = store.set
        for gpa, size in flips[:n // 2]:
            st(gpa, size, ATTR_PRIVATE)
            st(gpa, size, 0)

    get_ops = rate(do_get, len(addresses))
    has_ops = rate(do_has, len(windows))
    set_ops = rate(do_set, 2 * len(flips))
    footprint, entries = store.nbytes, len(store) if structure != "bitmap" else 0

    # Once each way from the built state: the first call pays for every run it replaces.
    set_1gib_ms = max(_once(lambda: store.set(0, GiB, 0)), _once(lambda: store.set(0, GiB, ATTR_PRIVATE))) * 1e3
    return StoreResult(structure, guest, pattern, memory, footprint, entries, build_s,
                       set_ops, get_ops, has_ops, set_1gib_ms)


def run(guests=tuple(GUESTS), patterns=PATTERNS, include_pagemap=True, progress=None) -> list[StoreResult]:
    results = []
    for guest in guests:
        memory = GUESTS[guest]
        for pattern in patterns:
            for structure, make in _structures(memory, include_pagemap).items():
                if progress:
                    progress(f"{structure} {guest} {pattern}")
                results.append(measure(structure, make, guest, memory, pattern))
    return results


def as_json(results: list[StoreResult]) -> list[dict]:
    return [asdict(r) for r in results]


def table(results: list[StoreResult]):
    """A rich table of the results, with each structure's footprint against the bitmap's."""
    from rich.table import Table

    from ..units import format_size

    bitmap = {(r.guest, r.pattern): r for r in results if r.structure == "bitmap"}
    out = Table(title="privmem bench store: attribute stores side by side")
    for column in ("guest", "pattern", "structure", "entries", "footprint", "vs bitmap",
                   "set/s", "get/s", "has/s", "set 1 GiB"):
        out.add_column(column, justify="left" if column in ("guest", "pattern", "structure") else "right")
    for r in results:
        ref = bitmap.get((r.guest, r.pattern))
        ratio = f"{r.footprint_bytes / ref.footprint_bytes:.2%}" if ref else "-"
        out.add_row(r.guest, r.pattern, r.structure, f"{r.entries:,}" if r.entries else "-",
                    format_size(r.footprint_bytes), ratio, f"{r.set_ops_s:,.0f}", f"{r.get_ops_s:,.0f}",
                    f"{r.has_ops_s:,.0f}", f"{r.set_1gib_ms:.3f} ms")
    return out


def headline(results: list[StoreResult]) -> list[str]:
    """The issue's targets, each stated with the measured figure."""
    lines = []
    by = {(r.structure, r.guest, r.pattern): r for r in results}
    for guest in GUESTS:
        ranges, bitmap = by.get(("ranges", guest, "well-behaved")), by.get(("bitmap", guest, "well-behaved"))
        if not (ranges and bitmap):
            continue
        lines.append(f"{guest} well-behaved: footprint {ranges.footprint_bytes:,} B = "
                     f"{ranges.footprint_bytes / bitmap.footprint_bytes:.2%} of the bitmap's; "
                     f"set 1 GiB {ranges.set_1gib_ms:.3f} ms; get {bitmap.get_ops_s / ranges.get_ops_s:.2f}x "
                     f"slower than the bitmap's")
        pagemap = by.get(("pagemap", guest, "well-behaved"))
        if pagemap:
            lines.append(f"{guest} well-behaved per-page map: footprint {pagemap.footprint_bytes:,} B, "
                         f"set 1 GiB {pagemap.set_1gib_ms:.1f} ms, has {ranges.has_ops_s / pagemap.has_ops_s:.1f}x "
                         f"slower than the run store")
    return lines
