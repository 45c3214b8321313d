"""`privmem bench store`: the attribute store against its predecessor, a bitmap, a per-page map
and the kernel's XArray (modelled).

Guests of 1 GiB, 64 GiB, 1 TiB and 2 TiB under three patterns, each from all-private memory:
  well-behaved  1,000 scattered shared holes of 1-512 pages;
  fragmented    every other page of a 1 GiB window made shared, in shuffled order;
  hostile       every other page of the whole guest made shared, in shuffled order.
Structures: ``store`` (MemoryAttributes), ``store-v1`` (the run store before Store v2, kept in
``store_v1.py`` for this comparison), ``bitmap`` and ``pagemap`` (the naive twins; the
per-page map up to 64 GiB), and ``xarray``: the kernel's per-page XArray, modelled
(``xarray_model.py``: one 576-byte node per 64 slots in use at each level, counted from the
guest's bitmap, not run).

Per row: footprint (``nbytes``), entries, build time, single-page set/s (a random page
flipped to the other value and back), get/s (random pages), has/s (random 1-512 page
windows), ranges() over the whole guest, and "set all" (the whole guest made private in
one call, from the built state).  The rates of one guest and pattern are timed in 25
interleaved rounds of one batch each (about a millisecond), best round each, so the host's
other work weighs on all alike and a round it interrupts does not count.

What is not run page by page, so the bench takes a couple of minutes, not hours:
  - hostile beyond 1 GiB: the first GiB is made shared page by page in shuffled order through
    ``set()`` (the build column is that rate, scaled to the guest: "~") and the rest is
    loaded with ``load_bitmap()``; the bench checks that the first GiB's stored form equals a
    bitmap load's (the form rule does not depend on the order).  ``store-v1`` and
    ``pagemap`` are not run there: a run or an entry per page would take tens of GiB.
  - ranges() is timed over a window from page 0, doubled from 1 GiB until it covers the
    guest or takes 0.3 s; a window short of the guest is scaled to it ("~").  The fragmented
    pattern, all in its first GiB, is always timed whole.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..attrs import ATTR_PRIVATE, BitmapAttributes, MemoryAttributes, PageMapAttributes
from ..units import GiB, PAGE_SHIFT, PAGE_SIZE, TiB
from .store_v1 import RunStoreV1
from .timing import once as _once
from .xarray_model import xarray_bytes

GUESTS = {"1GiB": GiB, "64GiB": 64 * GiB, "1TiB": TiB, "2TiB": 2 * TiB}
PATTERNS = ("well-behaved", "fragmented", "hostile")
PAGEMAP_LIMIT = 64 * GiB  # the per-page map needs ~100 B per page: 64 GiB of guest is ~1.7 GB of dict
PER_PAGE_LIMIT = GiB      # made shared page by page up to here; the rest of a hostile guest is loaded
RANGES_BUDGET_S = 0.3
RATE_ROUNDS = 25  # rounds of rate batches, interleaved across structures; the best round counts
KERNEL_SET_S, KERNEL_SET_BYTES = 30.0, 1.9e12  # the kernel's reported time to set a 1.9 TB SNP guest
_PRIVATE_EVEN_PAGES = b"\x55"  # every other page private (pages 0, 2, 4, 6 of each byte's eight)


@dataclass
class StoreResult:
    structure: str
    guest: str
    pattern: str
    memory: int
    footprint_bytes: int
    entries: int
    build_s: float | None = None
    build_scaled: bool = False      # build_s scaled from the page-by-page first GiB
    set_ops_s: float | None = None
    get_ops_s: float | None = None
    has_ops_s: float | None = None
    ranges_s: float | None = None
    ranges_runs: int | None = None
    ranges_scaled: bool = False     # ranges_s / ranges_runs scaled from a window
    set_all_ms: float | None = None


def _bulk(memory: int, pattern: str) -> bool:
    """A hostile guest too large to build page by page: loaded as a bitmap past its first GiB."""
    return pattern == "hostile" and memory > PER_PAGE_LIMIT


def _structures(memory: int, pattern: str, include_pagemap: bool) -> dict[str, Callable[[], object]]:
    bulk = _bulk(memory, pattern)
    makers: dict[str, Callable[[], object]] = {"store": MemoryAttributes}
    if not bulk:
        makers["store-v1"] = RunStoreV1
    makers["bitmap"] = lambda: BitmapAttributes(memory)
    if include_pagemap and memory <= PAGEMAP_LIMIT and not bulk:
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


def _build(store, memory: int, pattern: str, rng: random.Random) -> tuple[float, bool]:
    """Build the pattern; returns (seconds, scaled): the time of the page-by-page part, scaled
    to the whole guest when the rest was loaded in bulk."""
    store.set(0, memory, ATTR_PRIVATE)
    if pattern == "well-behaved":
        holes = _holes(memory, rng)
    else:
        holes = [(gfn << PAGE_SHIFT, PAGE_SIZE) for gfn in range(1, min(memory, GiB) >> PAGE_SHIFT, 2)]
        rng.shuffle(holes)
    bulk = _bulk(memory, pattern)
    if bulk:
        store.load_bitmap(GiB, _PRIVATE_EVEN_PAGES * ((memory - GiB) >> (PAGE_SHIFT + 3)), ATTR_PRIVATE)
    start = time.perf_counter()
    for gpa, size in holes:
        store.set(gpa, size, 0)
    elapsed = time.perf_counter() - start
    if bulk and isinstance(store, MemoryAttributes):
        _check_same_form(store)
    return (elapsed * memory / GiB, True) if bulk else (elapsed, False)


def _check_same_form(store: MemoryAttributes) -> None:
    """The first GiB, made shared page by page, is stored as a bitmap load stores it."""
    reference = MemoryAttributes()
    reference.load_bitmap(0, _PRIVATE_EVEN_PAGES * (GiB >> (PAGE_SHIFT + 3)), ATTR_PRIVATE)
    first_gib = [entry for entry in store.dump() if entry[0] < GiB >> PAGE_SHIFT]
    if first_gib != reference.dump():
        raise AssertionError("hostile build: the page-by-page first GiB is not stored as a bitmap load stores it")


def _time_ranges(store, memory: int, pattern: str) -> tuple[float, int, bool]:
    """ranges() over the guest: (seconds, runs, scaled) from the smallest window from page 0,
    doubled from 1 GiB, that covers the guest or takes RANGES_BUDGET_S.  Only patterns spread
    evenly over the guest are scaled: the fragmented one (all in the first GiB) is timed whole."""
    window = min(GiB, memory)
    while True:
        start = time.perf_counter()
        runs = sum(1 for _ in store.ranges(0, window))
        elapsed = time.perf_counter() - start
        if window >= memory or (elapsed >= RANGES_BUDGET_S and pattern != "fragmented"):
            break
        window = min(2 * window, memory)
    scale = memory / window
    return elapsed * scale, round(runs * scale), window < memory


class _Row:
    """One structure built under one pattern, with the operations its rates time."""

    def __init__(self, structure: str, make, memory: int, pattern: str, seed: int = 1):
        self.structure, self.memory = structure, memory
        rng = random.Random(seed)
        self.store = store = make()
        gc.collect()
        self.build_s, self.build_scaled = _build(store, memory, pattern, rng)
        pages = memory >> PAGE_SHIFT
        self.addresses = [rng.randrange(pages) << PAGE_SHIFT for _ in range(4096)]
        self.windows = []
        for _ in range(1024):
            size = rng.randint(1, 512)
            self.windows.append((rng.randrange(pages - size) << PAGE_SHIFT, size << PAGE_SHIFT))
        self.flips = []
        for _ in range(256):
            gpa = rng.randrange(pages) << PAGE_SHIFT
            value = store.get(gpa)
            self.flips.append((gpa, 0 if value else ATTR_PRIVATE, value))
        self.rates = {"get": 0.0, "has": 0.0, "set": 0.0}

    def do_get(self, n):
        get = self.store.get
        for a in self.addresses[:n]:
            get(a)

    def do_has(self, n):
        has = self.store.has
        for gpa, size in self.windows[:n]:
            has(gpa, size, 0)

    def do_set(self, n):
        set_ = self.store.set
        for gpa, other, value in self.flips[:n // 2]:
            set_(gpa, PAGE_SIZE, other)
            set_(gpa, PAGE_SIZE, value)

    def time_rates(self) -> None:
        """One round: each operation batch once (a millisecond or so); the best round counts."""
        for name, fn, count in (("get", self.do_get, len(self.addresses)), ("has", self.do_has, len(self.windows)),
                                ("set", self.do_set, 2 * len(self.flips))):
            self.rates[name] = max(self.rates[name], count / _once(lambda: fn(count)))


def measure(guest: str, memory: int, pattern: str, include_pagemap: bool = True, progress=None,
            rounds: int = RATE_ROUNDS) -> list[StoreResult]:
    """Every structure under one pattern.  Rates are timed in interleaved rounds, best round
    each, so load from other work on the host moves every structure alike.  The bitmap's row
    comes with the XArray modelled from its bits."""
    rows = []
    for structure, make in _structures(memory, pattern, include_pagemap).items():
        if progress:
            progress(f"{structure} {guest} {pattern}")
        rows.append(_Row(structure, make, memory, pattern))
    for _ in range(rounds):
        for row in rows:
            row.time_rates()
    results = []
    for row in rows:
        store, structure = row.store, row.structure
        ranges_s = ranges_runs = None
        ranges_scaled = False
        # The per-page map past a GiB: its ranges() sorts every entry whatever the window, and
        # setting all of it is a dict entry per page (seconds per 64 GiB).
        timed_whole = structure != "pagemap" or memory <= GiB
        if timed_whole:
            ranges_s, ranges_runs, ranges_scaled = _time_ranges(store, memory, pattern)
        footprint, entries = store.nbytes, len(store) if structure != "bitmap" else 0
        modelled = []
        if structure == "bitmap":
            modelled.append(StoreResult("xarray (model)", guest, pattern, memory, xarray_bytes(store.to_bytes()),
                                        store.pages(ATTR_PRIVATE)))
        set_all_ms = None
        if timed_whole:
            set_all_ms = _once(lambda: store.set(0, memory, ATTR_PRIVATE)) * 1e3
            store.check()
        results += [StoreResult(structure, guest, pattern, memory, footprint, entries, row.build_s, row.build_scaled,
                                row.rates["set"], row.rates["get"], row.rates["has"], ranges_s, ranges_runs,
                                ranges_scaled, set_all_ms), *modelled]
    del rows
    gc.collect()
    return results


def run(guests=tuple(GUESTS), patterns=PATTERNS, include_pagemap=True, progress=None) -> list[StoreResult]:
    results = []
    for guest in guests:
        for pattern in patterns:
            results += measure(guest, GUESTS[guest], pattern, include_pagemap, progress)
    return results


def as_json(results: list[StoreResult]) -> list[dict]:
    return [asdict(r) for r in results]


def _shown_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _short_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value / 1e3:.0f}k" if value >= 1e3 else f"{value:.0f}"


def _vs_bitmap(result: StoreResult, bitmap: StoreResult | None) -> str:
    if bitmap is None:
        return "-"
    ratio = result.footprint_bytes / bitmap.footprint_bytes
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2%}"


def table(results: list[StoreResult], wide: bool = False):
    """The results with each structure's footprint against the bitmap's: every column with
    ``wide``; else one block per guest that fits 80 columns (rates in k/M per second)."""
    from rich.console import Group
    from rich.table import Table

    from ..units import format_size
    from .tables import compact

    bitmap = {(r.guest, r.pattern): r for r in results if r.structure == "bitmap"}
    heading = "privmem bench store: attribute stores side by side (~: scaled, see notes)"
    if wide:
        out = Table(title=heading)
        for column in ("guest", "pattern", "structure", "entries", "footprint", "vs bitmap", "build",
                       "set 1 page/s", "get/s", "has/s", "ranges() all", "set all"):
            out.add_column(column, justify="left" if column in ("guest", "pattern", "structure") else "right")
        for r in results:
            build = "-" if r.build_s is None else f"{'~' if r.build_scaled else ''}{r.build_s:.3f} s"
            ranges = "-" if r.ranges_s is None else \
                f"{'~' if r.ranges_scaled else ''}{r.ranges_s:.3f} s / {r.ranges_runs:,} runs"
            set_all = "-" if r.set_all_ms is None else f"{r.set_all_ms:.3f} ms"
            out.add_row(r.guest, r.pattern, r.structure, f"{r.entries:,}" if r.entries else "-",
                        format_size(r.footprint_bytes), _vs_bitmap(r, bitmap.get((r.guest, r.pattern))), build,
                        _shown_rate(r.set_ops_s), _shown_rate(r.get_ops_s), _shown_rate(r.has_ops_s), ranges,
                        set_all)
        return out
    blocks = []
    for guest in dict.fromkeys(r.guest for r in results):
        block = compact(f"\n{guest} guest", ("pattern", "structure", "footprint", "vs bitmap", "set/s", "get/s",
                                               "set all"))
        for r in (r for r in results if r.guest == guest):
            block.add_row(r.pattern, r.structure, format_size(r.footprint_bytes),
                          _vs_bitmap(r, bitmap.get((r.guest, r.pattern))), _short_rate(r.set_ops_s),
                          _short_rate(r.get_ops_s), "-" if r.set_all_ms is None else f"{r.set_all_ms:.3f} ms")
        blocks.append(block)
    return Group(heading, *blocks, "", "set/s: single-page sets a second; set all: one set over the whole guest; "
                 "--wide: entries, build time, has/s and ranges() too")


def headline(results: list[StoreResult]) -> list[str]:
    """The issue's targets, each stated with the measured figure, then what the rows cannot say."""
    from ..units import format_size

    by = {(r.structure, r.guest, r.pattern): r for r in results}
    lines = []

    def against_bitmap(guest: str, pattern: str, label: str, target: str) -> None:
        store, bitmap = by.get(("store", guest, pattern)), by.get(("bitmap", guest, pattern))
        if store and bitmap:
            ratio = store.footprint_bytes / bitmap.footprint_bytes
            shown = f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3%}"
            lines.append(f"{label}: store {store.footprint_bytes:,} B = {shown} the bitmap's {bitmap.footprint_bytes:,} B "
                         f"(target {target})")

    against_bitmap("1GiB", "fragmented", "every other page of 1 GiB", "<= 2x")
    for guest in ("1TiB", "2TiB"):
        against_bitmap(guest, "hostile", f"hostile {guest}", "<= 2x")
        against_bitmap(guest, "well-behaved", f"well-behaved {guest}", "<= 0.25%")
    for pattern in PATTERNS:
        store = by.get(("store", "2TiB", pattern))
        if store and store.set_all_ms is not None:
            lines.append(f"set all of 2 TiB ({pattern}): {store.set_all_ms:.3f} ms (target < 1 ms for a well-behaved "
                         f"guest; the kernel's XArray: {KERNEL_SET_S:.0f} s reported for {KERNEL_SET_BYTES / 1e12:.1f} TB)")
    gets = [(r.get_ops_s and by[("bitmap", r.guest, r.pattern)].get_ops_s / r.get_ops_s, r) for r in results
            if r.structure == "store" and ("bitmap", r.guest, r.pattern) in by]
    if gets:
        worst, row = max(gets, key=lambda t: t[0])
        lines.append(f"get: store within {worst:.2f}x of the bitmap's on every row (worst: {row.guest} {row.pattern}; "
                     f"target <= 2x)")
    sets = [(by[("store-v1", r.guest, r.pattern)].set_ops_s / r.set_ops_s, r) for r in results
            if r.structure == "store" and ("store-v1", r.guest, r.pattern) in by]
    if sets:
        worst, row = max(sets, key=lambda t: t[0])
        lines.append(f"set of a single page: store within {worst:.2f}x of store-v1's on every row it runs "
                     f"(worst: {row.guest} {row.pattern}; target <= 2x)")
    for guest in ("1TiB", "2TiB"):
        store, xarray = by.get(("store", guest, "hostile")), by.get(("xarray (model)", guest, "hostile"))
        if store and xarray:
            lines.append(f"hostile {guest}: the kernel's XArray (modelled) would hold {format_size(xarray.footprint_bytes)}, "
                         f"{xarray.footprint_bytes / store.footprint_bytes:.0f}x the store's {format_size(store.footprint_bytes)}")
    lines.append(f"notes: hostile guests beyond {format_size(PER_PAGE_LIMIT)} are made shared page by page over their "
                 f"first GiB (build ~ = that time scaled to the guest) and loaded with load_bitmap() beyond; store-v1 "
                 f"and pagemap are not run there.  ranges() ~ = timed over a window from page 0 and scaled.  "
                 f"xarray (model): one 576-B node per 64 slots in use, per level, counted from the bitmap.")
    return lines
