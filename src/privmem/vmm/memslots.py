"""``MemslotMachine``: conversions as memslot surgery -- the design the 2022 UPM thread rejected.

Sean Christopherson (seed thread): "My original proposal was to have explicit shared vs.
private memslots, and punch holes in KVM's memslots on conversion, but due to the way KVM (and
userspace) handle memslot updates, conversions would be painfully slow."  This module builds
that proposal on top of the ordinary :class:`~privmem.vmm.machine.Machine`, for contrast
(``privmem run --tracking memslots``), on any layout.

The guest reaches page P privately at GPA P (guest_memfd) and shared at P | shared_bit
(memfd).  Here the memslot layout encodes the state of every RAM page (slotplan.py): a
private page has a guest_memfd slot covering P and none over P | shared_bit; a shared page
the reverse.  A guest access through the wrong view finds no memslot and KVM reports an MMIO
exit (the machine answers reads with all-ones, drops writes, and counts them).  The firmware
region keeps its own slot.  Slots are views of the files, never copies, so deleting and
re-creating one loses no data.

The plan (slotplan.py) is computed and checked before the first ioctl; deletes go first, then
creates.  If an ioctl fails midway, the slots created so far are deleted and the deleted ones
re-created, and the error is raised, so the engine aborts the request and the store keeps the
old state; a guest asking for more memslots than KVM has gets an error status, not a dead
run.  If the restore itself fails the machine refuses further conversions (``InvalidState``).

The attribute store still exists -- the engine needs it for the device checks, the tracker
and the discard accounting -- but the *cost* of a conversion here comes from memslot surgery
(each ioctl makes KVM build a new memslot array, wait for SRCU readers and zap the deleted
slot's mappings, which the guest then faults back in).  With several vCPUs every conversion
first parks the other vCPUs outside KVM_RUN (``VcpuRunner.others_parked``), because between a
delete and the matching create a neighbour's pages have no memslot: every conversion stops
the whole VM, the price the rejected design pays on top of the ioctls.
"""

from __future__ import annotations

from ..attrs.validate import ATTR_PRIVATE
from ..errors import InvalidState, Unsupported
from ..kvm import uapi
from ..kvm.system import DEV_KVM
from .machine import Machine
from .slotplan import PRIVATE_VIEW, SHARED_VIEW, VIEWS, Plan, SlotLayout

DEFAULT_MAX_SLOTS = 32764          # KVM_CAP_NR_MEMSLOTS on this host (used if the cap reads 0)


