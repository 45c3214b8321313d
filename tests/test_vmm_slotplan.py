"""The memslot-splitting planner on its own (pure logic, no KVM): the surgery it plans for a
conversion, the books it keeps, and a stateful comparison against a per-page model."""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from privmem.errors import Unsupported
from privmem.memmap import GuestMemoryMap
from privmem.vmm.slotplan import PRIVATE_VIEW, SHARED_VIEW, Plan, SlotLayout

P = 4096
FIRST_SLOT, FIXED = 2, 2          # the machine's own slots (firmware) come first


def apply(layout: SlotLayout, plan: Plan) -> None:
    """What the machine does with a plan: deletes first, then creates, telling the books."""
    for view, start, _, slot in plan.deletes:
        layout.deleted(view, start, slot)
    for view, start, end in plan.creates:
        layout.created(view, start, end, layout.alloc_slot())


def launched(memory_map: GuestMemoryMap, merge: bool = True, max_slots: int = 64) -> SlotLayout:
    layout = SlotLayout(memory_map, max_slots, FIRST_SLOT, FIXED, merge=merge)
    apply(layout, layout.initial([(r.gpa, r.end) for r in memory_map]))
    return layout


def private_runs(pages: set[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for page in sorted(pages):
        if runs and runs[-1][1] == page * P:
            runs[-1] = (runs[-1][0], (page + 1) * P)
        else:
            runs.append((page * P, (page + 1) * P))
    return runs


def test_a_private_guest_starts_with_one_private_slot_per_region():
    layout = launched(GuestMemoryMap([(0, 16 * P), (64 * P, 16 * P)]))
    assert layout.layout() == {PRIVATE_VIEW: [(0, 16 * P), (64 * P, 80 * P)], SHARED_VIEW: []}
    assert layout.live == FIXED + 2


def test_one_page_in_the_middle_of_a_run_takes_four_ioctls_and_flips_back_to_one_slot():
    layout = launched(GuestMemoryMap.flat(16 * P))
    plan = layout.plan(5 * P, P, to_private=False)
    assert [(v, s, e) for v, s, e, _ in plan.deletes] == [(PRIVATE_VIEW, 0, 16 * P)]
    assert sorted(plan.creates) == [(PRIVATE_VIEW, 0, 5 * P), (PRIVATE_VIEW, 6 * P, 16 * P), (SHARED_VIEW, 5 * P, 6 * P)]
    apply(layout, plan)
    layout.check([(0, 5 * P), (6 * P, 16 * P)])
    assert layout.mapped(5 * P, SHARED_VIEW) and not layout.mapped(5 * P, PRIVATE_VIEW)
    back = layout.plan(5 * P, P, to_private=True)
    apply(layout, back)
    layout.check([(0, 16 * P)])
    assert layout.layout() == {PRIVATE_VIEW: [(0, 16 * P)], SHARED_VIEW: []} and layout.live == FIXED + 1
    assert layout.peak == FIXED + 3


def test_a_range_across_a_hole_is_planned_region_by_region():
    layout = launched(GuestMemoryMap([(0, 8 * P), (16 * P, 8 * P)]))
    apply(layout, layout.plan(6 * P, 12 * P, to_private=False))     # [6, 8) and [16, 18): the hole is skipped
    layout.check([(0, 6 * P), (18 * P, 24 * P)])
    assert layout.layout()[SHARED_VIEW] == [(6 * P, 8 * P), (16 * P, 18 * P)]


def test_runs_never_merge_across_a_region_boundary_even_where_regions_touch():
    layout = launched(GuestMemoryMap([(0, 8 * P), (8 * P, 8 * P)]))
    assert layout.layout()[PRIVATE_VIEW] == [(0, 8 * P), (8 * P, 16 * P)]
    apply(layout, layout.plan(7 * P, 2 * P, to_private=False))
    apply(layout, layout.plan(7 * P, 2 * P, to_private=True))
    layout.check([(0, 16 * P)])
    assert layout.layout()[PRIVATE_VIEW] == [(0, 8 * P), (8 * P, 16 * P)]


def test_without_merge_only_the_missing_pieces_are_created():
    layout = launched(GuestMemoryMap.flat(16 * P), merge=False)
    apply(layout, layout.plan(4 * P, 4 * P, to_private=False))
    plan = layout.plan(4 * P, P, to_private=True)
    assert plan.creates[-1] == (PRIVATE_VIEW, 4 * P, 5 * P)
    assert not any(view == PRIVATE_VIEW for view, *_ in plan.deletes)      # neighbours left alone
    apply(layout, plan)
    layout.check([(0, 5 * P), (8 * P, 16 * P)])


def test_running_out_of_slots_is_refused_before_the_books_change():
    layout = launched(GuestMemoryMap.flat(64 * P), max_slots=FIRST_SLOT + 4)
    apply(layout, layout.plan(10 * P, P, to_private=False))         # 3 slots + the fixed ones
    before = layout.layout()
    with pytest.raises(Unsupported, match="KVM_CAP_NR_MEMSLOTS = 6"):
        layout.plan(30 * P, P, to_private=False)
    assert layout.layout() == before
    layout.check([(0, 10 * P), (11 * P, 64 * P)])


def test_a_conversion_that_changes_nothing_plans_nothing():
    layout = launched(GuestMemoryMap.flat(16 * P))
    assert not layout.plan(0, 16 * P, to_private=True)


class PlannerAgainstPages(RuleBasedStateMachine):
    """Random conversions on a two-region guest; after each, the books match a per-page model
    (``check``), every page is mapped by exactly the view of its state, and no slot id is
    shared."""

    REGIONS = [(0, 24 * P), (32 * P, 16 * P)]

    def __init__(self):
        super().__init__()
        self.memory_map = GuestMemoryMap(self.REGIONS)
        self.ram = [page for gpa, size in self.REGIONS for page in range(gpa // P, (gpa + size) // P)]
        self.merge = True
        self.layout = launched(self.memory_map)
        self.private = set(self.ram)

    @rule(merge=st.booleans())
    def restart(self, merge):
        self.merge = merge
        self.layout = launched(self.memory_map, merge=merge)
        self.private = set(self.ram)

    @rule(first=st.integers(0, 47), pages=st.integers(1, 20), to_private=st.booleans())
    def convert(self, first, pages, to_private):
        end = min(first + pages, 48)
        if not any(self.memory_map.region_at(page * P) for page in range(first, end)):
            return                                                     # all hole: the machine refuses it earlier
        apply(self.layout, self.layout.plan(first * P, (end - first) * P, to_private))
        touched = {page for page in range(first, end) if self.memory_map.region_at(page * P)}
        self.private = self.private | touched if to_private else self.private - touched

    @invariant()
    def books_match_the_pages(self):
        self.layout.check(private_runs(self.private))
        for page in self.ram:
            private = page in self.private
            assert self.layout.mapped(page * P, PRIVATE_VIEW) == private
            assert self.layout.mapped(page * P, SHARED_VIEW) == (not private)


PlannerAgainstPages.TestCase.settings = settings(max_examples=150, stateful_step_count=25, deadline=None)
test_planner_against_a_per_page_model = PlannerAgainstPages.TestCase
