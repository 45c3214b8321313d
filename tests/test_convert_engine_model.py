"""Stateful property test: tracker + engine + every registered policy against a naive
per-page model.

The model keeps, per page, its state and, in naive books (``NaiveHeld``), which backing
still holds memory the page left behind, as decided by a twin of the policy (built from the
engine's policy's canonical spec) that gets the calls the engine documents, one conversion
at a time.  After every step: attributes agree page by page; only the side a page is not
using is ever held; the engine's books are held to the policy's ``model_property``: equal to
the model's, page for page (``exact-books``), or within the policy's budget
(``budget-bounded``); and the kernel's own accounting of the real memfd backings never shows
memory in a page's unused side that the books do not hold.  100 examples per policy.
"""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from privmem import ConversionEngine, ConversionTracker, MemoryAttributes
from privmem.backing import PrivateBacking, SharedBacking
from privmem.convert import HOLD, POLICIES, make_policy
from privmem.convert.held import HELD_PRIVATE, HELD_SHARED
from privmem.convert.protocol import BUDGET_BOUNDED, EXACT_BOOKS

from .policy_helpers import NaiveHeld, policy_with

PAGES = 64
PAGE = 4096
MEMORY = PAGES * PAGE
BUDGET = 8 * PAGE
PRIVATE, SHARED = "private", "shared"

page_ranges = st.tuples(st.integers(0, PAGES - 1), st.integers(1, 8)).map(
    lambda t: (t[0], min(t[0] + t[1], PAGES)))


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def machine_for(policy_name):
    class EngineAgreesWithModel(RuleBasedStateMachine):
        @initialize()
        def start(self):
            self.shared = SharedBacking.create(MEMORY)
            self.private = PrivateBacking.standin(MEMORY)
            self.clock = Clock()
            policy = policy_with(policy_name, MEMORY, **{"budget": BUDGET, **POLICIES[policy_name].model_params})
            self.engine = ConversionEngine(ConversionTracker(MemoryAttributes()), policy,
                                           self.shared, self.private, clock=self.clock)
            self.twin = make_policy(policy.spec, MEMORY)
            self.model = NaiveHeld(ages=policy.ages)
            self.state = [SHARED] * PAGES

        def teardown(self):
            if hasattr(self, "shared"):
                self.shared.close()
                self.private.close()

        @rule(r=page_ranges, to=st.sampled_from([PRIVATE, SHARED]), touch=st.booleans())
        def convert(self, r, to, touch):
            first, end = r
            conv = self.engine.convert(first * PAGE, (end - first) * PAGE, to == PRIVATE)
            changed = [p for p in range(first, end) if self.state[p] != to]
            got = [p for gpa, size in conv.changed for p in range(gpa // PAGE, (gpa + size) // PAGE)]
            assert got == changed
            for page in changed:
                self.state[page] = to
            if conv.changed:
                self.book(conv)
            self.twin.drain(self.model, self.clock.now)
            if touch:  # the guest uses the side it converted to: that memory gets allocated
                backing = self.private if to == PRIVATE else self.shared
                backing.write(first * PAGE, b"\x01" * ((end - first) * PAGE))

        def book(self, conv):
            """What the engine documents for a conversion that changed pages, page by page."""
            twin, model, now = self.twin, self.model, self.clock.now
            entered, left = (HELD_PRIVATE, HELD_SHARED) if conv.to_private else (HELD_SHARED, HELD_PRIVATE)
            twin.converted(conv, now)
            holds_all = twin.holds(left)
            for gpa, size in conv.changed:
                first, end = gpa // PAGE, (gpa + size) // PAGE
                reclaimed = model.hold(first, end, left, now) if holds_all else model.reclaim(first, end, entered)
                twin.entered(gpa, size, reclaimed)
                if holds_all:
                    continue
                pieces = twin.left_behind(left, gpa, size)
                assert [(g, s) for g, s, _ in pieces] == tile(pieces, gpa, size), "pieces must tile the range"
                for piece_gpa, piece_size, verdict in pieces:
                    if verdict == HOLD:
                        model.hold(piece_gpa // PAGE, (piece_gpa + piece_size) // PAGE, left, now)

        @rule(seconds=st.sampled_from([0.001, 0.03, 0.2]))
        def time_passes(self, seconds):
            self.clock.now += seconds
            self.engine.tick()
            self.twin.drain(self.model, self.clock.now)

        @rule()
        def flush(self):
            self.engine.flush()
            self.twin.drain(self.model, self.clock.now, force=True)

        @invariant()
        def agrees(self):
            if not hasattr(self, "engine"):
                return
            self.engine.check()
            store = self.engine.store
            assert [PRIVATE if store.get(p * PAGE) else SHARED for p in range(PAGES)] == self.state
            books = {}
            for gpa, size, side in self.engine.held.runs():
                for page in range(gpa // PAGE, (gpa + size) // PAGE):
                    books[page] = side
            for page, side in books.items():   # only the side a page is not using can be held
                assert side == (HELD_SHARED if self.state[page] == PRIVATE else HELD_PRIVATE)
            prop = self.engine.policy.model_property
            if prop == EXACT_BOOKS:
                assert books == self.model.sides()
            else:
                assert prop == BUDGET_BOUNDED
                assert self.engine.stats.double_allocated_bytes <= self.engine.policy.budget_bytes
            # The kernel: memory allocated in a page's unused side is always held in the books.
            for backing, side_state in ((self.shared, PRIVATE), (self.private, SHARED)):
                for offset, size in backing.allocated_ranges():
                    for page in range(offset // PAGE, (offset + size) // PAGE):
                        if self.state[page] == side_state:
                            assert page in books, f"page {page} holds unbooked memory"

    EngineAgreesWithModel.__name__ = f"EngineAgreesWithModel_{policy_name}"
    return EngineAgreesWithModel


def tile(pieces, gpa, size):
    """The ``(gpa, size)`` spans pieces covering ``[gpa, gpa + size)`` in order would have."""
    out, cursor = [], gpa
    for _, piece_size, _ in pieces:
        out.append((cursor, piece_size))
        cursor += piece_size
    return out if cursor == gpa + size else None


@pytest.mark.parametrize("policy_name", list(POLICIES))
def test_engine_agrees_with_model(policy_name):
    test_case = machine_for(policy_name).TestCase
    test_case.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
    test_case("runTest").runTest()
