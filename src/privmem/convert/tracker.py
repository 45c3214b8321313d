"""Pending conversions: a guest asks, the VMM completes or aborts."""

from __future__ import annotations

import itertools
import threading
from typing import NamedTuple

from ..attrs.ranges import MemoryAttributes
from ..attrs.validate import ATTR_PRIVATE, check_range
from ..errors import Busy, InvalidArgument, InvalidState
from ..memmap import GpaRange
from ..units import PAGE_SHIFT


class Request(NamedTuple):
    """A guest's request to convert ``[gpa, gpa + size)``, in flight until completed or aborted."""

    id: int
    gpa: int
    size: int
    private: bool
    vcpu: int = 0

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def attributes(self) -> int:
        return ATTR_PRIVATE if self.private else 0


class Pin(NamedTuple):
    """A device holding ``[gpa, gpa + size)`` (mid-DMA): no conversion may touch it until it
    is dropped (the reference count the in-place ABI answers EAGAIN for)."""

    id: int
    gpa: int
    size: int
    owner: str = "device"

    @property
    def end(self) -> int:
        return self.gpa + self.size


class Conversion(NamedTuple):
    """A committed request.  ``changed`` lists, ascending, exactly the ``(gpa, size)``
    sub-ranges whose state changed: what a discard policy must act on."""

    request: Request
    changed: tuple[tuple[int, int], ...]

    @property
    def to_private(self) -> bool:
        return self.request.private

    @property
    def pages_changed(self) -> int:
        return sum(size for _, size in self.changed) >> PAGE_SHIFT


