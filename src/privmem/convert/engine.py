"""The conversion engine: commits conversions and runs the discard policy's decisions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..attrs.validate import ATTR_PRIVATE
from ..errors import Busy, InvalidArgument, InvalidState, SyscallError
from ..memmap import GpaRange, GuestMemoryMap
from .access import DeviceAccessRules
from . import policies  # noqa: F401  (registers the built-in policies: POLICIES is full whoever asks)
from .held import HELD_PRIVATE, HELD_SHARED, SIDES, HeldMemory
from .protocol import DISCARD, Policy
from .tracker import Conversion, ConversionTracker, Request


@dataclass
class EngineStats:
    conversions: int = 0            # committed requests that changed at least one page
    pages_converted: int = 0
    discards: int = 0               # discard syscalls issued (successful)
    discarded_bytes: int = 0
    discard_failures: int = 0       # failed discard syscalls; their ranges are held and retried
    reclaimed_bytes: int = 0        # held memory brought back into use by a flip back: no cost
    double_allocated_bytes: int = 0  # held memory (books): left behind by a conversion, not yet discarded
    peak_double_allocated_bytes: int = 0
    queued_bytes: int = 0           # held memory the policy will discard later

    def as_dict(self) -> dict:
        return asdict(self)


class ConversionEngine(DeviceAccessRules):
    """Takes conversions through the tracker and applies a discard policy to what they leave.

    The store, the tracker and the held books work in guest-physical addresses; the backings
    are files addressed by offset.  ``memory_map`` (a ``GuestMemoryMap``; default one region
    at GPA 0 covering the backings) translates between them: every discard, allocation,
    device access and measurement goes through it, and a range outside guest RAM is refused
    before anything is committed.
    ``commit_hooks`` run between request and completion (the VMM's KVM_SET_MEMORY_ATTRIBUTES,
    where the host has it); if one raises, the request is aborted and nothing changes.

    Concurrency: ``request`` happens outside the engine lock, so overlapping vCPUs get
    ``Busy``; commit and bookkeeping run under the lock; the discard syscalls run after it,
    on ranges claimed first (the converting request stays in flight until its discards are
    done, drained runs are pinned in the tracker), so a drain never punches a page another
    vCPU is bringing back into use and a large punch stalls nobody else.

    Invariants (``check()``): the tracker's and the held memory's; ``stats.double_allocated_bytes``
    equals the held bytes and never exceeds ``stats.peak_double_allocated_bytes``; bytes being
    discarded (``discarding_bytes``) are never negative and 0 when no discard is in progress.
    """

    def __init__(self, tracker: ConversionTracker, policy: Policy, shared, private,
                 clock: Callable[[], float] = time.monotonic,
                 commit_hooks: list[Callable[[Request], None]] | None = None, journal: bool = False,
                 memory_map: GuestMemoryMap | None = None):
        self.tracker = tracker
        self.store = tracker.store
        self.policy = policy
        self.backings = {HELD_SHARED: shared, HELD_PRIVATE: private}
        backed = min(shared.size, private.size)
        self.memory_map = memory_map if memory_map is not None else GuestMemoryMap.flat(backed)
        if self.memory_map.ram_bytes > backed:
            raise InvalidArgument("memory_map", self.memory_map.ram_bytes,
                                  f"needs more than the backings' {backed:#x} bytes")
        self.clock = clock
        self.commit_hooks = list(commit_hooks or [])
        self.stats = EngineStats()
        # The policy's protocol attributes are read once (docs in protocol.Policy); so is
        # whether it overrides the per-conversion hook, so policies that do not pay nothing.
        self.held = HeldMemory(track_age=policy.ages)
        self._queues = policy.queues
        hook = getattr(type(policy), "converted", Policy.converted)
        self._on_conversion = None if hook is Policy.converted else policy.converted
        self.launched = False
        self._retry: list[tuple[int, int, int]] = []
        # Committed requests in commit order, when asked for: replaying them one by one on a
        # fresh store must give the same attributes (the concurrency tests' oracle).
        self.journal: list[Request] | None = [] if journal else None
        self._discarding = 0          # bytes released from the books, punch in progress
        self._closed = False
        self._lock = threading.Lock()

    @property
    def shared(self):
        """The shared backing (a memfd)."""
        return self.backings[HELD_SHARED]

    @property
    def private(self):
        """The private backing (a guest_memfd, or its stand-in)."""
        return self.backings[HELD_PRIVATE]

    # -- conversions -----------------------------------------------------------------

    @property
    def discarding_bytes(self) -> int:
        """Bytes whose discard syscalls are being issued now (out of the books, not yet freed)."""
        return self._discarding

    @property
    def memory(self) -> int:
        """Bytes of guest RAM."""
        return self.memory_map.ram_bytes

    def convert(self, gpa: int, size: int, to_private: bool, vcpu: int = 0) -> Conversion:
        """Convert a range of guest RAM; raises InvalidArgument (naming a hole) for a range
        that is not RAM and ``Busy`` if it overlaps a conversion in flight."""
        return self.convert_range(self.memory_map.range(gpa, size), to_private, vcpu)

    def convert_range(self, where: GpaRange, to_private: bool, vcpu: int = 0) -> Conversion:
        """``convert`` for a range already validated against this engine's memory map.

        The request is committed under the engine lock, with the policy's decisions; the
        discard syscalls those decisions need run after the lock is dropped, on ranges claimed
        first (the request itself for its own pages, tracker pins for drained ones), so a
        large punch stalls no other vCPU's conversion and no conversion touches a range being
        punched.  The request leaves flight once its discards are done."""
        if self._closed:
            raise InvalidState("the engine is closed: its machine has been shut down")
        request = self.tracker.request_range(where, to_private, vcpu)
        with self._lock:
            # A policy that holds everything this conversion leaves behind punches none of
            # the request's own pages, so the request can leave flight as it commits.
            holds_all = self.policy.holds(HELD_SHARED if to_private else HELD_PRIVATE)
            try:
                for hook in self.commit_hooks:
                    hook(request)
                conversion = (self.tracker.complete if holds_all else self.tracker.commit)(request)
            except BaseException:
                self.tracker.abort(request)          # nothing changed
                raise
            in_flight = None if holds_all else request
            try:
                if self.journal is not None:
                    self.journal.append(request)
                now = self.clock()
                runs = self._account(conversion, now, holds_all) if conversion.changed else []
                runs += self._due(now)
                batch = self._claim(runs, now, in_flight) if runs else None
                if batch is None:
                    self._update_totals()
            except BaseException:
                if in_flight is not None:
                    self.tracker.release(in_flight)
                raise
        if batch is None:                            # nothing to punch: done under one lock
            if in_flight is not None:
                self.tracker.release(in_flight)
            return conversion
        try:
            self._punch(batch)
        finally:
            self._settle(batch, now)
            if in_flight is not None:
                self.tracker.release(in_flight)
        return conversion

    def _account(self, conversion: Conversion, now: float, holds_all: bool) -> list[tuple[int, int, int]]:
        """Book what the conversion left behind (``holds_all``: the policy's ``holds`` for the
        side left); the runs the policy discards now."""
        entered, left = (HELD_PRIVATE, HELD_SHARED) if conversion.to_private else (HELD_SHARED, HELD_PRIVATE)
        stats = self.stats
        stats.conversions += 1
        stats.pages_converted += conversion.pages_changed
        discards: list[tuple[int, int, int]] = []
        policy, held = self.policy, self.held
        if self._on_conversion is not None:
            self._on_conversion(conversion, now)
        for gpa, size in conversion.changed:
            if holds_all:
                reclaimed = held.hold(gpa, size, left, now)
                policy.entered(gpa, size, reclaimed)
            else:
                reclaimed = held.reclaim(gpa, size, entered)
                policy.entered(gpa, size, reclaimed)
                for piece_gpa, piece_size, verdict in policy.left_behind(left, gpa, size):
                    if verdict == DISCARD:
                        discards.append((piece_gpa, piece_size, left))
                    else:
                        held.hold(piece_gpa, piece_size, left, now)
            stats.reclaimed_bytes += reclaimed
        return discards

    def _due(self, now: float, force: bool = False) -> list[tuple[int, int, int]]:
        """Failed discards to retry (after any reclaim: a page that came back needs none) and
        what the policy drains now."""
        drained = self.policy.drain(self.held, now, force=force)
        return self._take_retries() + drained if self._retry else drained

    def _claim(self, runs: list[tuple[int, int, int]], now: float, request: Request | None = None) -> "_Batch":
        """Under the lock: pin each run to discard (``request``'s own pages are already
        closed to others) and count it as being discarded; a run another vCPU's request holds
        now stays held and is retried later."""
        batch = _Batch()
        for gpa, size, side in runs:
            if request is not None and request.gpa <= gpa and gpa + size <= request.gpa + request.size:
                pin = None                       # the request's own pages: closed to others already
            else:
                try:
                    pin = self.tracker.pin(GpaRange(gpa, size), "discard", exempt=request)
                except Busy:
                    self.held.hold(gpa, size, side, now)
                    self._retry.append((gpa, size, side))
                    continue
            batch.runs.append((gpa, size, side, pin))
            batch.bytes += size
            batch.pinned += pin is not None
        self._discarding += batch.bytes
        return batch

    def _punch(self, batch: "_Batch") -> None:
        """Outside the lock: the discard syscalls, one per backing piece of each run."""
        for index, (gpa, size, side, _) in enumerate(batch.runs):
            backing = self.backings[side]
            try:
                for offset, length in self.memory_map.pieces(gpa, size):
                    backing.discard(offset, length)
                    batch.pieces += 1
            except SyscallError:
                batch.failed.append(index)

    def _settle(self, batch: "_Batch", now: float) -> None:
        """Under the lock: a failed discard's memory is held again and retried later (the
        conversion stays committed; a piece already punched is punched again: harmless);
        the pins go; the books and the counters follow."""
        with self._lock:
            stats = self.stats
            self._discarding -= batch.bytes
            stats.discards += batch.pieces
            if not batch.failed and not batch.pinned:     # the common case: one eager punch
                stats.discarded_bytes += batch.bytes
                self._update_totals()
                return
            failed = set(batch.failed)
            for index, (gpa, size, side, pin) in enumerate(batch.runs):
                if pin is not None:
                    self.tracker.unpin(pin)
                if index in failed:
                    stats.discard_failures += 1
                    self.held.hold(gpa, size, side, now)
                    self._retry.append((gpa, size, side))
                else:
                    stats.discarded_bytes += size
            self._update_totals()

    def _update_totals(self) -> None:
        """The books' totals: memory held (left behind, not yet decided); memory whose discard
        is being issued is on its way out and counted apart (``discarding_bytes``), as it was
        when discards ran under the lock."""
        stats = self.stats
        total = self.held.total
        stats.double_allocated_bytes = total
        if total > stats.peak_double_allocated_bytes:
            stats.peak_double_allocated_bytes = total
        stats.queued_bytes = total if self._queues else \
            (sum(s for _, s, _ in self._retry) if self._retry else 0)

    def _take_retries(self) -> list[tuple[int, int, int]]:
        """Failed discards whose memory is still held (a flip back may have reclaimed it)."""
        runs = []
        for gpa, size, side in self._retry:
            runs += self.held.release(gpa, size, side)
        self._retry.clear()
        return runs

    def tick(self) -> None:
        """Discard what the policy says is due now (age-based draining between exits)."""
        self._drain(force=False)

    def flush(self) -> None:
        """Discard everything the policy would discard eventually."""
        self._drain(force=True)

    def _drain(self, force: bool) -> None:
        with self._lock:
            now = self.clock()
            runs = self._due(now, force)
            if not runs:
                return
            batch = self._claim(runs, now)
        try:
            self._punch(batch)
        finally:
            self._settle(batch, now)

    def close(self) -> None:
        """The machine is shut down: conversions are refused from now on (before anything
        changes), so nothing reaches backings that are gone."""
        self._closed = True

    # -- launch lifecycle -------------------------------------------------------------

    def set_initial(self, gpa: int, size: int, private: bool) -> None:
        """Initial state before launch (e.g. all guest RAM private, as QEMU sets it when it
        creates the slot): no conversion is counted and nothing is discarded."""
        self._require_unlaunched("set_initial")
        self.memory_map.range(gpa, size)
        with self.tracker.lock:                     # the store changes under the lock commits take
            self.store.set(gpa, size, ATTR_PRIVATE if private else 0)

    def preallocate(self, gpa: int, size: int) -> None:
        """Allocate private memory up front (before or after binding: the store does not
        care, so nothing needs replaying)."""
        private = self.backings[HELD_PRIVATE]
        where = self.memory_map.range(gpa, size)
        for offset, length in self.memory_map.pieces(where.gpa, where.size):
            private.allocate(offset, length)

    def populate(self, gpa: int, size: int) -> Conversion:
        """Before launch: copy the shared view into private memory and make the range
        private (SNP's launch update; the UPM thread's in-place encryption)."""
        self._require_unlaunched("populate")
        where = self.memory_map.range(gpa, size)
        shared, private = self.backings[HELD_SHARED], self.backings[HELD_PRIVATE]
        for offset, length in self.memory_map.pieces(where.gpa, where.size):
            private.write(offset, shared.read(offset, length))
        return self.convert_range(where, True)

    def launch(self) -> None:
        self._require_unlaunched("launch")
        seal = getattr(self.backings[HELD_PRIVATE], "seal", None)
        if seal:
            seal()
        self.launched = True

    def _require_unlaunched(self, what: str) -> None:
        if self.launched:
            raise InvalidState(f"{what} is refused after launch: the host may no longer write private memory")

    # -- accounting --------------------------------------------------------------------

    def allocated_bytes(self) -> int:
        """Bytes the kernel holds for guest RAM, both backings."""
        return self.backings[HELD_SHARED].allocated_bytes() + self.backings[HELD_PRIVATE].allocated_bytes()

    def measure(self) -> dict:
        """Allocation as the kernel reports it: bytes allocated in each backing and in both."""
        shared = self.backings[HELD_SHARED].allocated_ranges()
        private = self.backings[HELD_PRIVATE].allocated_ranges()
        return {"shared_bytes": sum(s for _, s in shared), "private_bytes": sum(s for _, s in private),
                "double_bytes": _overlap_bytes(shared, private)}

    def measure_double_allocation(self) -> int:
        """Double allocation as the kernel reports it: bytes still allocated in the side each
        page is *not* using.  Only held runs can have any (discarded ranges have none), so one
        cachestat per held run suffices; the books (``stats.double_allocated_bytes``) are
        an upper bound on this figure."""
        with self._lock:
            runs = self.held.runs()
        pieces = self.memory_map.pieces
        return sum(self.backings[side].allocated_bytes_in(offset, length)
                   for gpa, size, side in runs for offset, length in pieces(gpa, size))

    def check(self) -> None:
        with self._lock:
            self.tracker.check()
            self.held.check()
            if self.stats.double_allocated_bytes != self.held.total or self._discarding < 0:
                raise AssertionError("engine: double_allocated_bytes disagrees with held memory")


def _overlap_bytes(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """Bytes in both of two sorted lists of disjoint ``(offset, size)`` ranges."""
    i = j = total = 0
    while i < len(a) and j < len(b):
        lo = max(a[i][0], b[j][0])
        hi = min(a[i][0] + a[i][1], b[j][0] + b[j][1])
        total += max(0, hi - lo)
        if a[i][0] + a[i][1] < b[j][0] + b[j][1]:
            i += 1
        else:
            j += 1
    return total


class _Batch:
    """Discards claimed under the lock and issued after it: ``runs`` of (gpa, size, side,
    pin), their ``bytes``, how many are ``pinned``, how many syscalls succeeded (``pieces``),
    which runs ``failed``."""

    __slots__ = ("runs", "bytes", "pinned", "pieces", "failed")

    def __init__(self):
        self.runs: list = []
        self.bytes = self.pinned = self.pieces = 0
        self.failed: list[int] = []


__all__ = ["ConversionEngine", "EngineStats", "SIDES"]
