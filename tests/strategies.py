"""Hypothesis strategies shared by the property tests: page ranges biased to the edges
the kernel selftests care about (page 0, the last page below 2**64, 2 MiB boundaries)."""

from hypothesis import strategies as st

from privmem import ATTR_PRIVATE, PAGE_SIZE

LAST_GFN = (1 << 52) - 1
TWO_MIB_PAGES = 512

anchor_gfns = st.sampled_from([0, 1, TWO_MIB_PAGES - 1, TWO_MIB_PAGES, TWO_MIB_PAGES + 1,
                               3 * TWO_MIB_PAGES, LAST_GFN - 2 * TWO_MIB_PAGES, LAST_GFN - 8, LAST_GFN])


@st.composite
def page_ranges(draw, max_pages: int = 1200):
    """(gpa, size) with both page aligned, inside 2**64, at most ``max_pages`` pages."""
    anchor = draw(anchor_gfns)
    first = max(0, min(LAST_GFN, anchor + draw(st.integers(-600, 600))))
    pages = draw(st.integers(1, max_pages))
    pages = min(pages, LAST_GFN + 1 - first)
    return first * PAGE_SIZE, pages * PAGE_SIZE


attributes = st.sampled_from([0, ATTR_PRIVATE])
