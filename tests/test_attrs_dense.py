"""Bit planes and dense chunks against naive per-page lists."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmem.attrs import bitplane
from privmem.attrs.dense import DenseChunk

PAGES = 64
BITS = [1, 2, 8, 0x40]


def naive_runs(values, lo, hi):
    """Maximal (lo, hi, value) runs of a list of page values, zeros included."""
    runs = []
    for page in range(lo, hi):
        if runs and runs[-1][2] == values[page]:
            runs[-1][1] = page + 1
        else:
            runs.append([page, page + 1, values[page]])
    return [tuple(run) for run in runs]


windows = st.tuples(st.integers(0, PAGES - 1), st.integers(1, PAGES)).map(
    lambda t: (t[0], min(PAGES, t[0] + t[1])))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=PAGES // 8, max_size=PAGES // 8), window=windows,
       fill=st.tuples(windows, st.booleans()))
def test_bitplane_helpers_agree_with_a_list_of_bits(data, window, fill):
    plane = bytearray(data)
    bits = [plane[p >> 3] >> (p & 7) & 1 for p in range(PAGES)]
    lo, hi = window
    assert bitplane.window(plane, lo, hi) == sum(bits[p] << (p - lo) for p in range(lo, hi))
    assert bitplane.count(plane, lo, hi) == sum(bits[lo:hi])
    assert [bitplane.bit(plane, p) for p in range(PAGES)] == bits
    expected = [(a - lo, b - lo) for a, b, v in naive_runs(bits, lo, hi) if v]
    assert list(bitplane.ones_runs(bitplane.window(plane, lo, hi), hi - lo)) == expected
    (fill_lo, fill_hi), on = fill
    bitplane.fill(plane, fill_lo, fill_hi, on)
    bits[fill_lo:fill_hi] = [int(on)] * (fill_hi - fill_lo)
    assert [bitplane.bit(plane, p) for p in range(PAGES)] == bits


@settings(max_examples=150, deadline=None)
@given(planes=st.lists(st.binary(min_size=PAGES // 8, max_size=PAGES // 8), min_size=1, max_size=3),
       window=windows)
def test_value_runs_agree_with_per_page_values(planes, window):
    values = [sum(BITS[i] for i, plane in enumerate(planes) if plane[p >> 3] >> (p & 7) & 1)
              for p in range(PAGES)]
    lo, hi = window
    windows_ = [bitplane.window(bytearray(plane), lo, hi) for plane in planes]
    got = [(a + lo, b + lo, v) for a, b, v in bitplane.value_runs(windows_, BITS[:len(planes)], hi - lo)]
    assert got == naive_runs(values, lo, hi)


class NaiveChunk:
    def __init__(self, values):
        self.values = list(values)

    def assign(self, lo, hi, value):
        self.values[lo:hi] = [value] * (hi - lo)


chunk_values = st.sampled_from([0, 1, 2, 3, 8, 9, 0x41])


@settings(max_examples=150, deadline=None)
@given(start=st.lists(st.tuples(windows, chunk_values), min_size=1, max_size=6),
       ops=st.lists(st.tuples(windows, chunk_values), max_size=30), probe=windows)
def test_dense_chunk_agrees_with_a_list_of_values(start, ops, probe):
    naive = NaiveChunk([0] * PAGES)
    for (lo, hi), value in start:
        naive.assign(lo, hi, value)
    if len(set(naive.values)) == 1:
        naive.assign(0, 1, 1 if naive.values[0] != 1 else 2)  # a dense chunk is never uniform
    chunk = DenseChunk.from_runs(PAGES, [(a, b, v) for a, b, v in naive_runs(naive.values, 0, PAGES) if v])
    chunk.check(0xFF)
    for (lo, hi), value in ops:
        chunk.assign(lo, hi, value)
        naive.assign(lo, hi, value)
        assert [chunk.get(p) for p in range(PAGES)] == naive.values
        if len(set(naive.values)) > 1:
            chunk.check(0xFF)
        else:
            assert chunk.transitions == 0
    lo, hi = probe
    expected = [(a + 100, b + 100, v) for a, b, v in naive_runs(naive.values, lo, hi) if v]
    assert list(chunk.runs(lo, hi, 100)) == expected
    for value in (0, 1, 2, 3, 8, 9, 0x41, 4):
        assert chunk.uniform(lo, hi, value) == all(v == value for v in naive.values[lo:hi])
        assert chunk.count(value) == naive.values.count(value)
    bounds = sum(1 for a, b, v in naive_runs(naive.values, 0, PAGES) if v for edge in (a, b) if 0 < edge < PAGES)
    assert bounds <= chunk.internal_bounds()


def test_dense_chunk_from_bitmap_holds_one_plane_per_bit():
    chunk = DenseChunk.from_bitmap(PAGES, b"\x55" * (PAGES // 8), 0x9)
    assert chunk.bits == [1, 8] and chunk.ones == [32, 32] and chunk.transitions == PAGES - 1
    assert chunk.get(0) == 9 and chunk.get(1) == 0
    chunk.check(0xF)
    with pytest.raises(AssertionError, match="supported"):
        chunk.check(0x1)