class MemslotMachine(Machine):
    """A :class:`Machine` whose conversions split and re-create KVM memslots (module doc).

    Same constructor as ``Machine`` plus keyword ``merge`` (default True: one slot per maximal
    run of each view).  Counters: ``memslot_ioctls`` (every KVM_SET_USER_MEMORY_REGION2 this
    class issues, the reshape at construction and failed ones included), ``memslot_creates``,
    ``memslot_deletes``, ``memslot_failures`` (conversions whose surgery failed and was
    rolled back), ``live_slots`` and ``peak_slots`` (the firmware slot included)."""

    def __init__(self, memory="64M", vcpus: int = 1, engine=None, policy: str = "never", *, layout=None,
                 memory_map=None, initial: str = "private", kvm_path: str = DEV_KVM, data_check: str = "sampled",
                 merge: bool = True):
        self.merge = bool(merge)
        self.memslot_ioctls = self.memslot_creates = self.memslot_deletes = self.memslot_failures = 0
        self.reshape_ioctls = 0
        self._layout_broken: BaseException | None = None
        super().__init__(memory, vcpus, engine, policy, layout=layout, memory_map=memory_map, initial=initial,
                         kvm_path=kvm_path, data_check=data_check)
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

    def convert_for_guest(self, index, where, to_private):
        if self.vcpus == 1:        # the only vCPU is in this exit handler: nothing else can run
            return super().convert_for_guest(index, where, to_private)
        with self.runner.others_parked(index):
            return super().convert_for_guest(index, where, to_private)

    @property
    def pauses(self) -> int:
        return self.runner.pauses

    # -- construction -----------------------------------------------------------------

    def _reshape(self) -> None:
        """Turn the Machine's two slots per region into the memslot-encoded layout of the
        store's initial state (no guest has run yet, so the transient gaps are harmless)."""
        nr = self._vm.check_extension(uapi.KVM_CAP_NR_MEMSLOTS)
        regions = len(self.memory_map.regions)
        self.slots = SlotLayout(self.memory_map, nr if nr > 0 else DEFAULT_MAX_SLOTS,
                                first_slot=self.slot_firmware + 1, fixed=1, merge=self.merge)  # firmware slot stays
        self.slots.live = self.slots.peak = 1 + 2 * regions                    # what Machine._build made
        for index in range(regions):
            self._ioctl_delete(self.private_slot(index))
            self._ioctl_delete(self.shared_slot(index))
            self.slots.live -= 2
        for view, start, end in self.slots.initial(self._private_runs()).creates:
            self._create(view, start, end)
        self.reshape_ioctls = self.memslot_ioctls

    def _private_runs(self) -> list[tuple[int, int]]:
        return [(gpa, gpa + size) for gpa, size, attributes in self.store.ranges() if attributes & ATTR_PRIVATE]

    # -- public state -----------------------------------------------------------------

    @property
    def live_slots(self) -> int:
        return self.slots.live

    @property
    def peak_slots(self) -> int:
        return self.slots.peak

    @property
    def max_slots(self) -> int:
        return self.slots.max_slots

    @max_slots.setter
    def max_slots(self, value: int) -> None:
        """Pretend KVM has fewer memslots (tests of the refusal when they run out)."""
        self.slots.max_slots = value

    def slot_layout(self) -> dict[str, list[tuple[int, int]]]:
        """``{"private": [(start, end), ...], "shared": [...]}``: the live RAM slots per view
        (GPAs without the shared bit)."""
        return self.slots.layout()

    def view_mapped(self, gpa: int, view: str) -> bool:
        """Whether a memslot covers page ``gpa`` through ``view``."""
        return self.slots.mapped(gpa, view)

    def check_layout(self) -> None:
        """AssertionError unless the slots encode the store's state (SlotLayout.check)."""
        self.slots.check(self._private_runs())

    # -- the commit hook --------------------------------------------------------------

    def _memslot_hook(self, request) -> None:
        """Engine commit hook (under the engine lock, between request and complete): re-shape
        the slots so the layout encodes ``request``'s new state; raise on failure (the engine
        then aborts the request)."""
        if self._layout_broken is not None:
            raise InvalidState("memslot layout is inconsistent after a failed restore; "
                               "no further conversions") from self._layout_broken
        plan = self.slots.plan(request.gpa, request.size, request.private)
        if plan:
            self._apply(plan)

    def _apply(self, plan: Plan) -> None:
        """Issue the plan: deletes first (a new slot must not overlap a live one, and a
        guest_memfd offset can be bound only once), then creates; restore on failure."""
        deleted: list[tuple[str, int, int, int]] = []
        created: list[tuple[str, int, int, int]] = []
        try:
            for view, start, end, slot in plan.deletes:
                self._ioctl_delete(slot)
                self.slots.deleted(view, start, slot)
                deleted.append((view, start, end, slot))
            for view, start, end in plan.creates:
                created.append((view, start, end, self._create(view, start, end)))
        except BaseException as exc:
            self.memslot_failures += 1
            self._restore(deleted, created, exc)
            raise

    def _create(self, view: str, start: int, end: int) -> int:
        """Take a free slot id, bind ``[start, end)`` of ``view`` to it, record it; the id goes
        back to the free list if the ioctl fails."""
        slot = self.slots.alloc_slot()
        try:
            self._ioctl_create(slot, view, start, end)
        except BaseException:
            self.slots.release_slot(slot)
            raise
        self.slots.created(view, start, end, slot)
        return slot

    def _restore(self, deleted, created, cause: BaseException) -> None:
        """Undo a half-applied plan: delete what was created, re-create what was deleted."""
        try:
            for view, start, _, slot in reversed(created):
                self._ioctl_delete(slot)
                self.slots.deleted(view, start, slot)
            for view, start, end, _ in reversed(deleted):
                self._create(view, start, end)
        except BaseException as exc:
            exc.__context__ = cause
            self._layout_broken = exc

    # -- ioctls ------------------------------------------------------------------------

    def _ioctl_create(self, slot: int, view: str, start: int, end: int) -> None:
        self.memslot_ioctls += 1
        offset = self.memory_map.offset(start)
        if view == PRIVATE_VIEW:
            self._vm.set_user_memory_region2(slot, uapi.KVM_MEM_GUEST_MEMFD, start, end - start,
                                             self._slot_map.addr + offset, self.private.fd, offset)
        else:
            self._vm.set_user_memory_region2(slot, 0, self.shared_bit + start, end - start, self.shared.hva + offset)
        self.memslot_creates += 1

    def _ioctl_delete(self, slot: int) -> None:
        self.memslot_ioctls += 1
        self._vm.set_user_memory_region2(slot, 0, 0, 0, 0)      # memory_size 0: delete
        self.memslot_deletes += 1

    def __repr__(self) -> str:
        return (f"<MemslotMachine {self.memory_map.describe()} vcpus={self.vcpus} slots={self.live_slots}"
                f"{' closed' if self.closed else ''}>")


__all__ = ["MemslotMachine", "PRIVATE_VIEW", "SHARED_VIEW", "VIEWS"]
