"""Hypothesis strategies shared by the property tests: page ranges biased to the edges
the kernel selftests care about (page 0, the last page below 2**64, 2 MiB boundaries) and
to the store's chunk boundaries, where runs meet dense chunks."""

from hypothesis import strategies as st

from privmem import ATTR_PRIVATE, PAGE_SIZE
from privmem.attrs.ranges import CHUNK_SHIFT

LAST_GFN = (1 << 52) - 1
TWO_MIB_PAGES = 512
CHUNK_PAGES = 1 << CHUNK_SHIFT
# Stores built with a small chunk so that a few dozen single-page changes make a chunk dense:
# 64 pages for ATTR_PRIVATE (a dense chunk is worth 40 bounds), 128 for word values.
SMALL_CHUNK_SHIFT, WORD_CHUNK_SHIFT = 6, 7

anchor_gfns = st.sampled_from([0, 1, TWO_MIB_PAGES - 1, TWO_MIB_PAGES, TWO_MIB_PAGES + 1,
                               3 * TWO_MIB_PAGES, CHUNK_PAGES - 1, CHUNK_PAGES, 3 * CHUNK_PAGES + 1,
                               LAST_GFN - 2 * TWO_MIB_PAGES, LAST_GFN - CHUNK_PAGES, LAST_GFN - 8, LAST_GFN])


@st.composite
def page_ranges(draw, max_pages: int = 1200):
    """(gpa, size) with both page aligned, inside 2**64, at most ``max_pages`` pages."""
    anchor = draw(anchor_gfns)
    first = max(0, min(LAST_GFN, anchor + draw(st.integers(-600, 600))))
    pages = draw(st.integers(1, max_pages))
    pages = min(pages, LAST_GFN + 1 - first)
    return first * PAGE_SIZE, pages * PAGE_SIZE


@st.composite
def chunk_edge_ranges(draw, chunk_shift: int, chunks: int = 4, max_pages: int | None = None):
    """(gpa, size) starting within 3 pages of a chunk boundary (of ``2**chunk_shift`` pages)
    or anywhere in the first ``chunks`` chunks: mostly single pages, else up to three chunks
    (or ``max_pages``)."""
    chunk_pages = 1 << chunk_shift
    max_pages = max_pages or 3 * chunk_pages
    if draw(st.booleans()):
        first = max(0, draw(st.integers(0, chunks)) * chunk_pages + draw(st.integers(-3, 3)))
    else:
        first = draw(st.integers(0, chunks * chunk_pages - 1))
    pages = draw(st.one_of(st.just(1), st.integers(1, 4), st.integers(1, max_pages)))
    return first * PAGE_SIZE, pages * PAGE_SIZE


@st.composite
def bitmaps(draw, chunk_shift: int, chunks: int = 4):
    """(gpa, bits) for ``load_bitmap``: a pattern that makes chunks dense (every other page),
    uniform bytes, or random bytes, from a chunk boundary or any page of the first chunks."""
    chunk_pages = 1 << chunk_shift
    if draw(st.booleans()):
        first = draw(st.integers(0, chunks)) * chunk_pages
    else:
        first = draw(st.integers(0, chunks * chunk_pages - 1))
    length = draw(st.integers(1, 2 * chunk_pages // 8 + 2))
    pattern = draw(st.sampled_from(["alternate", "inverse", "ones", "zeros", "random"]))
    if pattern == "random":
        bits = draw(st.binary(min_size=length, max_size=length))
    else:
        bits = bytes([{"alternate": 0x55, "inverse": 0xAA, "ones": 0xFF, "zeros": 0}[pattern]]) * length
    return first * PAGE_SIZE, bits


ATTRIBUTES = [0, ATTR_PRIVATE]
WORD_ATTRIBUTES = [0, 1, 2, 3, 5, 8, 0x42, 0xFF]   # several planes, values sharing bits
attributes = st.sampled_from(ATTRIBUTES)
