"""The conversion engine: commits conversions and runs the discard policy's decisions."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from ..attrs.validate import ATTR_PRIVATE
from ..errors import AccessDenied, InvalidArgument, InvalidState, SyscallError
from ..memmap import GpaRange, GuestMemoryMap
from ..units import PAGE_SHIFT, PAGE_SIZE
from .held import HELD_PRIVATE, HELD_SHARED, SIDES, HeldMemory
from .policies import DISCARD, Policy
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


class ConversionEngine:
    """Takes conversions through the tracker and applies a discard policy to what they leave.

    The store, the tracker and the held books work in guest-physical addresses; the backings
    are files addressed by offset.  ``memory_map`` (a ``GuestMemoryMap``; default one region
    at GPA 0 covering the backings) translates between them: every discard, allocation,
    device access and measurement goes through it, and a range outside guest RAM is refused
    before anything is committed.
    ``commit_hooks`` run between request and completion (the VMM's KVM_SET_MEMORY_ATTRIBUTES,
    where the host has it); if one raises, the request is aborted and nothing changes.

    Concurrency: ``request`` happens outside the engine lock, so overlapping vCPUs get
    ``Busy``; completion, bookkeeping and the discard syscalls run under the lock, so a
    drain never punches a page another vCPU is bringing back into use.

    Invariants (``check()``): the tracker's and the held memory's; ``stats.double_allocated_bytes``
    equals the held bytes and never exceeds ``stats.peak_double_allocated_bytes``.
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
        self.held = HeldMemory(track_age=policy.drains)
        self.launched = False
        self._retry: list[tuple[int, int, int]] = []
        # Committed requests in commit order, when asked for: replaying them one by one on a
        # fresh store must give the same attributes (the concurrency tests' oracle).
        self.journal: list[Request] | None = [] if journal else None
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
    def memory(self) -> int:
        """Bytes of guest RAM."""
        return self.memory_map.ram_bytes

    def convert(self, gpa: int, size: int, to_private: bool, vcpu: int = 0) -> Conversion:
        """Convert a range of guest RAM; raises InvalidArgument (naming a hole) for a range
        that is not RAM and ``Busy`` if it overlaps a conversion in flight."""
        return self.convert_range(self.memory_map.range(gpa, size), to_private, vcpu)

    def convert_range(self, where: GpaRange, to_private: bool, vcpu: int = 0) -> Conversion:
        """``convert`` for a range already validated against this engine's memory map."""
        request = self.tracker.request_range(where, to_private, vcpu)
        with self._lock:
            try:
                for hook in self.commit_hooks:
                    hook(request)
            except BaseException:
                self.tracker.abort(request)
                raise
            conversion = self.tracker.complete(request)
            if self.journal is not None:
                self.journal.append(request)
            if conversion.changed:
                self._account(conversion)
            return conversion

    def _account(self, conversion: Conversion) -> None:
        now = self.clock()
        entered, left = (HELD_PRIVATE, HELD_SHARED) if conversion.to_private else (HELD_SHARED, HELD_PRIVATE)
        stats = self.stats
        stats.conversions += 1
        stats.pages_converted += conversion.pages_changed
        discards: list[tuple[int, int, int]] = []
        policy, held = self.policy, self.held
        holds_all = policy.holds(left)
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
        if self._retry:  # after the reclaim above: a page that came back needs no discard
            discards += self._take_retries()
        discards += self.policy.drain(self.held, now)
        self._discard(discards, now)

    def _discard(self, runs: list[tuple[int, int, int]], now: float) -> None:
        stats = self.stats
        for gpa, size, side in runs:
            backing = self.backings[side]
            try:
                for offset, length in self.memory_map.pieces(gpa, size):
                    backing.discard(offset, length)
                    stats.discards += 1
                    stats.discarded_bytes += length
            except SyscallError:
                # The conversion stays committed; the memory stays held and is retried later
                # (a piece already punched is punched again: harmless).
                stats.discard_failures += 1
                self.held.hold(gpa, size, side, now)
                self._retry.append((gpa, size, side))
        total = self.held.total
        stats.double_allocated_bytes = total
        stats.peak_double_allocated_bytes = max(stats.peak_double_allocated_bytes, total)
        stats.queued_bytes = total if self.policy.drains else sum(s for _, s, _ in self._retry)

    def _take_retries(self) -> list[tuple[int, int, int]]:
        """Failed discards whose memory is still held (a flip back may have reclaimed it)."""
        runs = []
        for gpa, size, side in self._retry:
            runs += self.held.release(gpa, size, side)
        self._retry.clear()
        return runs

    def tick(self) -> None:
        """Discard what the policy says is due now (age-based draining between exits)."""
        with self._lock:
            now = self.clock()
            self._discard(self._take_retries() + self.policy.drain(self.held, now), now)

    def flush(self) -> None:
        """Discard everything the policy would discard eventually."""
        with self._lock:
            now = self.clock()
            self._discard(self._take_retries() + self.policy.drain(self.held, now, force=True), now)

    # -- launch lifecycle -------------------------------------------------------------

    def set_initial(self, gpa: int, size: int, private: bool) -> None:
        """Initial state before launch (e.g. all guest RAM private, as QEMU sets it when it
        creates the slot): no conversion is counted and nothing is discarded."""
        self._require_unlaunched("set_initial")
        self.memory_map.range(gpa, size)
        with self._lock:
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
        private (SNP's launch update; the seed's in-place encryption)."""
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

    # -- host (device) access -------------------------------------------------------

    def require_shared(self, gpa: int, size: int) -> None:
        """Raise AccessDenied unless every page of the range of RAM is shared: the host and
        its devices never touch private memory."""
        where = self.memory_map.range(gpa, size)
        with self._lock:
            self._refuse_private(where, gpa, size)

    def _refuse_private(self, where: GpaRange, gpa: int, size: int) -> None:
        private = next(self.store.page_runs(where.first, where.stop), None)
        if private is not None:
            raise AccessDenied(f"host access to [{gpa:#x}, {gpa + size:#x}) refused: "
                               f"page {private[0] << PAGE_SHIFT:#x} is private")

    def _device_pages(self, gpa: int, n: int) -> GpaRange | None:
        """The pages ``n`` bytes at ``gpa`` touch (None for no bytes); InvalidArgument if they
        are not all RAM."""
        if not isinstance(gpa, int) or isinstance(gpa, bool) or gpa < 0:
            raise InvalidArgument("gpa", gpa, "must be a non-negative integer")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InvalidArgument("size", n, "must be a non-negative integer", hex_value=False)
        if not n:
            return None
        if not self.memory_map.contains(gpa, n):
            raise self.memory_map.outside(gpa, n)
        first = gpa & ~(PAGE_SIZE - 1)
        return GpaRange(first, ((gpa + n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) - first)

    def check_device_access(self, gpa: int, n: int) -> list[tuple[int, int]]:
        """The device-access rule both machines apply to ``n`` bytes at ``gpa``:
        InvalidArgument outside guest RAM (naming the hole), AccessDenied if a page they
        touch is private.  Returns the ``(backing offset, size)`` pieces of the bytes."""
        pages = self._device_pages(gpa, n)
        if pages is None:
            return []
        with self._lock:
            self._refuse_private(pages, gpa, n)
        return list(self.memory_map.pieces(gpa, n))

    @contextlib.contextmanager
    def device_access(self, gpa: int, n: int, owner: str = "device") -> Iterator[list[tuple[int, int]]]:
        """``check_device_access``, holding the pages (a tracker pin) while the body runs: a
        conversion of them meanwhile gets Busy, so the check and the access see the same
        state and a conversion cannot punch memory between them.  Yields the backing
        pieces; raises Busy (the device retries) if a conversion of the pages is in flight."""
        pages = self._device_pages(gpa, n)
        if pages is None:
            yield []
            return
        with self._lock:
            self._refuse_private(pages, gpa, n)
            pin = self.tracker.pin(pages, owner)
        try:
            yield list(self.memory_map.pieces(gpa, n))
        finally:
            self.tracker.unpin(pin)

    # -- accounting --------------------------------------------------------------------

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
            if self.stats.double_allocated_bytes != self.held.total:
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


__all__ = ["ConversionEngine", "EngineStats", "SIDES"]
