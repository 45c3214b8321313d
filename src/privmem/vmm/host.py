"""The host backend: the same engine, backings, memory map, programs and device rules as the KVM
machine, with a Python guest instead of the player.

For machines without a usable /dev/kvm and for fast tests.  Each vCPU is a Python thread that
runs its spool of records (program.py) in order: conversions go through
``engine.convert_range`` (waiting while Busy, as the player rings again on "retry"), guest
reads and writes go to the backing of the view they name, DMA goes through the device model's
rules (device.py: pinned, chunked, shared pages only).  The threads check a stop flag between
ops, so a timeout, ``close()`` from another thread, Ctrl-C or an error stops every one of them
before anything is unmapped.

The VMM side seals the private backing at launch as the machine does.  The guest keeps a
mapping of its own (``_guest_private``): on real hardware that is the guest's page tables,
which the VMM does not have.  Data checks are always exact: the Python guest writes every byte.
"""

from __future__ import annotations

import threading
import time

from ..attrs import MemoryAttributes
from ..backing import PrivateBacking, SharedBacking
from ..backing.inplace import InPlaceBacking
from ..backing.mapping import HostMapping
from ..convert import ConversionEngine, ConversionTracker, make_policy
from ..convert.drainer import Drainer
from ..errors import AccessDenied, Busy, Interrupted, InvalidArgument, InvalidState
from ..memmap import GpaRange, GuestMemoryMap
from ..threads import join_all, start_all
from . import program
from .device import transfer
from .front import MachineFront
from .machine import check_backing, check_machine_size, make_in_place_engine, resolve_memory_map
from .program import (K_CONVERT, K_CONVERT_PAGE, K_DELAY, K_DMA_IN, K_DMA_OUT, K_EXITS, K_TOUCH, K_VERIFY,
                      K_WRITE, view_of)
from .result import OpsResult
from .vcpus import VcpuStats

_BUSY_SLEEP = 20e-6


