"""``measured_ranges`` (cachestat counts + bisection + mincore hint) against the naive
page-at-a-time twin: on pure page sets, and on a real memfd after random operations."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from privmem.backing import PrivateBacking, SharedBacking
from privmem.backing.accounting import cachestat_pages, measured_ranges, naive_ranges
from privmem.units import PAGE_SIZE

PS = PAGE_SIZE
NPAGES = 96


def counter(pages: set[int], calls: list | None = None):
    def count(offset: int, size: int) -> int:
        if calls is not None:
            calls.append((offset, size))
        first = offset // PS
        return sum(1 for p in range(first, first + size // PS) if p in pages)
    return count


def page_set_to_ranges(pages: set[int], offset_pages: int = 0, npages: int = NPAGES):
    out = []
    for p in range(offset_pages, offset_pages + npages):
        if p in pages:
            if out and out[-1][0] + out[-1][1] == p * PS:
                out[-1] = (out[-1][0], out[-1][1] + PS)
            else:
                out.append((p * PS, PS))
    return out


@settings(max_examples=300, deadline=None)
@given(allocated=st.sets(st.integers(0, NPAGES - 1)), data=st.data())
def test_measured_ranges_equal_naive_for_any_subset_hint(allocated, data):
    """The hint is a lower bound (mincore never sees more than cachestat counts)."""
    faulted = data.draw(st.sets(st.sampled_from(sorted(allocated))) if allocated else st.just(set()))
    window_first = data.draw(st.integers(0, NPAGES - 1))
    window_pages = data.draw(st.integers(1, NPAGES - window_first))
    hint = bytes(1 if window_first + i in faulted else 0 for i in range(window_pages))
    use_hint = data.draw(st.booleans())
    count = counter(allocated)
    got = measured_ranges(count, window_first * PS, window_pages * PS, hint if use_hint else None)
    assert got == naive_ranges(count, window_first * PS, window_pages * PS)
    assert got == page_set_to_ranges(allocated, window_first, window_pages)


def test_exact_hint_costs_one_count_and_lazy_hint_is_skipped_when_empty_or_full():
    allocated = {1, 2, 3, 40, 77}
    calls: list = []
    hint = bytes(1 if p in allocated else 0 for p in range(NPAGES))
    assert measured_ranges(counter(allocated, calls), 0, NPAGES * PS, hint) == page_set_to_ranges(allocated)
    assert len(calls) == 1

    def never():
        raise AssertionError("hint evaluated although the window is empty or full")
    assert measured_ranges(counter(set()), 0, NPAGES * PS, never) == []
    assert measured_ranges(counter(set(range(NPAGES))), 0, NPAGES * PS, never) == [(0, NPAGES * PS)]


def test_mincore_reserved_bits_are_ignored():
    allocated = {5}
    hint = bytes(0xFE if p != 5 else 0x03 for p in range(NPAGES))    # only bit 0 counts
    assert measured_ranges(counter(allocated), 0, NPAGES * PS, hint) == [(5 * PS, PS)]


OPS = st.lists(st.tuples(st.sampled_from(["write", "allocate", "discard"]),
                         st.integers(0, NPAGES - 1), st.integers(1, 12)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(ops=OPS, private=st.booleans())
def test_real_memfd_ranges_agree_with_per_page_cachestat(ops, private):
    make = PrivateBacking.standin if private else SharedBacking.create
    with make(NPAGES * PS) as b:
        for op, first, pages in ops:
            pages = min(pages, NPAGES - first)
            if op == "write":
                b.fill(first * PS, pages * PS, 0x5A)
            elif op == "allocate":
                b.allocate(first * PS, pages * PS)
            else:
                b.discard(first * PS, pages * PS)
        expected = naive_ranges(lambda o, s: cachestat_pages(b.fd, o, s), 0, b.size)
        assert b.allocated_ranges() == expected
        assert b.allocated_bytes() == sum(size for _, size in expected)
