"""In-place conversion: one guest_memfd serves both views, so a conversion allocates nothing,
discards nothing, and double allocation is zero by construction.

The engine follows the semantics of the in-place series ("guest_memfd: In-place conversion
support", v7, May 2026), in software where the host has no KVM_SET_MEMORY_ATTRIBUTES2 (as
this one has not; ``native`` issues it where it exists):

* **validation order** of ``set_memory_attributes2(offset, size, attributes, flags)``: flags,
  unknown attribute bits, size 0 or overflow, alignment, the range outside the file, all
  ``InvalidArgument`` naming the field, nothing changed;
* **early return** when every page already has the attributes: no zeroing, no protection change;
* **to private**: the shared view of the pages is revoked first (every host mapping the VMM
  has, as the kernel unmaps all of them), then, if any page is pinned (a device mid-DMA:
  the tracker's pins, or the request in flight of another vCPU), ``Busy`` with ``gpa`` = the
  first such page, the kernel's EAGAIN with ``error_offset``; the guest retries after the pin
  is dropped;
* **content modes**: ``"zero"`` (the pages read as zeros afterwards: the host never sees what
  the guest wrote while a page was private, as SNP/TDX guarantee; the guest sees zeros in
  pages the host had) and ``"preserve"`` (contents kept: the guest reads what the host wrote;
  to private and before launch only, the UPM thread's "copy shared -> private before guest start,
  and refuse it afterwards").  The default is zero, or preserve for ``populate``.  Only
  allocated pages are zeroed, so a conversion never allocates.
* ``truncate`` (PUNCH_HOLE) frees and zeroes pages without changing their state.

Concurrency: the work on a range (protections, zeroing) happens while its request is in
flight, which closes the range to other conversions and to device pins, so no engine-wide
lock is held across it; the store changes last, in one step, only if everything before it
succeeded (a failed mprotect restores what it changed and the request is aborted).

Invariants (``check()``): the tracker's; the stats count no discard and no double allocation;
``discarding_bytes`` is 0.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..attrs.validate import ATTR_PRIVATE, check_set
from ..errors import Busy, InvalidArgument, InvalidState, SyscallError, Unsupported
from ..memmap import GpaRange, GuestMemoryMap
from ..units import PAGE_SHIFT
from .access import DeviceAccessRules
from .engine import EngineStats
from .tracker import Conversion, ConversionTracker, Request

ZERO, PRESERVE = "zero", "preserve"
MODES = (ZERO, PRESERVE)


@dataclass
class InPlaceStats(EngineStats):
    zeroed_bytes: int = 0            # allocated pages zeroed by conversions (the content rule)
    protection_changes: int = 0      # mprotect calls on the shared view
    pinned_refusals: int = 0         # conversions to private refused (Busy, the ABI's EAGAIN): a page pinned
                                     # by a device, or in another vCPU's request in flight


class InPlaceEngine(DeviceAccessRules):
    """``InPlaceEngine(tracker, backing, memory_map=None, native=None)``: the engine interface
    the machines use (``convert``/``convert_range``, ``set_initial``, ``populate``,
    ``launch``, the device-access rule, ``measure*``, ``stats``, ``check``, ``close``) over one
    ``privmem.backing.InPlaceBacking``.  ``native(offset, size, attributes)`` is called,
    where given, before the store changes (the host's KVM_SET_MEMORY_ATTRIBUTES2)."""

    policy = None                    # nothing to discard, so no discard policy

    def __init__(self, tracker: ConversionTracker, backing, memory_map: GuestMemoryMap | None = None,
                 native: Callable[[int, int, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, journal: bool = False):
        self.tracker, self.store = tracker, tracker.store
        self.backing = backing
        self.backings = {1: backing, 2: backing}
        self.memory_map = memory_map if memory_map is not None else GuestMemoryMap.flat(backing.size)
        if self.memory_map.ram_bytes > backing.size:
            raise InvalidArgument("memory_map", self.memory_map.ram_bytes,
                                  f"needs more than the backing's {backing.size:#x} bytes")
        self.native = native
        self.clock = clock
        self.commit_hooks: list = []
        self.stats = InPlaceStats()
        self.launched = False
        self.journal: list[Request] | None = [] if journal else None
        self.discarding_bytes = 0
        self._closed = False
        self._lock = threading.Lock()

    shared = property(lambda self: self.backing, doc="The one backing (both views).")
    private = shared

    @property
    def memory(self) -> int:
        return self.memory_map.ram_bytes

    # -- conversions -------------------------------------------------------------------

    def convert(self, gpa: int, size: int, to_private: bool, vcpu: int = 0, mode: str | None = None) -> Conversion:
        """Convert a range of guest RAM (see the module docstring for the rules)."""
        return self.convert_range(self.memory_map.range(gpa, size), to_private, vcpu, mode)

    def set_memory_attributes2(self, offset: int, size: int, attributes: int, flags: int = 0,
                               mode: str | None = None, vcpu: int = 0) -> Conversion:
        """The proposed ioctl's semantics on file offsets: validation in its order, then the
        conversion of the RAM those offsets back."""
        first, end = check_set(offset, size, attributes, flags, ATTR_PRIVATE)
        if end << PAGE_SHIFT > self.backing.size:
            raise InvalidArgument("offset", offset, f"[{offset:#x}, {end << PAGE_SHIFT:#x}) is outside the file "
                                  f"({self.backing.size:#x} bytes)")
        spans = list(self.memory_map.spans_of(offset, size))
        if len(spans) != 1:
            raise InvalidArgument("offset", offset, "the range backs RAM on both sides of a hole: convert each side")
        return self.convert_range(GpaRange(*spans[0]), bool(attributes & ATTR_PRIVATE), vcpu, mode)

    def _mode(self, to_private: bool, mode: str | None) -> str:
        if mode is None:
            return ZERO
        if mode not in MODES:
            raise InvalidArgument("mode", mode, f"must be one of {', '.join(MODES)}", hex_value=False)
        if mode == PRESERVE and not to_private:
            raise InvalidArgument("mode", mode, "preserve is for conversions to private: a page the host sees "
                                  "never shows what the guest wrote while it was private", hex_value=False)
        if mode == PRESERVE and self.launched:
            raise InvalidState("a preserving conversion is refused after launch: the host may no longer choose "
                               "what a private page holds (EOPNOTSUPP in the proposed ABI)")
        return mode

    def convert_range(self, where: GpaRange, to_private: bool, vcpu: int = 0, mode: str | None = None) -> Conversion:
        """``convert`` for a range already validated against the memory map."""
        if self._closed:
            raise InvalidState("the engine is closed: its machine has been shut down")
        if not isinstance(to_private, bool):
            raise InvalidArgument("to_private", to_private, "must be True or False", hex_value=False)
        mode = self._mode(to_private, mode)
        target = ATTR_PRIVATE if to_private else 0
        with self.tracker.lock:                                     # the ABI's early return: no checks,
            unchanged = self.store.has(where.gpa, where.size, target)   # no work
        if unchanged:
            return Conversion(Request(0, where.gpa, where.size, to_private, vcpu), ())
        try:
            request = self.tracker.request_range(where, to_private, vcpu)   # Busy: in flight or pinned
        except Busy:
            if to_private:
                with self._lock:
                    self.stats.pinned_refusals += 1
            raise
        try:
            changed = self.tracker.changed_ranges(request)
            if changed:
                self._change(changed, to_private, mode)
        except BaseException:
            self.tracker.abort(request)
            raise
        conversion = self.tracker.complete(request, self.journal)
        if conversion.changed:
            with self._lock:
                self.stats.conversions += 1
                self.stats.pages_converted += conversion.pages_changed
        return conversion

    def _change(self, changed, to_private: bool, mode: str) -> None:
        """Protections and contents of the changed ranges (each piece all or nothing in the
        backing), the pieces already done undone if a later one fails."""
        backing, done = self.backing, []
        zeroed, zero = 0, mode == ZERO
        try:
            for gpa, size in changed:
                for offset, length in self.memory_map.pieces(gpa, size):
                    zeroed += backing.change_view(offset, length, not to_private, zero)
                    done.append((offset, length))
            if self.native is not None:
                for offset, length in done:
                    self.native(offset, length, ATTR_PRIVATE if to_private else 0)
        except BaseException as exc:                 # the host's ioctl too: all or nothing
            for offset, length in reversed(done):
                try:
                    backing.protect(offset, length, shared=to_private)
                except SyscallError:
                    pass
            if isinstance(exc, SyscallError):
                raise Unsupported(f"conversion refused: {exc} (the shared view's protections could not change; "
                                  "too many memory areas? see vm.max_map_count)") from exc
            raise
        with self._lock:
            self.stats.zeroed_bytes += zeroed
            self.stats.protection_changes += len(done)

    # -- launch lifecycle --------------------------------------------------------------

    def set_initial(self, gpa: int, size: int, private: bool) -> None:
        """Initial state before launch, protections included; no conversion is counted."""
        if self.launched:
            raise InvalidState("set_initial is refused after launch")
        where = self.memory_map.range(gpa, size)
        for offset, length in self.memory_map.pieces(where.gpa, where.size):
            self.backing.protect(offset, length, shared=not private)
        with self.tracker.lock:
            self.store.set(where.gpa, where.size, ATTR_PRIVATE if private else 0)

    def populate(self, gpa: int, size: int) -> Conversion:
        """Before launch: the data the host wrote into the shared pages becomes private in
        place (mode preserve), nothing copied."""
        if self.launched:
            raise InvalidState("populate is refused after launch: the host may no longer write private memory")
        return self.convert(gpa, size, True, mode=PRESERVE)

    def preallocate(self, gpa: int, size: int) -> None:
        where = self.memory_map.range(gpa, size)
        for offset, length in self.memory_map.pieces(where.gpa, where.size):
            self.backing.allocate(offset, length)

    def truncate(self, gpa: int, size: int) -> None:
        """PUNCH_HOLE: frees and zeroes the pages; their state stays as it is."""
        where = self.memory_map.range(gpa, size)
        for offset, length in self.memory_map.pieces(where.gpa, where.size):
            self.backing.discard(offset, length)

    def launch(self) -> None:
        if self.launched:
            raise InvalidState("launch is refused after launch")
        self.launched = True

    def tick(self) -> None:
        """Nothing is ever held: nothing to drain."""

    flush = tick

    def close(self) -> None:
        self._closed = True

    # -- accounting -----------------------------------------------------------------------

    def allocated_bytes(self) -> int:
        """Bytes the kernel holds for guest RAM: one file, both views."""
        return self.backing.allocated_bytes()

    def measure(self) -> dict:
        allocated = self.backing.allocated_bytes()
        return {"shared_bytes": allocated, "private_bytes": allocated, "double_bytes": 0}

    def measure_double_allocation(self) -> int:
        """Zero by construction: a page has one physical page whatever its state."""
        return 0

    def check(self) -> None:
        self.tracker.check()
        stats = self.stats
        if stats.discards or stats.double_allocated_bytes or self.discarding_bytes:
            raise AssertionError("in-place engine: something was discarded or held")


__all__ = ["InPlaceEngine", "InPlaceStats", "MODES", "PRESERVE", "ZERO"]