class HostMachine(MachineFront):
    """``HostMachine(memory="64M", vcpus=1, engine=None, policy="never", *, layout=None,
    memory_map=None, initial="private")``: the machine's interface (``run_ops``,
    ``shared_read``, ``shared_write``, ``shared_matches``, ``engine``, ``memory_map``, the
    counters) without KVM.  ``engine`` is None (built with ``policy``), an engine, or a
    factory ``engine(shared, private, memory_map)``.  A context manager; ``close()`` is
    idempotent and safe from another thread during a run."""

    backend = "host"
    data_check = "full"

    def __init__(self, memory: int | str = "64M", vcpus: int = 1, engine=None, policy: str = "never", *,
                 layout: str | None = None, memory_map: GuestMemoryMap | None = None, initial: str = "private",
                 backing: str = "two-file"):
        self.memory_map = resolve_memory_map(memory, layout, memory_map)
        self.backing = check_backing(backing)
        check_machine_size(self.memory_map, vcpus, "host")
        if initial not in ("private", "shared"):
            raise InvalidArgument("initial", initial, "must be 'private' or 'shared'", hex_value=False)
        self.memory, self.vcpus = self.memory_map.ram_bytes, vcpus
        self.launched = False
        self._closed = False
        self._busy = threading.Lock()
        self._stopping = False
        self._stop_reason: str | None = None
        self.stats = [VcpuStats() for _ in range(vcpus)]
        self.failures: list[dict] = []
        self.shared = self.private = self._guest_private = self.engine = None
        try:
            if self.backing == "in-place":
                self.shared = self.private = InPlaceBacking.standin(self.memory, initial_shared=initial == "shared")
                if engine is None:
                    engine = make_in_place_engine(self.private, self.memory_map, policy)
            else:
                self.shared = SharedBacking.create(self.memory)
                self.private = PrivateBacking.standin(self.memory)
            self._guest_private = HostMapping(self.private.fd, self.memory, private=True)
            if engine is None:
                engine = ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy(policy, self.memory),
                                          self.shared, self.private, memory_map=self.memory_map)
            elif not hasattr(engine, "convert"):   # a factory over this machine's backings, as Machine takes
                engine = engine(self.shared, self.private, self.memory_map)
            self.engine = engine
            self.store = engine.store
            for region in self.memory_map:
                self.engine.set_initial(region.gpa, region.size, initial == "private")
        except BaseException:
            self.close()
            raise

    # -- counters ----------------------------------------------------------------------------

    def stopping(self) -> bool:
        return self._stopping

    # -- the Python guest ----------------------------------------------------------------

    def _guest_pieces(self, addr: int, end: int):
        """(mapping, [(offset, size)]) a guest access through a view reaches."""
        view, gpa = view_of(addr)
        mapping = self._guest_private if view == "private" else self.shared
        return mapping, list(self.memory_map.pieces(gpa, end - addr))

    def _convert(self, index: int, record) -> None:
        where = GpaRange(record.addr, record.end - record.addr)
        stats = self.stats[index]
        while True:
            try:
                self.engine.convert_range(where, bool(record.flags & program.F_PRIVATE), index)
                break
            except Busy:
                stats.psc_retries += 1
                if self._stopping:
                    return          # not converted, not counted: the run ends as interrupted
                time.sleep(_BUSY_SLEEP)
        stats.conversions += 1
        stats.psc_requests += 1

    def _run_vcpu(self, index: int, spool) -> None:
        stats = self.stats[index]
        buffer = bytearray(1 << 20)
        for record in (spool if spool is not None else ()):
            if self._stopping:
                return
            try:
                self._run_record(index, record, stats, buffer)
            except AccessDenied:
                # in place, a guest access through a revoked shared view: what the KVM machine
                # sees as an MMIO exit (reads all-ones, writes dropped), counted the same way
                stats.mmio += 1
                stats.data_errors += record.kind == K_VERIFY

    def _run_record(self, index: int, record, stats, buffer: bytearray) -> None:
        """One record of the Python guest."""
        kind = record.kind
        if kind in (K_CONVERT, K_CONVERT_PAGE):
            stats.exits[2] += 1
            self._convert(index, record)
        elif kind == K_WRITE:
            mapping, pieces = self._guest_pieces(record.addr, record.end)
            for offset, size in pieces:
                mapping.fill(offset, size, record.pattern)
        elif kind == K_VERIFY:
            mapping, pieces = self._guest_pieces(record.addr, record.end)
            if any(mapping.read(offset, size).count(record.pattern) != size for offset, size in pieces):
                stats.data_errors += 1
                view, gpa = view_of(record.addr)
                self.record_failure(index, "verify", gpa=gpa, view=view, expected=record.pattern)
        elif kind == K_TOUCH:
            mapping, pieces = self._guest_pieces(record.addr, record.end)
            for offset, size in pieces:
                for page in range(offset, offset + size, 4096):
                    mapping.write(page, mapping.read(page, 1))
        elif kind in (K_DMA_IN, K_DMA_OUT):
            stats.exits[2] += 1
            self._dma(index, record, buffer)
        elif kind == K_EXITS:
            stats.exits[2] += record.count
        elif kind == K_DELAY:
            stats.delays += 1
            wake = self.run_started + record.arg / 1e6
            while not self._stopping and time.monotonic() < wake:
                time.sleep(min(0.05, max(0.0, wake - time.monotonic())))

    def _dma(self, index: int, record, buffer: bytearray) -> None:
        kind = "dma_in" if record.kind == K_DMA_IN else "dma_out"
        gpa, size = record.addr, record.end - record.addr
        refused = transfer(self, index, kind, gpa, size, record.pattern, buffer)
        if refused is not None:
            self.stats[index].dma_errors += 1
            self.record_failure(index, kind, gpa=gpa, size=size, error=refused)

    def _run_program(self, compiled, timeout: float | None) -> OpsResult:
        if not self._busy.acquire(blocking=False):
            raise InvalidState("run_ops is already running on this machine")
        try:
            if self._closed:
                raise InvalidState("machine is closed")
            self._stopping, self._stop_reason = False, None
            errors: list[BaseException] = []
            spools = compiled.spools
            before = {name: self._total(name) for name in OpsResult.COUNTERS if name != "pages_converted"}
            converted_before, exits_before = self.engine.stats.pages_converted, self.exits

            ended = [threading.Event() for _ in range(self.vcpus)]

            def main(index):
                try:
                    self._run_vcpu(index, spools[index] if index < len(spools) else None)
                except BaseException as error:  # re-raised in the caller, as the machine does
                    errors.append(error)
                    self._stop("error")
                finally:
                    ended[index].set()

            self.launch()
            threads = [threading.Thread(target=main, args=(i,), name=f"privmem-host-vcpu{i}", daemon=True)
                       for i in range(self.vcpus)]
            start = time.perf_counter()
            try:
                with Drainer.for_engine(self.engine, on_error=lambda exc: (errors.append(exc), self._stop("error"))):
                    self.run_started = time.monotonic()
                    start_all(threads)
                    self._wait(ended, timeout)
                    join_all(threads)
            except BaseException:
                self._stop("interrupted")
                join_all(threads)
                raise
            wall = time.perf_counter() - start
            if errors:
                raise errors[0]
            if self._stop_reason is not None:
                raise Interrupted(f"run stopped before it finished ({self._stop_reason})"
                                  + (f": timed out after {timeout} s" if self._stop_reason == "timeout" else ""),
                                  self._stop_reason)
            counts = {name: self._total(name) - before[name] for name in before}
        finally:
            self._busy.release()
        exits = self.exits - exits_before
        return OpsResult(ops=compiled.ops, wall_time=wall, exits=exits, exits_by_reason={"io": exits} if exits else {},
                         pages_converted=self.engine.stats.pages_converted - converted_before, **counts)

    def _wait(self, ended, timeout: float | None) -> None:
        """Until every vCPU has ended (or the deadline stops them), interruptibly (threads.py)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in ended:
            while not event.is_set():
                event.wait(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic())))
                if deadline is not None and time.monotonic() >= deadline and not event.is_set():
                    self._stop("timeout")
                    deadline = None

    def _stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stopping = True

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop a run in progress (from another thread), wait for it, then unmap; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._busy.locked():
            self._stop("closed")
        with self._busy:
            if self.engine is not None:
                self.engine.close()                  # refused from now on, before the backings go
            if self._guest_private is not None:
                self._guest_private.unmap()
            for backing in (self.private, self.shared):
                if backing is not None:
                    backing.close()

    def __repr__(self) -> str:
        return f"<HostMachine {self.memory_map.describe()} vcpus={self.vcpus}{' closed' if self._closed else ''}>"


__all__ = ["HostMachine"]
