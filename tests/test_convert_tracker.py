"""ConversionTracker: pending requests, atomic commit, exact change records."""

import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from privmem import (ATTR_PRIVATE, PAGE_SIZE, Busy, ConversionTracker, InvalidArgument, InvalidState,
                     MemoryAttributes)
from privmem.attrs import PageMapAttributes

from .strategies import page_ranges

P = ATTR_PRIVATE


def test_request_complete_reports_exactly_what_changed():
    tracker = ConversionTracker(MemoryAttributes())
    tracker.store.set(4 * PAGE_SIZE, 2 * PAGE_SIZE, P)
    conv = tracker.complete(tracker.request(0, 8 * PAGE_SIZE, private=True))
    assert conv.to_private and conv.changed == ((0, 4 * PAGE_SIZE), (6 * PAGE_SIZE, 2 * PAGE_SIZE))
    assert conv.pages_changed == 6 and tracker.store.has(0, 8 * PAGE_SIZE, P)
    back = tracker.convert(2 * PAGE_SIZE, PAGE_SIZE, private=False)
    assert back.changed == ((2 * PAGE_SIZE, PAGE_SIZE),)
    again = tracker.convert(2 * PAGE_SIZE, PAGE_SIZE, private=False)
    assert again.changed == ()


def test_overlap_is_busy_and_abort_changes_nothing():
    tracker = ConversionTracker(MemoryAttributes())
    first = tracker.request(0, 4 * PAGE_SIZE, True, vcpu=0)
    with pytest.raises(Busy, match="vCPU 0"):
        tracker.request(3 * PAGE_SIZE, 4 * PAGE_SIZE, True, vcpu=1)
    assert tracker.pending(3 * PAGE_SIZE, PAGE_SIZE) and not tracker.pending(4 * PAGE_SIZE, PAGE_SIZE)
    disjoint = tracker.request(4 * PAGE_SIZE, PAGE_SIZE, True, vcpu=1)
    tracker.abort(first)
    assert not tracker.pending(0, 4 * PAGE_SIZE) and list(tracker.store.ranges()) == []
    tracker.complete(disjoint)
    with pytest.raises(InvalidState, match="already completed or aborted"):
        tracker.complete(disjoint)
    with pytest.raises(InvalidState):
        tracker.abort(first)
    tracker.check()


def test_bad_request_names_the_field_and_registers_nothing():
    tracker = ConversionTracker(MemoryAttributes())
    with pytest.raises(InvalidArgument, match="address=0x10"):
        tracker.request(16, PAGE_SIZE, True)
    assert tracker.in_flight() == []


def test_concurrent_vcpus_on_disjoint_windows_match_a_sequential_replay():
    tracker = ConversionTracker(MemoryAttributes())
    committed = []

    def vcpu(index):
        base = index * 64 * PAGE_SIZE
        for k in range(300):
            gpa = base + (k * 7 % 60) * PAGE_SIZE
            committed.append(tracker.convert(gpa, (k % 4 + 1) * PAGE_SIZE, k % 3 != 0, vcpu=index))

    threads = [threading.Thread(target=vcpu, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    replay = MemoryAttributes()
    for conv in sorted(committed, key=lambda c: c.request.id):
        replay.set(conv.request.gpa, conv.request.size, conv.request.attributes)
    assert list(replay.ranges()) == list(tracker.store.ranges())


class TrackerAgreesWithModel(RuleBasedStateMachine):
    """Requests, completions and aborts in any order against a per-page model."""

    requests = Bundle("requests")

    @initialize()
    def start(self):
        self.tracker = ConversionTracker(MemoryAttributes())
        self.model = PageMapAttributes()
        self.live: dict[int, tuple[int, int]] = {}

    @rule(target=requests, r=page_ranges(max_pages=700), private=st.booleans(), vcpu=st.integers(0, 7))
    def request(self, r, private, vcpu):
        gpa, size = r
        overlaps = any(g < gpa + size and gpa < g + s for g, s in self.live.values())
        if overlaps:
            with pytest.raises(Busy):
                self.tracker.request(gpa, size, private, vcpu)
            return None
        req = self.tracker.request(gpa, size, private, vcpu)
        self.live[req.id] = (gpa, size)
        return req

    @rule(req=consumes(requests))
    def complete(self, req):
        if req is None:
            return
        del self.live[req.id]
        target = req.attributes
        expect = [gfn for gfn in range(req.gpa // PAGE_SIZE, req.end // PAGE_SIZE)
                  if self.model.get(gfn * PAGE_SIZE) != target]
        conv = self.tracker.complete(req)
        got = [gfn for gpa, size in conv.changed for gfn in range(gpa // PAGE_SIZE, (gpa + size) // PAGE_SIZE)]
        assert got == expect
        self.model.set(req.gpa, req.size, target)

    @rule(req=consumes(requests))
    def abort(self, req):
        if req is None:
            return
        del self.live[req.id]
        self.tracker.abort(req)

    @invariant()
    def agrees(self):
        self.tracker.check()
        assert list(self.tracker.store.ranges()) == list(self.model.ranges())
        assert {r.id for r in self.tracker.in_flight()} == set(self.live)


TestTrackerAgreesWithModel = TrackerAgreesWithModel.TestCase
TestTrackerAgreesWithModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
