"""The attribute store: coalesced runs of guest pages, with crowded chunks kept as bit planes."""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator

from ..errors import InvalidArgument
from ..units import ADDRESS_LIMIT, PAGE_SHIFT
from .bitplane import ones_runs, window
from .dense import DenseChunk
from .lookup import SHARED, SINGLE, MIXED, UNKNOWN, LookupCache
from .validate import ATTR_PRIVATE, check_bitmap, check_range, check_set, check_window

_TOTAL_PAGES = ADDRESS_LIMIT >> PAGE_SHIFT
CHUNK_SHIFT = 16        # 2**16 pages (256 MiB) per chunk: a one-plane dense chunk is 8 KiB, a Roaring container
RUN_BOUND_BYTES = 12    # a run costs two 8-byte bounds and one 8-byte value slot (bounds in an array)
# Bounds live in a list of ints while few (indexing and bisect are about twice as fast as an
# array's, which boxes every item it hands out: the conversion path's stores are small) and in
# an array('Q') once many (8 bytes a bound instead of a slot and an int, about 36).
_ARRAY_AT, _LIST_AT = 1024, 512
_TABLE_MIN = 64  # the plane table may always reach this many chunks; beyond, 2 per dense chunk held
_MIN_CHUNK_SHIFT, _MAX_CHUNK_SHIFT = 3, 24