class ConversionTracker:
    """Owns the pending state of conversions on top of a ``MemoryAttributes`` store.

    The UPM thread's design for software-protected VMs: a guest hypercall marks a range
    pending; the VMM completes the transaction (attributes change atomically) or aborts
    it (nothing changes).  A request overlapping one still in flight raises ``Busy``,
    the EAGAIN a guest retries on.  Pending ranges are kept beside the store, not in it:
    in flight there are at most a few (one per vCPU), so a scan beats a second index.

    Devices pin ranges while they move data (``pin``/``unpin``): a request overlapping a pin
    is Busy too, and a pin overlapping a request in flight is refused with Busy, so a
    device's check of a range and its access happen with no conversion in between.  Busy
    carries ``gpa``, the first page of the overlap.

    Invariants (``check()``): in-flight requests are pairwise disjoint and disjoint from every
    pin (pins may overlap each other: several devices may read one buffer); each has a valid
    page range; a looked-ahead answer (``changed_ranges``) is kept only for a request in flight
    and not yet committed; the store's own invariants hold.  All methods are thread-safe: vCPU
    threads share one tracker, and it is the only writer of its store.
    """

    def __init__(self, store: MemoryAttributes):
        self.store = store
        self._inflight: dict[int, Request] = {}
        self._pins: dict[int, Pin] = {}
        self._committed: set[int] = set()       # in flight, committed, not yet released
        self._prepared: dict[int, tuple] = {}   # changed_ranges' answer, for the commit that follows
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def request(self, gpa: int, size: int, private: bool, vcpu: int = 0) -> Request:
        """Mark ``[gpa, gpa + size)`` pending; Busy if it overlaps a request in flight.
        O(requests in flight)."""
        check_range(gpa, size)
        return self.request_range(GpaRange(gpa, size), private, vcpu)

    def request_range(self, where: GpaRange, private: bool, vcpu: int = 0) -> Request:
        """``request`` for a range already validated (a ``GpaRange``).  The side and the vCPU
        come from callers (the API), so their types are checked here, where every conversion
        enters: a truthy string is not a side."""
        if not isinstance(private, bool):
            raise InvalidArgument("to_private", private, "must be True or False", hex_value=False)
        if isinstance(vcpu, bool) or not isinstance(vcpu, int) or vcpu < 0:
            raise InvalidArgument("vcpu", vcpu, "must be an integer >= 0", hex_value=False)
        gpa, size = where
        end = gpa + size
        with self._lock:
            if self._inflight:
                self._refuse_overlap(gpa, end, self._inflight.values(), "request")
            if self._pins:
                self._refuse_overlap(gpa, end, self._pins.values(), "pin")
            request = Request(next(self._ids), gpa, size, private, vcpu)
            self._inflight[request.id] = request
            return request

    @staticmethod
    def _refuse_overlap(gpa: int, end: int, others, what: str) -> None:
        for other in others:
            if other.gpa < end and gpa < other.gpa + other.size:
                who = f"of vCPU {other.vcpu}" if what == "request" else f"held by {other.owner}"
                raise Busy(f"[{gpa:#x}, {end:#x}) overlaps {what} {other.id} {who} "
                           f"[{other.gpa:#x}, {other.end:#x}) still in flight", gpa=max(gpa, other.gpa))

    @property
    def lock(self):
        """The lock every commit takes: held, the store is in no conversion's middle (a
        device's check of it and its pin, ``pin_locked``, see one state)."""
        return self._lock

    def pin(self, where: GpaRange, owner: str = "device", exempt: Request | None = None) -> Pin:
        """Hold a validated range for a device (or a discard in progress); Busy if a
        conversion of it is in flight, other than ``exempt`` (the conversion on whose behalf
        the pin is taken).  O(requests in flight)."""
        with self._lock:
            return self.pin_locked(where, owner, exempt)

    def pin_locked(self, where: GpaRange, owner: str = "device", exempt: Request | None = None) -> Pin:
        """``pin`` for a caller holding ``lock``."""
        gpa, size = where
        others = self._inflight.values() if exempt is None else \
            [r for r in self._inflight.values() if r.id != exempt.id]
        self._refuse_overlap(gpa, gpa + size, others, "request")
        pin = Pin(next(self._ids), gpa, size, owner)
        self._pins[pin.id] = pin
        return pin

    def unpin(self, pin: Pin) -> None:
        with self._lock:
            if self._pins.pop(pin.id, None) is None:
                raise InvalidState(f"pin {pin.id} is not held (already dropped)")

    def complete(self, request: Request, journal: list | None = None) -> Conversion:
        """Commit a request and take it out of flight, under one hold of the lock (``commit``
        then ``release``, for a committer with nothing to do in between); the request joins
        ``journal``, where given, in commit order."""
        with self._lock:
            conversion = self._commit(request)
            self._committed.remove(conversion.request.id)
            del self._inflight[conversion.request.id]
            if journal is not None:
                journal.append(request)
            return conversion

    def release(self, request: Request) -> None:
        """Take a committed request out of flight: its range is open to other requests."""
        with self._lock:
            self._take(request, "release")          # not committed: raises, naming why

    def commit(self, request: Request) -> Conversion:
        """Commit a request: its pages take the new attributes, and it stays in flight (its
        range closed to other requests) until ``release``, so the committer can finish what
        the change needs (discards) before anyone converts the pages again.  The stored
        request is used, not the caller's copy of it; committing twice is refused.
        O(log runs + runs replaced)."""
        with self._lock:
            return self._commit(request)

    def _commit(self, request: Request) -> Conversion:
        key = getattr(request, "id", None)
        stored = self._inflight.get(key)
        if stored is None or key in self._committed:
            why = "already committed (release it)" if stored is not None else \
                "not in flight (already completed or aborted)"
            raise InvalidState(f"cannot commit request {getattr(request, 'id', request)!r}: it is {why}")
        self._committed.add(key)
        request = stored
        first, end = request.gpa >> PAGE_SHIFT, (request.gpa + request.size) >> PAGE_SHIFT
        target = ATTR_PRIVATE if request.private else 0
        # What changed_ranges found still holds: the request has been in flight since,
        # its range closed to every other request.
        changed = self._prepared.pop(key, None)
        if changed is None:
            changed = self._changed(first, end, target)
        if changed:
            self.store.assign_pages(first, end, target)
        return Conversion(request, changed)

    def abort(self, request: Request) -> None:
        with self._lock:
            self._take(request, "abort")

    def convert(self, gpa: int, size: int, private: bool, vcpu: int = 0) -> Conversion:
        """Request and complete in one step (the VMM's fast path when nothing can fail between)."""
        return self.complete(self.request(gpa, size, private, vcpu))

    def changed_ranges(self, request: Request) -> tuple[tuple[int, int], ...]:
        """What committing ``request`` would change (it stays in flight: nobody else can
        change those pages meanwhile), so a committer can prepare before the store moves."""
        with self._lock:
            key = getattr(request, "id", None)
            stored = self._inflight.get(key)
            if stored is None or key in self._committed:
                raise InvalidState(f"cannot look ahead at request {key!r}: it is not in flight uncommitted")
            first, end = stored.gpa >> PAGE_SHIFT, (stored.gpa + stored.size) >> PAGE_SHIFT
            changed = self._changed(first, end, ATTR_PRIVATE if stored.private else 0)
            self._prepared[key] = changed
            return changed

    def pending(self, gpa: int, size: int) -> bool:
        check_range(gpa, size)
        end = gpa + size
        with self._lock:
            return any(r.gpa < end and gpa < r.end for r in self._inflight.values())

    def in_flight(self) -> list[Request]:
        with self._lock:
            return sorted(self._inflight.values(), key=lambda r: r.id)

    def _take(self, request: Request, verb: str) -> Request:
        key = getattr(request, "id", None)
        stored = self._inflight.get(key)
        if stored is None or (verb == "abort") == (key in self._committed):
            what = "committed: release it" if verb == "abort" and stored is not None else \
                "not committed: commit or abort it" if stored is not None else \
                "not in flight (already completed or aborted)"
            raise InvalidState(f"cannot {verb} request {key!r}: it is {what}")
        del self._inflight[key]
        self._committed.discard(key)
        self._prepared.pop(key, None)
        return stored

    def _changed(self, first: int, end: int, target: int) -> tuple[tuple[int, int], ...]:
        """Byte sub-ranges of the gfn range whose attributes differ from ``target``, coalesced."""
        pages: list[tuple[int, int]] = []
        cursor = first
        for lo, hi, value in self.store.page_runs(first, end):
            if target:
                if lo > cursor:
                    pages.append((cursor, lo))
                if value != target:
                    pages.append((lo, hi))
                cursor = hi
            else:
                pages.append((lo, hi))
        if target and cursor < end:
            pages.append((cursor, end))
        out: list[tuple[int, int]] = []
        for lo, hi in pages:
            if out and out[-1][1] == lo:
                out[-1] = (out[-1][0], hi)
            else:
                out.append((lo, hi))
        return tuple((lo << PAGE_SHIFT, (hi - lo) << PAGE_SHIFT) for lo, hi in out)

    def check(self) -> None:
        with self._lock:
            live = sorted(self._inflight.values(), key=lambda r: r.gpa)
            for a, b in zip(live, live[1:]):
                if a.end > b.gpa:
                    raise AssertionError(f"in-flight requests {a.id} and {b.id} overlap")
            for pin in self._pins.values():
                for request in live:
                    if request.gpa < pin.end and pin.gpa < request.end:
                        raise AssertionError(f"pin {pin.id} overlaps request {request.id} in flight")
            stale = set(self._prepared) - (set(self._inflight) - self._committed)
            if stale:
                raise AssertionError(f"looked-ahead changes kept for requests not in flight uncommitted: {stale}")
            self.store.check()
