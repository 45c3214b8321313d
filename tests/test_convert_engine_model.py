"""Stateful property test: tracker + engine + each policy against a naive per-page model.

The model keeps, per page, its state and which backing (if any) still holds memory the page
left behind.  After every step: attributes agree page by page; the engine's books agree
with the model where the policy is deterministic (never, eager, keep-shared) and stay
within the budget where it is not (lazy, adaptive); and the kernel's own accounting of the
real memfd backings never shows memory in a page's unused side that the books do not hold.
500 examples in all (100 per policy).
"""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from privmem import ConversionEngine, ConversionTracker, MemoryAttributes, make_policy
from privmem.backing import PrivateBacking, SharedBacking
from privmem.convert.held import HELD_PRIVATE, HELD_SHARED

PAGES = 64
PAGE = 4096
MEMORY = PAGES * PAGE
BUDGET = 8 * PAGE
PRIVATE, SHARED = "private", "shared"
SIDE = {SHARED: HELD_SHARED, PRIVATE: HELD_PRIVATE}

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
            self.engine = ConversionEngine(ConversionTracker(MemoryAttributes()),
                                           make_policy(policy_name, MEMORY, budget=BUDGET),
                                           self.shared, self.private, clock=self.clock)
            self.state = [SHARED] * PAGES
            self.held = [None] * PAGES

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
            left = PRIVATE if to == SHARED else SHARED
            for page in changed:
                self.state[page] = to
                if self.held[page] == to:
                    self.held[page] = None  # reclaimed: the memory is in use again
                if policy_name == "never" or (policy_name == "keep-shared" and left == SHARED):
                    self.held[page] = left
                elif policy_name == "eager" or (policy_name == "keep-shared" and left == PRIVATE):
                    self.held[page] = None
            if touch:  # the guest uses the side it converted to: that memory gets allocated
                backing = self.private if to == PRIVATE else self.shared
                backing.write(first * PAGE, b"\x01" * ((end - first) * PAGE))

        @rule(seconds=st.sampled_from([0.001, 0.03, 0.2]))
        def time_passes(self, seconds):
            self.clock.now += seconds
            self.engine.tick()

        @rule()
        def flush(self):
            self.engine.flush()
            if self.engine.policy.drains:
                self.held = [None] * PAGES

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
            if policy_name in ("never", "eager", "keep-shared"):
                assert books == {p: SIDE[s] for p, s in enumerate(self.held) if s}
            else:
                assert self.engine.stats.double_allocated_bytes <= BUDGET
            # The kernel: memory allocated in a page's unused side is always held in the books.
            for backing, side_state in ((self.shared, PRIVATE), (self.private, SHARED)):
                for offset, size in backing.allocated_ranges():
                    for page in range(offset // PAGE, (offset + size) // PAGE):
                        if self.state[page] == side_state:
                            assert page in books, f"page {page} holds unbooked memory"

    EngineAgreesWithModel.__name__ = f"EngineAgreesWithModel_{policy_name}"
    return EngineAgreesWithModel


@pytest.mark.parametrize("policy_name", ["never", "eager", "keep-shared", "lazy", "adaptive"])
def test_engine_agrees_with_model(policy_name):
    test_case = machine_for(policy_name).TestCase
    test_case.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
    test_case("runTest").runTest()
