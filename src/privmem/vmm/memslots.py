"""``MemslotMachine``: conversions as memslot surgery -- the design the seed thread rejected.

Sean Christopherson (seed thread): "My original proposal was to have explicit shared vs.
private memslots, and punch holes in KVM's memslots on conversion, but due to the way KVM
(and userspace) handle memslot updates, conversions would be painfully slow."  This module
builds that proposal on top of the ordinary :class:`~privmem.vmm.machine.Machine`, for
contrast (``privmem run --tracking memslots``).

Layout.  The guest reaches page P privately at GPA P (guest_memfd) and shared at
P | shared_bit (memfd).  Here *the memslot layout encodes the state* of workload memory
``[reserved_bytes, memory)``:

* a private page has a guest_memfd slot covering P and **no** slot covering P | shared_bit;
* a shared page has a memfd slot covering P | shared_bit and **no** slot covering P.

So a guest access through the wrong view finds no memslot and KVM reports an MMIO exit
(the Machine answers reads with all-ones and drops writes, and counts them).  The low
``[0, reserved_bytes)`` (player code and stacks through the private view, comm pages and op
lists through the shared view) keeps both views mapped: slot 0 (SLOT_PRIVATE) shrinks to the
reserved bytes of the guest_memfd, slot 1 (SLOT_SHARED) to the reserved bytes of the memfd.
Conversions that touch the reserved bytes change only the store there.

Slots are views of the files, never copies: a guest_memfd slot for ``[a, b)`` binds file
offsets ``[a, b)`` with ``userspace_addr = slot_map.addr + a`` (KVM's emulator on this host
reads guest memory through userspace_addr), a memfd slot for ``[a, b)`` sits at
``shared_bit + a`` with ``userspace_addr = shared.hva + a``.  Deleting and re-creating a
slot therefore loses no data (what the discard policy punches is another matter, exactly as
with the store-based machine).

Surgery.  KVM cannot resize, split or move a guest_memfd slot (it can only be deleted), a
file offset can be bound once, and a new slot must not overlap a live one (EEXIST), so a
conversion of ``[lo, hi)`` to private is: delete every shared-view slot overlapping it and
re-create the parts outside ``[lo, hi)``; delete the private-view slots touching it and create
one slot for their union with ``[lo, hi)`` (``merge=True``, the default: one slot per maximal
run, so the slot count stays the number of runs, far below KVM_CAP_NR_MEMSLOTS; extending a
run means delete + create, since a slot cannot grow in place).  ``merge=False`` creates only
the missing pieces and leaves neighbours alone (fewer ioctls per conversion, more slots).
Conversion to shared is the mirror image.  The plan is computed and checked (slot ids
available) before the first ioctl; deletes go first, then creates.  If an ioctl fails
midway, the slots created so far are deleted and the deleted ones re-created, and the error
is raised, so the engine aborts the request and the store keeps the old state.  If the
restore itself fails the machine refuses further conversions (``InvalidState``).

The attribute store still exists -- the engine needs it for the device-access checks
(``shared_read``/``shared_write``, DMA), the tracker and the discard accounting -- but the
*cost* of a conversion here comes from memslot surgery (each ioctl makes KVM build a new
memslot array, wait for SRCU readers and zap the deleted slot's mappings, which the guest
then faults back in), as in the rejected design.  Counters: ``memslot_ioctls`` (every
KVM_SET_USER_MEMORY_REGION2 issued by this class, the reshape at construction included,
failed ones too), ``memslot_creates``, ``memslot_deletes``, ``memslot_failures``
(conversions whose surgery failed and was rolled back), ``live_slots`` and ``peak_slots``
(the reserved slots 0 and 1 included).

Concurrency (inherent in the design, and why KVM later discussed atomic memslot updates):
between a delete and the matching create, the affected GPAs have no memslot, so another vCPU
touching a *neighbour* of the converted range during a split or merge would find none (an
MMIO exit: reads all-ones, writes dropped).  So with several vCPUs a conversion first parks
every other vCPU outside KVM_RUN (``_others_parked``: immediate_exit plus a kick; they wait in
their KVM_EXIT_INTR handler, or, if they are converting too, while waiting for their turn),
then does the surgery, then lets them go: every conversion stops the whole VM, the price the
rejected design pays on top of the ioctls.
"""

from __future__ import annotations

import contextlib
import heapq
import threading
from bisect import bisect_left, bisect_right

from ..errors import InvalidState, Unsupported
from ..kvm import uapi
from ..kvm.kick import kick
from ..kvm.system import DEV_KVM
from .machine import SLOT_PRIVATE, SLOT_SHARED, Machine

