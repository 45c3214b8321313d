"""HeldMemory against a per-page model of its books: sides, hold tags and fifo ages.

Built on small chunks so that holds of single pages make the books' chunks dense (two
planes without ages, one per tag bit with them) and turn back into runs as holds go.
"""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from privmem.convert.held import HELD_PRIVATE, HELD_SHARED, HeldMemory

from .policy_helpers import merged_runs
from .strategies import WORD_CHUNK_SHIFT, chunk_edge_ranges

PAGE = 4096
SPAN = 4 << WORD_CHUNK_SHIFT
sides = st.sampled_from([HELD_SHARED, HELD_PRIVATE])
ranges = chunk_edge_ranges(WORD_CHUNK_SHIFT, chunks=3, max_pages=160)


def pages_of(runs) -> dict[int, int]:
    return {gpa // PAGE + k: side for gpa, size, side in runs for k in range(size // PAGE)}


def machine_for(track_age: bool):
    class HeldAgreesWithModel(RuleBasedStateMachine):
        @initialize()
        def start(self):
            self.held = HeldMemory(track_age=track_age, chunk_shift=WORD_CHUNK_SHIFT)
            self.pages: dict[int, tuple[int, int]] = {}   # page -> (side, tag)
            self.fifo: list[tuple[float, int, int, int]] = []
            self.tag = 0
            self.now = 0.0

        @rule(r=ranges, side=sides, dt=st.sampled_from([0.0, 0.01, 0.1]))
        def hold(self, r, side, dt):
            gpa, size = r
            self.now += dt
            first, end = gpa // PAGE, (gpa + size) // PAGE
            reclaimed = sum(PAGE for p in range(first, end) if p in self.pages and self.pages[p][0] != side)
            self.tag += 1
            tag = self.tag if track_age else 0
            for page in range(first, end):
                self.pages[page] = (side, tag)
            if track_age:
                self.fifo.append((self.now, first, end, tag))
            assert self.held.hold(gpa, size, side, self.now) == reclaimed

        @rule(chunk=st.integers(0, 2), offset=st.integers(0, 1), side=sides)
        def hold_every_other_page(self, chunk, offset, side):
            """A burst of single-page holds that makes a chunk of the books dense."""
            base = chunk << WORD_CHUNK_SHIFT
            for page in range(base + offset, base + (1 << WORD_CHUNK_SHIFT), 2):
                self.hold((page * PAGE, PAGE), side, 0.0)

        @rule(r=ranges, side=st.one_of(st.none(), sides))
        def release(self, r, side):
            gpa, size = r
            first, end = gpa // PAGE, (gpa + size) // PAGE
            expected = {p: s for p, (s, _) in self.pages.items() if first <= p < end and side in (None, s)}
            for page in expected:
                del self.pages[page]
            assert pages_of(self.held.release(gpa, size, side)) == expected

        @rule(max_pages=st.integers(1, 64), aged=st.booleans())
        def take_oldest(self, max_pages, aged):
            older_than = self.now - 0.05 if aged else None
            taken: dict[int, int] = {}
            if not track_age:
                taken = {p: s for p, (s, _) in self.pages.items()}
                self.pages.clear()
            total = 0
            while track_age and self.fifo and (not taken or total < max_pages * PAGE):
                when, first, end, tag = self.fifo[0]
                if older_than is not None and when >= older_than:
                    break
                self.fifo.pop(0)
                for page in [p for p in range(first, end) if self.pages.get(p, (0, -1))[1] == tag]:
                    taken[page] = self.pages.pop(page)[0]
                    total += PAGE
            assert self.held.take_oldest(max_pages * PAGE, older_than) == merged_runs(taken)

        @rule()
        def take_all(self):
            expected = merged_runs({p: s for p, (s, _) in self.pages.items()})
            self.pages.clear()
            self.fifo.clear()
            assert self.held.take_all() == expected

        @rule()
        def oldest(self):
            live = {tag for _, tag in self.pages.values()}
            first_live = next((when for when, _, _, tag in self.fifo if tag in live), None)
            assert self.held.oldest_time() == (first_live if track_age else None)

        @invariant()
        def books_agree(self):
            self.held.check()
            assert self.held.runs() == merged_runs({p: s for p, (s, _) in self.pages.items()})
            for side in (HELD_SHARED, HELD_PRIVATE):
                assert self.held.held_bytes[side] == PAGE * sum(1 for s, _ in self.pages.values() if s == side)

    HeldAgreesWithModel.__name__ = f"HeldAgreesWithModel_{'aged' if track_age else 'unaged'}"
    return HeldAgreesWithModel


@pytest.mark.parametrize("track_age", [False, True])
def test_held_memory_agrees_with_model(track_age):
    test_case = machine_for(track_age).TestCase
    test_case.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)
    test_case("runTest").runTest()


def test_every_other_page_held_makes_two_plane_chunks_and_drains_back():
    """Without ages, single-page holds alternating sides across a chunk keep its books as two
    bit planes, not a run per page; draining everything leaves nothing behind."""
    held = HeldMemory(track_age=False, chunk_shift=WORD_CHUNK_SHIFT)
    pages = 1 << WORD_CHUNK_SHIFT
    for page in range(pages):
        held.hold(page * PAGE, PAGE, HELD_SHARED if page % 2 else HELD_PRIVATE, 0.0)
    held.check()
    assert held._store._dense and held._store._dense[0].bits == [HELD_SHARED, HELD_PRIVATE]
    assert held.total == pages * PAGE
    assert len(held.take_all()) == pages and held.total == 0 and not held._store._dense
    held.check()
