"""Planning memslot surgery for the memslot-tracking machine, as pure logic.

In that design the memslot layout *is* the conversion state: a private page of RAM has a
guest_memfd slot covering its private-view GPA and no slot over its shared alias; a shared
page the reverse.  KVM cannot resize, split or move a guest_memfd slot (only delete it), a
file offset can be bound once, and a new slot must not overlap a live one (EEXIST), so a
conversion of ``[lo, hi)`` to private is: delete every shared-view slot overlapping it and
re-create the parts outside ``[lo, hi)``; delete the private-view slots touching it and create
one slot for their union with ``[lo, hi)`` (``merge=True``: one slot per maximal run, so the
slot count stays the number of runs; extending a run means delete + create, since a slot
cannot grow in place).  ``merge=False`` creates only the missing pieces and leaves
neighbours alone (fewer ioctls per conversion, more slots).  Conversion to shared is the
mirror image.  Runs never cross a region boundary: each RAM region has its own slots, at its
own offsets in the files.

``SlotLayout`` keeps which slot id maps which run of each view, plans a conversion
(``plan``: deletes first, then creates; slot ids checked available before anything is
issued), and is told what the machine actually did (``deleted`` / ``created``), so a
half-applied plan can be undone from the same books.  The machine issues the ioctls.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from ..errors import Unsupported
from ..memmap import GuestMemoryMap

PRIVATE_VIEW, SHARED_VIEW = "private", "shared"
VIEWS = (PRIVATE_VIEW, SHARED_VIEW)


class SlotRuns:
    """Sorted, disjoint ``[start, end)`` GPA runs of one view (GPA without the shared bit),
    each backed by one memslot id."""

    __slots__ = ("starts", "ends", "slots")

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.slots: list[int] = []

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        return iter(zip(self.starts, self.ends, self.slots))

    def overlapping(self, lo: int, hi: int, touching: bool = False) -> list[tuple[int, int, int]]:
        """Runs meeting ``[lo, hi)``; with ``touching`` also runs that end at lo or start at hi."""
        starts, ends, slots = self.starts, self.ends, self.slots
        i = bisect_left(ends, lo) if touching else bisect_right(ends, lo)
        out = []
        while i < len(starts) and (starts[i] <= hi if touching else starts[i] < hi):
            out.append((starts[i], ends[i], slots[i]))
            i += 1
        return out

    def add(self, start: int, end: int, slot: int) -> None:
        i = bisect_left(self.starts, start)
        if (i > 0 and self.ends[i - 1] > start) or (i < len(self.starts) and self.starts[i] < end):
            raise AssertionError(f"slot run [{start:#x}, {end:#x}) overlaps a live run")
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        self.slots.insert(i, slot)

    def remove(self, start: int) -> None:
        i = bisect_left(self.starts, start)
        if i == len(self.starts) or self.starts[i] != start:
            raise AssertionError(f"no slot run starts at {start:#x}")
        del self.starts[i], self.ends[i], self.slots[i]

    def runs(self) -> list[tuple[int, int]]:
        return list(zip(self.starts, self.ends))


@dataclass
class Plan:
    """What one conversion takes: ``deletes`` ``(view, start, end, slot)`` first, then
    ``creates`` ``(view, start, end)``."""

    deletes: list[tuple[str, int, int, int]] = field(default_factory=list)
    creates: list[tuple[str, int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.deletes or self.creates)


class SlotLayout:
    """The slot books of one machine: ``views[view]`` runs with their slot ids, the free ids,
    ``live`` and ``peak`` slot counts (the ``fixed`` slots the machine keeps, e.g. the
    firmware's, included).

    Invariants (``check(private_runs)``): per region, the two views' runs partition the
    region; the private view's runs are exactly the private pages; with ``merge`` no two
    touching runs of one view lie in one region; slot ids are unique, never a fixed one, and
    below ``max_slots``; ``live`` counts them all.
    """

    def __init__(self, memory_map: GuestMemoryMap, max_slots: int, first_slot: int, fixed: int, merge: bool = True):
        self.memory_map, self.max_slots, self.merge = memory_map, max_slots, merge
        self.views = {PRIVATE_VIEW: SlotRuns(), SHARED_VIEW: SlotRuns()}
        self.first_slot, self.fixed = first_slot, fixed
        self._free: list[int] = []
        self._next = first_slot
        self.live = self.peak = fixed

    # -- planning ------------------------------------------------------------------------

    def initial(self, private_runs: list[tuple[int, int]]) -> Plan:
        """Creates for a machine whose private pages are ``private_runs`` (sorted GPA ranges)."""
        plan = Plan()
        for region in self.memory_map:
            pos = region.gpa
            for start, end in private_runs:
                start, end = max(start, region.gpa), min(end, region.end)
                if start >= end:
                    continue
                if start > pos:
                    plan.creates.append((SHARED_VIEW, pos, start))
                plan.creates.append((PRIVATE_VIEW, start, end))
                pos = end
            if pos < region.end:
                plan.creates.append((SHARED_VIEW, pos, region.end))
        return _coalesced(plan, self.memory_map)

    def plan(self, gpa: int, size: int, to_private: bool) -> Plan:
        """The surgery that makes ``[gpa, gpa + size)`` (RAM) mapped only through the target
        view, region by region.  Raises Unsupported if the slot ids would run out."""
        plan = Plan()
        end = gpa + size
        for region in self.memory_map:
            lo, hi = max(gpa, region.gpa), min(end, region.end)
            if lo < hi:
                self._plan_in(plan, lo, hi, to_private, region.gpa, region.end)
        free = len(self._free) + (self.max_slots - self._next) + len(plan.deletes)
        if len(plan.creates) > free:
            raise Unsupported(f"conversion needs {len(plan.creates)} new memslots, only {free} of "
                              f"KVM_CAP_NR_MEMSLOTS = {self.max_slots} are free")
        return plan

    def _plan_in(self, plan: Plan, lo: int, hi: int, to_private: bool, region_lo: int, region_hi: int) -> None:
        target, other = (PRIVATE_VIEW, SHARED_VIEW) if to_private else (SHARED_VIEW, PRIVATE_VIEW)
        # the other view loses [lo, hi): split its slots, keeping the parts outside
        for start, end, slot in self.views[other].overlapping(lo, hi):
            plan.deletes.append((other, start, end, slot))
            if start < lo:
                plan.creates.append((other, start, lo))
            if end > hi:
                plan.creates.append((other, hi, end))
        runs = self.views[target]
        if self.merge:
            near = [r for r in runs.overlapping(lo, hi, touching=True) if region_lo <= r[0] and r[1] <= region_hi]
            new = (min([lo] + [s for s, _, _ in near]), max([hi] + [e for _, e, _ in near]))
            if not (len(near) == 1 and (near[0][0], near[0][1]) == new):
                plan.deletes += [(target, s, e, slot) for s, e, slot in near]
                plan.creates.append((target, *new))
        else:
            pos = lo
            for start, end, _ in runs.overlapping(lo, hi):
                if start > pos:
                    plan.creates.append((target, pos, start))
                pos = max(pos, end)
            if pos < hi:
                plan.creates.append((target, pos, hi))

    # -- books ---------------------------------------------------------------------------

    def alloc_slot(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        if self._next >= self.max_slots:
            raise Unsupported(f"out of memslots (KVM_CAP_NR_MEMSLOTS = {self.max_slots})")
        slot = self._next
        self._next += 1
        return slot

    def release_slot(self, slot: int) -> None:
        heapq.heappush(self._free, slot)

    def created(self, view: str, start: int, end: int, slot: int) -> None:
        self.views[view].add(start, end, slot)
        self.live += 1
        self.peak = max(self.peak, self.live)

    def deleted(self, view: str, start: int, slot: int) -> None:
        self.views[view].remove(start)
        self.release_slot(slot)
        self.live -= 1

    def layout(self) -> dict[str, list[tuple[int, int]]]:
        return {view: runs.runs() for view, runs in self.views.items()}

    def mapped(self, gpa: int, view: str) -> bool:
        return bool(self.views[view].overlapping(gpa, gpa + 1))

    def check(self, private_runs: list[tuple[int, int]]) -> None:
        """AssertionError unless the invariants in the class docstring hold for a store whose
        private pages are ``private_runs``."""
        pieces = sorted((s, e, view) for view, runs in self.views.items() for s, e, _ in runs)
        expected = self.initial(private_runs).creates
        actual = _coalesced(Plan(creates=[(view, s, e) for s, e, view in pieces]), self.memory_map).creates
        if expected != actual:
            raise AssertionError(f"slot layout disagrees with the store: {actual[:4]}... vs {expected[:4]}...")
        if self.merge and len(actual) != len(pieces):
            raise AssertionError("merge=True but two touching slots in one region map the same view")
        slots = [slot for runs in self.views.values() for _, _, slot in runs]
        if len(set(slots)) != len(slots) or any(s < self.first_slot or s >= self.max_slots for s in slots):
            raise AssertionError("slot ids are not unique, or collide with the machine's fixed slots")
        if self.live != len(slots) + self.fixed:
            raise AssertionError(f"live slots {self.live} != {len(slots) + self.fixed}")


def _coalesced(plan: Plan, memory_map: GuestMemoryMap) -> Plan:
    """Touching creates of one view inside one region merged (runs never cross regions)."""
    out: list[tuple[str, int, int]] = []
    for view, start, end in plan.creates:
        if out and out[-1][0] == view and out[-1][2] == start \
                and memory_map.region_at(start - 1) == memory_map.region_at(start):
            out[-1] = (view, out[-1][1], end)
        else:
            out.append((view, start, end))
    return Plan(plan.deletes, out)


__all__ = ["PRIVATE_VIEW", "Plan", "SHARED_VIEW", "SlotLayout", "SlotRuns", "VIEWS"]