ATTR_PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
PRIVATE_VIEW, SHARED_VIEW = "private", "shared"
VIEWS = (PRIVATE_VIEW, SHARED_VIEW)
DEFAULT_MAX_SLOTS = 32764          # KVM_CAP_NR_MEMSLOTS on this host (used if the cap reads 0)
FIRST_DYNAMIC_SLOT = 2             # 0 and 1 are the reserved-region slots (SLOT_PRIVATE, SLOT_SHARED)


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


class MemslotMachine(Machine):
    """A :class:`Machine` whose conversions split and re-create KVM memslots (module doc).

    Same constructor as ``Machine`` plus keyword ``merge`` (default True: one slot per
    maximal run of each view)."""

    def __init__(self, memory: int | str = "64M", vcpus: int = 1, engine=None, policy: str = "never", *,
                 initial: str = "private", kvm_path: str = DEV_KVM, data_check: str = "sampled",
                 merge: bool = True):
        self.merge = bool(merge)
        self.memslot_ioctls = self.memslot_creates = self.memslot_deletes = self.memslot_failures = 0
        self.reshape_ioctls = 0
        self.live_slots = self.peak_slots = 0
        self.max_slots = DEFAULT_MAX_SLOTS
        self._views = {PRIVATE_VIEW: SlotRuns(), SHARED_VIEW: SlotRuns()}
        self._free_slots: list[int] = []
        self._next_slot = FIRST_DYNAMIC_SLOT
        self._layout_broken: BaseException | None = None
        self._pause = threading.Condition()
        self._pauser: int | None = None      # the vCPU doing surgery while the others are parked
        self._parked: set[int] = set()
        self.pauses = 0
        super().__init__(memory, vcpus, engine, policy, initial=initial, kvm_path=kvm_path, data_check=data_check)
        try:
            hooks = getattr(self.engine, "commit_hooks", None)
            if hooks is None:
                raise Unsupported("MemslotMachine needs an engine with commit_hooks")
            self._reshape()
            hooks.append(self._memslot_hook)
        except BaseException:
            self.close()
            raise

    # -- stopping the other vCPUs around the surgery ------------------------------------

    def _convert(self, gpa: int, size: int, to_private: bool, index: int):
        if self.vcpus == 1:        # the only vCPU is in this exit handler: nothing else can run
            return super()._convert(gpa, size, to_private, index)
        with self._others_parked(index):
            return super()._convert(gpa, size, to_private, index)

    @contextlib.contextmanager
    def _others_parked(self, index: int):
        """Hold every other vCPU outside KVM_RUN while the body runs.  Taken before the
        engine's lock, so a vCPU waiting here for its own turn counts as parked and two
        converting vCPUs cannot wait for each other."""
        pause = self._pause
        with pause:
            while self._pauser is not None:
                self._parked.add(index)
                pause.notify_all()
                pause.wait()
            self._parked.discard(index)
            self._pauser = index
            self.pauses += 1
            for other, vcpu in enumerate(self._vcpus):
                if other != index and self._in_loop[other]:
                    vcpu.kvm_run.immediate_exit = 1      # enough for a thread not yet in KVM_RUN
                    ident = self._threads[other].ident
                    if ident:
                        kick(ident)
            # A vCPU that leaves its loop (done, stopping) does not notify: poll for it.
            while not all(other == index or other in self._parked or not self._in_loop[other]
                          for other in range(self.vcpus)):
                pause.wait(0.01)
        try:
            yield
        finally:
            with pause:
                self._pauser = None
                pause.notify_all()

    def _on_intr(self, index: int) -> bool:
        """Kicked out of KVM_RUN: park while another vCPU does memslot surgery."""
        pause = self._pause
        with pause:
            if self._pauser is not None and self._pauser != index:
                self._parked.add(index)
                pause.notify_all()
                while self._pauser is not None and not self._stopping:
                    pause.wait(0.05)
                self._parked.discard(index)
            if not self._stopping:
                self._vcpus[index].kvm_run.immediate_exit = 0
        return super()._on_intr(index)

    # -- construction -----------------------------------------------------------------

    def _reshape(self) -> None:
        """Turn the Machine's two big slots into the memslot-encoded layout of the store's
        initial state (no guest has run yet, so the transient gaps are harmless)."""
        nr = self._vm.check_extension(uapi.KVM_CAP_NR_MEMSLOTS)
        self.max_slots = nr if nr > 0 else DEFAULT_MAX_SLOTS
        self.live_slots = self.peak_slots = 2          # what Machine._build created
        reserved = self.reserved_bytes
        self._ioctl_delete(SLOT_PRIVATE)
        self._ioctl_create(SLOT_PRIVATE, PRIVATE_VIEW, 0, reserved)
        self._ioctl_delete(SLOT_SHARED)
        self._ioctl_create(SLOT_SHARED, SHARED_VIEW, 0, reserved)
        for view, start, end in self._store_runs():
            slot = self._alloc_slot()
            self._ioctl_create(slot, view, start, end)
            self._views[view].add(start, end, slot)
        self.reshape_ioctls = self.memslot_ioctls

    def _store_runs(self) -> list[tuple[str, int, int]]:
        """Maximal runs ``(view, start, end)`` of the workload region as the store has it."""
        lo, hi = self.reserved_bytes, self.memory
        out: list[tuple[str, int, int]] = []
        pos = lo
        for gpa, size, attributes in self.store.ranges(lo, hi - lo):
            if not attributes & ATTR_PRIVATE:
                continue
            if gpa > pos:
                _append_run(out, SHARED_VIEW, pos, gpa)
            _append_run(out, PRIVATE_VIEW, gpa, gpa + size)
            pos = gpa + size
        if pos < hi:
            _append_run(out, SHARED_VIEW, pos, hi)
        return out

    # -- public state -----------------------------------------------------------------

    def slot_layout(self) -> dict[str, list[tuple[int, int]]]:
        """``{"private": [(start, end), ...], "shared": [...]}``: the workload region's live
        slots per view (GPAs without the shared bit)."""
        return {view: runs.runs() for view, runs in self._views.items()}

    def view_mapped(self, gpa: int, view: str) -> bool:
        """Whether a memslot covers page ``gpa`` through ``view`` (the reserved bytes always are)."""
        if gpa < self.reserved_bytes:
            return True
        return bool(self._views[view].overlapping(gpa, gpa + 1))

    def check_layout(self) -> None:
        """AssertionError unless the slots partition the workload region into the store's
        state: private pages exactly the private view's runs, the rest the shared view's;
        runs maximal when merging; counts consistent."""
        lo, hi = self.reserved_bytes, self.memory
        pieces = sorted((s, e, view) for view, runs in self._views.items() for s, e, _ in runs)
        pos = lo
        for start, end, _ in pieces:
            if start != pos or end <= start:
                raise AssertionError(f"slot layout has a gap or overlap at {pos:#x} (next run {start:#x})")
            pos = end
        if pos != hi:
            raise AssertionError(f"slot layout ends at {pos:#x}, not {hi:#x}")
        expected = _coalesce(self._store_runs())
        actual = _coalesce([(view, s, e) for s, e, view in pieces])
        if expected != actual:
            raise AssertionError(f"slot layout disagrees with the store: {actual[:4]}... vs {expected[:4]}...")
        if self.merge and len(actual) != len(pieces):
            raise AssertionError("merge=True but two touching slots map the same view")
        slots = [slot for runs in self._views.values() for _, _, slot in runs]
        if len(set(slots)) != len(slots) or {SLOT_PRIVATE, SLOT_SHARED} & set(slots):
            raise AssertionError("slot ids are not unique")
        if self.live_slots != len(slots) + 2:
            raise AssertionError(f"live_slots {self.live_slots} != {len(slots) + 2}")

    @property
    def memslot_stats(self) -> dict:
        return {"memslot_ioctls": self.memslot_ioctls, "reshape_ioctls": self.reshape_ioctls,
                "creates": self.memslot_creates, "deletes": self.memslot_deletes,
                "failures": self.memslot_failures, "live_slots": self.live_slots, "peak_slots": self.peak_slots}

    # -- the commit hook --------------------------------------------------------------

    def _memslot_hook(self, request) -> None:
        """Engine commit hook (runs under the engine lock, between request and complete):
        re-shape the slots so the layout encodes ``request``'s new state; raise on failure
        (the engine then aborts the request)."""
        if self._layout_broken is not None:
            raise InvalidState("memslot layout is inconsistent after a failed restore; "
                               "no further conversions") from self._layout_broken
        lo, hi = max(request.gpa, self.reserved_bytes), min(request.gpa + request.size, self.memory)
        if lo >= hi:
            return                              # only the reserved bytes: both views stay mapped
        deletes, creates = self._plan(lo, hi, request.private)
        if deletes or creates:
            self._apply(deletes, creates)

    def _plan(self, lo: int, hi: int, to_private: bool):
        """``(deletes, creates)`` making ``[lo, hi)`` mapped only through the target view:
        deletes are ``(view, start, end, slot)``, creates ``(view, start, end)``."""
        target, other = (PRIVATE_VIEW, SHARED_VIEW) if to_private else (SHARED_VIEW, PRIVATE_VIEW)
        deletes: list[tuple[str, int, int, int]] = []
        creates: list[tuple[str, int, int]] = []
        # the other view loses [lo, hi): split its slots, keeping the parts outside
        for start, end, slot in self._views[other].overlapping(lo, hi):
            deletes.append((other, start, end, slot))
            if start < lo:
                creates.append((other, start, lo))
            if end > hi:
                creates.append((other, hi, end))
        runs = self._views[target]
        if self.merge:
            near = runs.overlapping(lo, hi, touching=True)
            new = (min([lo] + [s for s, _, _ in near]), max([hi] + [e for _, e, _ in near]))
            if not (len(near) == 1 and (near[0][0], near[0][1]) == new):
                deletes += [(target, s, e, slot) for s, e, slot in near]
                creates.append((target, *new))
        else:
            pos = lo
            for start, end, _ in runs.overlapping(lo, hi):
                if start > pos:
                    creates.append((target, pos, start))
                pos = max(pos, end)
            if pos < hi:
                creates.append((target, pos, hi))
        return deletes, creates

    def _apply(self, deletes, creates) -> None:
        """Issue the plan: deletes first (a new slot must not overlap a live one, and a
        guest_memfd offset can be bound only once), then creates; restore on failure."""
        free = len(self._free_slots) + (self.max_slots - self._next_slot) + len(deletes)
        if len(creates) > free:
            raise Unsupported(f"conversion needs {len(creates)} new memslots, only {free} of "
                              f"KVM_CAP_NR_MEMSLOTS = {self.max_slots} are free")
        deleted: list[tuple[str, int, int, int]] = []
        created: list[tuple[str, int, int, int]] = []
        try:
            for view, start, end, slot in deletes:
                self._ioctl_delete(slot)
                self._views[view].remove(start)
                self._release_slot(slot)
                deleted.append((view, start, end, slot))
            for view, start, end in creates:
                created.append((view, start, end, self._create(view, start, end)))
        except BaseException as exc:
            self.memslot_failures += 1
            self._restore(deleted, created, exc)
            raise

    def _create(self, view: str, start: int, end: int) -> int:
        """Take a free slot id, bind ``[start, end)`` of ``view`` to it, record it; the id goes
        back to the free list if the ioctl fails."""
        slot = self._alloc_slot()
        try:
            self._ioctl_create(slot, view, start, end)
        except BaseException:
            self._release_slot(slot)
            raise
        self._views[view].add(start, end, slot)
        return slot

    def _restore(self, deleted, created, cause: BaseException) -> None:
        """Undo a half-applied plan: delete what was created, re-create what was deleted."""
        try:
            for view, start, _, slot in reversed(created):
                self._ioctl_delete(slot)
                self._views[view].remove(start)
                self._release_slot(slot)
            for view, start, end, _ in reversed(deleted):
                self._create(view, start, end)
        except BaseException as exc:
            exc.__context__ = cause
            self._layout_broken = exc

    # -- slot ids and ioctls ----------------------------------------------------------

    def _alloc_slot(self) -> int:
        if self._free_slots:
            return heapq.heappop(self._free_slots)
        if self._next_slot >= self.max_slots:
            raise Unsupported(f"out of memslots (KVM_CAP_NR_MEMSLOTS = {self.max_slots})")
        slot = self._next_slot
        self._next_slot += 1
        return slot

    def _release_slot(self, slot: int) -> None:
        heapq.heappush(self._free_slots, slot)

    def _ioctl_create(self, slot: int, view: str, start: int, end: int) -> None:
        self.memslot_ioctls += 1
        if view == PRIVATE_VIEW:
            self._vm.set_user_memory_region2(slot, uapi.KVM_MEM_GUEST_MEMFD, start, end - start,
                                             self._slot_map.addr + start, self.private.fd, start)
        else:
            self._vm.set_user_memory_region2(slot, 0, self.shared_bit + start, end - start,
                                             self.shared.hva + start)
        self.memslot_creates += 1
        self.live_slots += 1
        if self.live_slots > self.peak_slots:
            self.peak_slots = self.live_slots

    def _ioctl_delete(self, slot: int) -> None:
        self.memslot_ioctls += 1
        self._vm.set_user_memory_region2(slot, 0, 0, 0, 0)      # memory_size 0: delete
        self.memslot_deletes += 1
        self.live_slots -= 1

    def __repr__(self) -> str:
        return (f"<MemslotMachine memory={self.memory:#x} vcpus={self.vcpus} slots={self.live_slots}"
                f"{' closed' if self.closed else ''}>")


def _append_run(out: list, view: str, start: int, end: int) -> None:
    if out and out[-1][0] == view and out[-1][2] == start:
        out[-1] = (view, out[-1][1], end)
    else:
        out.append((view, start, end))


def _coalesce(runs) -> list[tuple[str, int, int]]:
    out: list[tuple[str, int, int]] = []
    for view, start, end in runs:
        _append_run(out, view, start, end)
    return out


__all__ = ["MemslotMachine", "SlotRuns", "PRIVATE_VIEW", "SHARED_VIEW"]