class MemoryAttributes:
    """Per-VM map from guest page ranges to attribute words (shared = 0, PRIVATE = 8).

    The software twin of KVM_SET_MEMORY_ATTRIBUTES' store.  It keeps, per fixed chunk of
    ``2**chunk_shift`` guest pages, whichever form is smaller: coalesced runs, or a bit plane
    per attribute bit (a ``DenseChunk``).  A well-behaved guest (mostly private, a few shared
    holes) costs a few hundred runs; a guest flipping every other page costs one bitmap per
    chunk it touches, never a run per page; uniform chunks stay implicit inside larger runs.

    Representation: ``_bounds = [start0, end0, start1, end1, ...]`` (gfns, half-open runs;
    a list while it holds fewer than ``_ARRAY_AT`` bounds, an ``array('Q')`` from then until
    it shrinks below ``_LIST_AT``) and ``_values[k]`` for run ``k``: an attribute word, or
    the ``DenseChunk`` holding the pages of a run that is exactly one chunk (its placeholder).  ``_dense``
    maps a chunk number to its ``DenseChunk``, so a lookup there needs no bisect.  A lookup
    elsewhere is one ``bisect_right`` on ``_bounds`` (an odd index means the gfn lies inside
    run ``index // 2``), or none when the ``LookupCache`` (built by the first ``get``) knows
    the block uniform.

    Form choice, per chunk (bounds *inside* a chunk are those strictly between its edges; its
    dense cost is ``DenseChunk.footprint`` of a whole chunk, what a dense chunk adds to
    ``nbytes``, for one plane per bit its values use):
      - runs become dense when the chunk's inside bounds cost more than its dense form:
        ``inside * RUN_BOUND_BYTES > dense cost``;
      - dense goes back to runs when its runs would cost at most half of it (the hysteresis
        that keeps a guest at the threshold from converting on every set), and to a plain run
        when it becomes uniform.
    So a chunk in either form costs at most about its dense cost: for an ATTR_PRIVATE store
    the chunk's share of a bitmap plus a few hundred bytes of objects, and for a word-valued
    store about ``planes`` times that, ``planes`` being the bits its values use in the chunk.
    A dense chunk's planes reach only its highest page ever set, so a guest that ends inside a
    chunk (a small one, or one not a multiple of a chunk) pays for its own pages' bits there.

    Invariants (``check()`` verifies each):
      1. ``len(_bounds) == 2 * len(_values)``; the bounds are a list only below
         ``_ARRAY_AT`` of them and an array only from ``_LIST_AT`` on.
      2. Every run is non-empty: ``start < end``; every bound is an int in [0, 2**52].
      3. Runs are sorted and disjoint: ``end_k <= start_k+1``.
      4. Attribute 0 (shared) is never stored: every value is a non-zero word within
         ``supported``, or a ``DenseChunk`` whose run is exactly its chunk and which ``_dense``
         maps that chunk to; ``_dense`` holds nothing else.  In a store whose ``supported``
         mask is one bit, ``_plane_table[c]`` is dense chunk c's one plane, or None if chunk c
         is not dense, for every c below its length (which ends on a plane); else it is empty.
      5. Coalesced: two runs that touch (``end_k == start_k+1``), neither dense, have different
         values, so a uniform range outside dense chunks is always exactly one run.
      6. Every dense chunk keeps its own invariants (``DenseChunk.check``), including not
         being uniform, and ``2 * inside bounds of its runs form * RUN_BOUND_BYTES >`` its
         dense cost; every chunk in runs form has ``inside * RUN_BOUND_BYTES <=`` its dense cost.
      7. Every code the lookup cache knows is true of the store.

    Not thread-safe: the conversion tracker serialises writers.  Complexity: ``get`` O(1) in a
    dense chunk or a cached uniform block, else O(log n); ``has`` O(log n), plus O(range / 8)
    in dense chunks; ``set`` O(log n + k + n) where k runs are replaced and the O(n) term is a
    C-level memmove of the tail, plus O(chunk / 8) when a chunk changes form; ``ranges``
    O(log n + k) plus O(window / 8) in dense chunks; n is at most
    ``dense cost / RUN_BOUND_BYTES`` bounds per chunk touched.
    """

    __slots__ = ("supported", "chunk_shift", "_chunk_mask", "_single", "_plane_bytes", "_dense_threshold",
                 "_bounds", "_values", "_dense", "_plane_table", "_cache")

    def __init__(self, supported: int = ATTR_PRIVATE, *, chunk_shift: int = CHUNK_SHIFT):
        if not isinstance(supported, int) or supported < 0 or supported >= ADDRESS_LIMIT:
            raise InvalidArgument("supported", supported, "must be a 64-bit attribute mask")
        if (not isinstance(chunk_shift, int) or isinstance(chunk_shift, bool)
                or not _MIN_CHUNK_SHIFT <= chunk_shift <= _MAX_CHUNK_SHIFT):
            raise InvalidArgument("chunk_shift", chunk_shift,
                                  f"must be an integer in [{_MIN_CHUNK_SHIFT}, {_MAX_CHUNK_SHIFT}]",
                                  hex_value=False)
        self.supported = supported
        self.chunk_shift = chunk_shift
        self._chunk_mask = (1 << chunk_shift) - 1
        self._single = supported if supported.bit_count() == 1 else None
        self._plane_bytes = (1 << chunk_shift) >> 3
        # no chunk can turn dense with fewer inside bounds than a one-plane dense chunk is worth
        self._dense_threshold = self.dense_cost(1) // RUN_BOUND_BYTES
        self._bounds: list[int] | array = []
        self._values: list = []
        self._dense: dict[int, DenseChunk] = {}
        # one-bit stores: dense chunk c's plane at [c], for the chunks a short list reaches
        self._plane_table: list[bytearray | None] = []
        self._cache: LookupCache | None = None

    def dense_cost(self, planes: int) -> int:
        """The dense cost of a chunk whose values use ``planes`` bits: what a dense chunk of
        whole planes adds to ``nbytes`` (``DenseChunk.footprint``)."""
        return DenseChunk.footprint(planes, self._plane_bytes)

    # -- queries ---------------------------------------------------------------------

    def get(self, address: int) -> int:
        """Attributes of the page holding ``address`` (any byte address).  O(1) in a dense chunk
        or a block the lookup cache knows; O(log n) otherwise."""
        gfn = address >> PAGE_SHIFT
        table = self._plane_table
        if table:  # a one-bit store with dense chunks: the plane itself, no object between
            chunk = gfn >> self.chunk_shift
            if chunk < len(table):
                plane = table[chunk]
                if plane is not None:
                    page = gfn & self._chunk_mask
                    try:
                        return self._single if plane[page >> 3] >> (page & 7) & 1 else 0
                    except IndexError:  # past the plane's highest page ever set
                        return 0
            elif chunk in self._dense:
                return self._dense[chunk].get(gfn & self._chunk_mask)
        elif self._dense:
            found = self._dense.get(gfn >> self.chunk_shift)
            if found is not None:
                return found.get(gfn & self._chunk_mask)
        cache = self._cache or self._new_cache()
        block = gfn >> cache.shift
        if block < cache.blocks:
            code = cache.codes[block]
            value = cache.values[code]
            if value is not None:
                return value
            if code == UNKNOWN:
                cache.codes[block] = self._block_code(block << cache.shift, (block + 1) << cache.shift)
        index = bisect_right(self._bounds, gfn)
        return self._values[index >> 1] if index & 1 else 0

    def _new_cache(self) -> LookupCache:
        limit = LookupCache.max_extent(self.chunk_shift)
        bounds = self._bounds
        below = bisect_left(bounds, limit)
        self._cache = LookupCache(bounds[below - 1] if below else 1, self.chunk_shift, self._single)
        return self._cache

    def _block_code(self, first: int, end: int) -> int:
        """What the lookup cache may know of pages ``[first, end)`` (outside dense chunks)."""
        bounds = self._bounds
        index = bisect_right(bounds, first)
        if index & 1:
            uniform = bounds[index] >= end
            return SINGLE if uniform and self._values[index >> 1] == self._single else MIXED
        return SHARED if index == len(bounds) or bounds[index] >= end else MIXED

    def has(self, address: int, size: int, attributes: int) -> bool:
        """True when every page of the range has exactly ``attributes``.  O(log n), plus
        O(range / 8) where the range crosses dense chunks."""
        first, end = check_range(address, size)
        return self._uniform(first, end, attributes)

    def _uniform(self, first: int, end: int, attributes: int) -> bool:
        """``has`` on trusted gfns."""
        bounds = self._bounds
        index = bisect_right(bounds, first)
        if index & 1:
            stored = self._values[index >> 1]
            if bounds[index] >= end:  # inside one stored run
                if stored.__class__ is int:
                    return stored == attributes
                base = bounds[index - 1]
                return stored.uniform(first - base, end - base, attributes)
        elif index == len(bounds) or bounds[index] >= end:
            return attributes == 0
        if not self._dense:
            return False  # the range crosses a bound of coalesced runs: not uniform
        first_run = next(self.page_runs(first, end), None)
        if not attributes:
            return first_run is None
        return first_run == (first, end, attributes)

    def ranges(self, address: int = 0, size: int | None = None) -> Iterator[tuple[int, int, int]]:
        """Yield ``(address, size, attributes)`` for each maximal run of non-zero attributes
        inside the window, ascending and clipped to it; runs that meet at a chunk boundary
        are one run.  O(log n + k) plus O(window / 8) in dense chunks."""
        first, end = check_window(address, size)
        for lo, hi, value in self.page_runs(first, end):
            yield lo << PAGE_SHIFT, (hi - lo) << PAGE_SHIFT, value

    # -- page-level API: gfn arguments, trusted (validated where they entered) --------

    def page_runs(self, first: int, end: int) -> Iterator[tuple[int, int, int]]:
        """``(first gfn, end gfn, attributes)`` of each maximal non-zero run inside
        ``[first, end)``, clipped.  O(log n + k) plus O(window / 8) in dense chunks."""
        bounds, values = self._bounds, self._values
        run = bisect_right(bounds, first) >> 1
        count = len(values)
        if not self._dense:  # stored runs are maximal already
            while run < count:
                start = bounds[2 * run]
                if start >= end:
                    break
                stop = bounds[2 * run + 1]
                yield (start if start > first else first), (stop if stop < end else end), values[run]
                run += 1
            return
        pending = None  # the run being extended across chunk edges
        while run < count:
            start = bounds[2 * run]
            if start >= end:
                break
            stop = bounds[2 * run + 1]
            lo, hi, value = (start if start > first else first), (stop if stop < end else end), values[run]
            pieces = value.runs(lo - start, hi - start, start) if value.__class__ is DenseChunk else ((lo, hi, value),)
            for piece in pieces:
                if pending is not None:
                    if pending[1] == piece[0] and pending[2] == piece[2]:
                        pending = (pending[0], piece[1], piece[2])
                        continue
                    yield pending
                pending = piece
            run += 1
        if pending is not None:
            yield pending

    def assign_pages(self, first: int, end: int, attributes: int) -> bool:
        """Set ``[first, end)`` to ``attributes`` (already validated); False if nothing changed.
        Complexity as ``set``'s (see the class docstring)."""
        if self._uniform(first, end, attributes):
            return False
        if self._dense:
            self._assign_chunked(first, end, attributes)
        else:
            near = self._assign(first, end, attributes)
            if len(self._bounds) >= self._dense_threshold:  # else no chunk can be crowded enough
                head, tail = first >> self.chunk_shift, (end - 1) >> self.chunk_shift
                self._settle_runs(head, near)
                if tail != head:
                    self._settle_runs(tail, near)
        if self._cache is not None:
            self._changed(first, end)
        return True

    def _changed(self, first: int, end: int) -> None:
        """Pages ``[first, end)`` changed: the lookup cache forgets their blocks, or is dropped
        to be rebuilt to a larger extent by the next get."""
        cache = self._cache
        if end > cache.extent and cache.extent < cache.limit:
            self._cache = None
        else:
            cache.forget(first, end)

    def pages(self, attributes: int) -> int:
        """Number of pages (of the whole 2**64 space) whose attributes equal ``attributes``.
        O(n) plus O(chunk / 8) per dense chunk."""
        bounds, chunks = self._bounds, self._dense.values()
        if attributes == 0:
            stored = sum(bounds[1::2]) - sum(bounds[0::2])
            return _TOTAL_PAGES - stored + sum(chunk.count(0) for chunk in chunks)
        return (sum(bounds[2 * k + 1] - bounds[2 * k] for k, a in enumerate(self._values) if a == attributes)
                + sum(chunk.count(attributes) for chunk in chunks))

    def __len__(self) -> int:
        """Entries stored: runs, a dense chunk counting as one."""
        return len(self._values)

    @property
    def nbytes(self) -> int:
        """Memory held: the bounds, the value list and every distinct int they point to, the
        dense chunks, their dict and plane table, and the lookup cache.  O(n)."""
        seen: set[int] = set()
        bounds = self._bounds
        total = (sys.getsizeof(bounds) + sys.getsizeof(self._values) + sys.getsizeof(self._dense)
                 + sys.getsizeof(self._plane_table))
        for value in (*(bounds if bounds.__class__ is list else ()), *self._values, *self._dense):
            if value.__class__ is int and id(value) not in seen:
                seen.add(id(value))
                total += sys.getsizeof(value)
        total += sum(chunk.nbytes for chunk in self._dense.values())
        return total + (self._cache.nbytes if self._cache is not None else 0)

    # -- update ----------------------------------------------------------------------

    def set(self, address: int, size: int, attributes: int, flags: int = 0) -> None:
        """Give every page of ``[address, address + size)`` the attributes, all or nothing.

        Validates first (see ``validate.check_set``); returns at once, changing nothing,
        when the range already has exactly these attributes (the kernel's no-op path).
        Complexity: see the class docstring.
        """
        first, end = check_set(address, size, attributes, flags, self.supported)
        self.assign_pages(first, end, attributes)

    def load_bitmap(self, address: int, bits: bytes, attributes: int) -> None:
        """Give page ``k`` of ``[address, address + 8 * len(bits) pages)`` the attributes if bit
        ``k`` of ``bits`` is set (bit ``k & 7`` of byte ``k >> 3``, as QEMU's bitmaps), else 0.

        A bitmap import (a migration stream, a bitmap VMM's state) in one call: whole chunks
        are built from their bytes in one pass.  Validated like ``set`` before anything
        changes.  O(n + pages / 8), plus one assign per run in the window's partial chunks.
        """
        first, end = check_bitmap(address, bits, attributes, self.supported)
        self.assign_pages(first, end, 0)
        if not attributes:
            return
        shift, size = self.chunk_shift, 1 << self.chunk_shift
        # realign so that byte k covers pages [origin + 8k, origin + 8k + 8), origin 8-aligned
        origin = first & ~7
        data = bytes(bits) if first == origin else \
            (int.from_bytes(bits, "little") << (first - origin)).to_bytes(len(bits) + 1, "little")

        def edge(lo: int, hi: int) -> None:
            if lo < hi:
                for run_lo, run_hi in ones_runs(window(data, lo - origin, hi - origin), hi - lo):
                    self.assign_pages(lo + run_lo, lo + run_hi, attributes)

        whole_first = min(-(-first >> shift) << shift, end)
        whole_end = max(end >> shift << shift, whole_first)
        entries: list[tuple[int, int, object]] = []
        for base in range(whole_first, whole_end, size):
            offset = (base - origin) >> 3
            for lo, hi, value in self._chunk_entries(base, data[offset:offset + (size >> 3)], attributes):
                if entries and entries[-1][1] == lo and entries[-1][2] == value:
                    entries[-1] = (entries[-1][0], hi, value)
                else:
                    entries.append((lo, hi, value))
        self._insert(entries)
        if self._cache is not None:
            self._changed(whole_first, whole_end)
        edge(first, whole_first)
        edge(whole_end, end)

    def _chunk_entries(self, base: int, data: bytes, attributes: int) -> list[tuple[int, int, object]]:
        """The stored entries for one whole chunk loaded from its bitmap bytes: nothing, one
        run, its runs, or a dense chunk, by the form rule in the class docstring."""
        size = 1 << self.chunk_shift
        chunk = DenseChunk.from_bitmap(size, data, attributes)
        if not chunk.ones or not chunk.ones[0]:
            return []
        if not chunk.transitions:
            return [(base, base + size, attributes)]
        if chunk.transitions * RUN_BOUND_BYTES > self.dense_cost(len(chunk.planes)):
            self._add_dense(base >> self.chunk_shift, chunk)
            return [(base, base + size, chunk)]
        return [(base + lo, base + hi, attributes) for lo, hi in ones_runs(int.from_bytes(data, "little"), size)]

    def _assign(self, first: int, end: int, attributes) -> int:
        """Runs-level assignment of ``[first, end)``: ``attributes`` is a word (0 removes) or
        a ``DenseChunk`` placeholder.  The range never cuts a placeholder run.  Returns the
        index in ``_bounds`` where the change begins."""
        bounds, values = self._bounds, self._values
        # Runs [lo_run, hi_run) overlap or touch [first, end).  Only the first and the last
        # can keep a remainder; the ones between vanish in one slice assignment.
        lo_run = bisect_left(bounds, first) >> 1
        hi_run = (bisect_right(bounds, end) + 1) >> 1
        pieces: list[tuple[int, int, object]] = []
        if lo_run < hi_run and bounds[2 * lo_run] < first:
            pieces.append((bounds[2 * lo_run], first, values[lo_run]))
        if attributes:
            pieces.append((first, end, attributes))
        if lo_run < hi_run and bounds[2 * hi_run - 1] > end:
            pieces.append((end, bounds[2 * hi_run - 1], values[hi_run - 1]))
        new_bounds: list[int] = []
        new_values: list = []
        for start, stop, value in pieces:
            if new_values and new_values[-1] == value and new_bounds[-1] == start:
                new_bounds[-1] = stop
            else:
                new_bounds += (start, stop)
                new_values.append(value)
        if bounds.__class__ is list:
            bounds[2 * lo_run:2 * hi_run] = new_bounds
            if len(bounds) >= _ARRAY_AT:
                self._resize_bounds()
        else:
            bounds[2 * lo_run:2 * hi_run] = array("Q", new_bounds)
            if len(bounds) < _LIST_AT:
                self._resize_bounds()
        values[lo_run:hi_run] = new_values
        return 2 * lo_run

    def _resize_bounds(self) -> None:
        """Move the bounds to the container their number calls for (see ``_ARRAY_AT``)."""
        bounds = self._bounds
        if bounds.__class__ is list and len(bounds) >= _ARRAY_AT:
            self._bounds = array("Q", bounds)
        elif bounds.__class__ is not list and len(bounds) < _LIST_AT:
            self._bounds = bounds.tolist()

    def _insert(self, runs: list[tuple[int, int, object]]) -> None:
        """Splice sorted, coalesced runs into a gap of the store, coalescing at its two edges."""
        if not runs:
            return
        bounds, values = self._bounds, self._values
        at = stop_at = bisect_right(bounds, runs[0][0])
        (lo, _, first_value), (_, hi, last_value) = runs[0], runs[-1]
        if at and bounds[at - 1] == lo and values[(at >> 1) - 1] == first_value:
            at -= 2
            runs = [(bounds[at], runs[0][1], first_value), *runs[1:]]
        if stop_at < len(bounds) and bounds[stop_at] == hi and values[stop_at >> 1] == last_value:
            runs = [*runs[:-1], (runs[-1][0], bounds[stop_at + 1], last_value)]
            stop_at += 2
        new_bounds = [bound for lo, hi, _ in runs for bound in (lo, hi)]
        bounds[at:stop_at] = new_bounds if bounds.__class__ is list else array("Q", new_bounds)
        values[at >> 1:stop_at >> 1] = [value for _, _, value in runs]
        self._resize_bounds()

    def _assign_chunked(self, first: int, end: int, attributes: int) -> None:
        """``_assign`` where dense chunks exist: the parts of the range inside dense chunks it
        covers partly change their planes; the rest changes runs (whole dense chunks in it are
        dropped); then the two chunks at the range's ends settle their form."""
        shift, size = self.chunk_shift, 1 << self.chunk_shift
        head, tail = first >> shift, (end - 1) >> shift
        run_first, run_end = first, end
        head_chunk = self._dense.get(head)
        if head_chunk is not None and (first & self._chunk_mask or end < (head + 1) << shift):
            base = head << shift
            run_first = min(end, base + size)
            head_chunk.assign(first - base, run_first - base, attributes)
        tail_chunk = self._dense.get(tail) if tail != head else None
        if tail_chunk is not None and end & self._chunk_mask:
            run_end = tail << shift
            tail_chunk.assign(0, end - run_end, attributes)
        near = 0
        if run_first < run_end:
            self._drop_dense(run_first, run_end)
            near = self._assign(run_first, run_end, attributes)
        for chunk in (head, tail) if tail != head else (head,):
            dense = self._dense.get(chunk)
            if dense is None:
                self._settle_runs(chunk, near)
            else:
                self._settle_dense(chunk, dense)

    def _drop_dense(self, first: int, end: int) -> None:
        """Forget the dense chunks lying wholly inside ``[first, end)`` (their runs go next)."""
        dense, shift = self._dense, self.chunk_shift
        lo, hi = -(-first >> shift), end >> shift
        chunks = [c for c in range(lo, hi) if c in dense] if hi - lo <= len(dense) else \
            [c for c in dense if lo <= c < hi]
        for chunk in chunks:
            self._drop_dense_chunk(chunk)

    def _add_dense(self, chunk: int, dense: DenseChunk) -> None:
        chunks = self._dense
        chunks[chunk] = dense
        if self._single is None:
            return
        table = self._plane_table  # a one-bit store's dense chunks keep their one plane for life
        if chunk >= len(table):
            if chunk >= max(_TABLE_MIN, 2 * len(chunks)):
                return  # too far for the list to pay: found through the dict
            start = len(table)
            table.extend(chunks[c].planes[0] if c in chunks else None for c in range(start, chunk + 1))
        table[chunk] = dense.planes[0]

    def _drop_dense_chunk(self, chunk: int) -> None:
        del self._dense[chunk]
        table = self._plane_table
        if chunk < len(table):
            table[chunk] = None
            while table and table[-1] is None:
                table.pop()

    def _settle_runs(self, chunk: int, near: int) -> None:
        """A chunk in runs form turns dense if its inside bounds cost more than that form.
        ``near`` is any index into ``_bounds``, best one close to the chunk: when the bounds
        half a threshold either side of it lie outside the chunk, fewer than a threshold lie
        inside, and no search is needed (the usual case)."""
        bounds, shift, threshold = self._bounds, self.chunk_shift, self._dense_threshold
        count = len(bounds)
        if count < threshold:
            return
        base, stop = chunk << shift, (chunk + 1) << shift
        half, near = threshold >> 1, min(near, count - 1)
        if (near < half or bounds[near - half] <= base) and (near + half >= count or bounds[near + half] >= stop):
            return
        lo = bisect_right(bounds, base)
        if lo + threshold >= count or bounds[lo + threshold] >= stop:
            return  # at most a threshold of bounds inside
        hi = bisect_left(bounds, stop, lo)
        inside = hi - lo
        if inside * RUN_BOUND_BYTES <= self.dense_cost(self._planes_used(lo, hi, inside)):
            return
        dense = DenseChunk.from_runs(1 << shift, [(start - base, end - base, value)
                                                  for start, end, value in self.page_runs(base, stop)])
        self._assign(base, stop, dense)
        self._add_dense(chunk, dense)

    def _settle_dense(self, chunk: int, dense: DenseChunk) -> None:
        """A dense chunk becomes one run when uniform, or runs when they would cost at most half."""
        base, size = chunk << self.chunk_shift, 1 << self.chunk_shift
        if not dense.transitions:
            self._drop_dense_chunk(chunk)
            self._assign(base, base + size, dense.get(0))
        elif 2 * dense.internal_bounds() * RUN_BOUND_BYTES <= self.dense_cost(len(dense.planes)):
            runs = list(dense.runs(0, size, base))
            self._drop_dense_chunk(chunk)
            self._assign(base, base + size, 0)
            self._insert(runs)

    def _planes_used(self, lo: int, hi: int, inside: int) -> int:
        """Planes the runs of bounds ``[lo, hi)`` would need (their values' distinct bits);
        stops counting once there are more than a dense form worth ``inside`` bounds holds."""
        fixed = self.dense_cost(0)
        enough = (inside * RUN_BOUND_BYTES - fixed) // (self.dense_cost(1) - fixed)
        used = 0
        for value in self._values[lo >> 1:(hi + 1) >> 1]:
            used |= value
            if used.bit_count() > enough:
                break
        return used.bit_count()

    def clear(self) -> None:
        """Make every page shared again.  O(n)."""
        self._bounds = []
        self._values.clear()
        self._dense.clear()
        self._plane_table.clear()
        self._cache = None

    # -- invariants ------------------------------------------------------------------

    def check(self) -> None:
        """Verify every invariant in the class docstring; raise AssertionError with a dump.
        O(n) plus O(chunk / 8) per dense chunk."""
        bounds, values, shift = self._bounds, self._values, self.chunk_shift

        def fail(why: str) -> None:
            raise AssertionError(f"MemoryAttributes invariant broken: {why}; runs={self.dump()}")

        if len(bounds) != 2 * len(values):
            fail(f"{len(bounds)} bounds for {len(values)} runs")
        if (bounds.__class__ is list and len(bounds) >= _ARRAY_AT) or (bounds.__class__ is not list and len(bounds) < _LIST_AT):
            fail(f"{len(bounds)} bounds kept in a {bounds.__class__.__name__}")
        placeholders = 0
        for k, value in enumerate(values):
            start, stop = bounds[2 * k], bounds[2 * k + 1]
            if not (start.__class__ is int and stop.__class__ is int and 0 <= start < stop <= _TOTAL_PAGES):
                fail(f"run {k} [{start}, {stop}) is empty or out of range")
            if value.__class__ is DenseChunk:
                placeholders += 1
                if start & self._chunk_mask or stop - start != 1 << shift or self._dense.get(start >> shift) is not value:
                    fail(f"dense run {k} [{start}, {stop}) is not its chunk, or not in the chunk dict")
            elif value.__class__ is not int or not value or value & ~self.supported:
                fail(f"run {k} stores attributes {value!r}")
            if k:
                prev_stop = bounds[2 * k - 1]
                if prev_stop > start:
                    fail(f"run {k} overlaps or precedes run {k - 1}")
                if prev_stop == start and values[k - 1] == value:
                    fail(f"runs {k - 1} and {k} touch with equal attributes {value:#x}")
        if placeholders != len(self._dense):
            fail(f"{len(self._dense)} dense chunks for {placeholders} dense runs")
        table = self._plane_table
        if (self._single is None and table) or (table and table[-1] is None) or any(
                plane is not (self._dense[c].planes[0] if c in self._dense else None) for c, plane in enumerate(table)):
            fail("the plane table disagrees with the dense chunks")
        for chunk, dense in self._dense.items():
            dense.check(self.supported)
            if 2 * dense.internal_bounds() * RUN_BOUND_BYTES <= self.dense_cost(len(dense.planes)):
                fail(f"dense chunk {chunk} would take at most half as much as runs")
        inside: dict[int, int] = {}
        for bound in bounds:
            if bound & self._chunk_mask:
                inside[bound >> shift] = inside.get(bound >> shift, 0) + 1
        for chunk, count in inside.items():
            lo = bisect_right(bounds, chunk << shift)
            if count * RUN_BOUND_BYTES > self.dense_cost(self._planes_used(lo, lo + count, count)):
                fail(f"chunk {chunk} keeps {count} bounds, more than its dense form would take")
        if self._cache is not None:
            self._check_cache(fail)

    def _check_cache(self, fail) -> None:
        cache = self._cache
        if len(cache.codes) != cache.blocks:
            fail(f"lookup cache holds {len(cache.codes)} codes for {cache.blocks} blocks")
        for first, end, code in cache.known():
            if code == SHARED and not self._uniform(first, end, 0):
                fail(f"lookup cache calls [{first}, {end}) shared")
            if code == SINGLE and not self._uniform(first, end, self._single):
                fail(f"lookup cache calls [{first}, {end}) uniform {self._single:#x}")
            if code > MIXED:
                fail(f"lookup cache code {code} at [{first}, {end})")

    def dump(self) -> list[tuple[int, int, object]]:
        """Stored entries as ``(first gfn, end gfn, attributes)``, a dense chunk's attributes
        shown as ``'dense:<bits>'``, for failure messages and debugging."""
        return [(self._bounds[2 * k], self._bounds[2 * k + 1],
                 f"dense:{a.bits}" if a.__class__ is DenseChunk else a) for k, a in enumerate(self._values)]

    def __repr__(self) -> str:
        return (f"MemoryAttributes(runs={len(self) - len(self._dense)}, dense_chunks={len(self._dense)}, "
                f"private_pages={self.pages(ATTR_PRIVATE)})")
