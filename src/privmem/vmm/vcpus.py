"""vCPU threads: KVM_RUN, count, dispatch; and the one way every run stops.

One thread per vCPU runs ``KVM_RUN`` (which releases the GIL) and hands each exit to the
machine's handlers.  Every way a run ends goes through the same path before the caller sees
anything, as unicorn's bindings do: the guest finishes; a handler raises (recorded, every
vCPU kicked out of KVM_RUN, re-raised to the caller); the timeout passes (``Interrupted``);
``stop()`` from any thread, e.g. ``Machine.close()`` (``Interrupted``); Ctrl-C or SIGTERM in
the calling thread (the exception is re-raised once every vCPU thread has been joined, so
nothing is unmapped under a running vCPU).

Kicking: ``immediate_exit = 1`` makes a KVM_RUN about to start return at once, and a signal
(``kvm.kick``) interrupts one in progress; a thread is signalled only while it is known to be
in its loop, so a signal never goes to a thread id that has been reused.

The pause protocol (``others_parked``) holds every other vCPU outside KVM_RUN while one vCPU
changes something they must not see half done (the memslot-tracking machine's surgery).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from ..errors import GuestError, Interrupted
from ..kvm import uapi
from ..kvm.kick import kick
from ..threads import join_all, start_all
from .firmware import PORT_NOP

Handler = Callable[[int], bool]     # handler(vcpu index) -> True when the vCPU is done


class VcpuStats:
    """One vCPU's counters: each is written only by its vCPU's thread (no locks on the hot
    path) and summed by the machine."""

    __slots__ = ("exits", "conversions", "psc_requests", "psc_errors", "psc_retries", "data_errors",
                 "dma_errors", "unhandled_io", "mmio", "refills", "delays", "psc_ns", "done",
                 "last_fault", "fault_repeats")

    COUNTERS = ("conversions", "psc_requests", "psc_errors", "psc_retries", "data_errors", "dma_errors",
                "unhandled_io", "mmio", "refills", "delays")

    def __init__(self):
        self.exits = [0] * 256
        self.psc_ns = 0                 # time spent handling PSC exits (perf_counter_ns)
        for name in self.COUNTERS:
            setattr(self, name, 0)
        self.done = False
        self.last_fault = None
        self.fault_repeats = 0


class VcpuRunner:
    """Runs ``vcpus`` (``privmem.kvm.Vcpu``) through their exits.

    ``ports`` maps an I/O port to its handler (``unknown_port`` for any other port),
    ``handlers`` an exit reason to its handler (``unhandled`` raises for any other); the no-op
    port is answered inline.  ``prepare(index)`` runs before each vCPU's thread
    starts (registers, ring).  ``run(timeout)`` returns when every vCPU is done.
    """

    def __init__(self, vcpus: list, stats: list[VcpuStats], ports: dict[int, Handler],
                 handlers: dict[int, Handler], unhandled: Callable[[int, int], None], unknown_port: Handler):
        self.vcpus, self.stats = vcpus, stats
        self.ports, self.handlers, self.unhandled, self.unknown_port = ports, handlers, unhandled, unknown_port
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._ended: list[threading.Event] = []
        self._in_loop = [False] * len(vcpus)
        self._stopping = False
        self._stop_reason: str | None = None
        self._error: BaseException | None = None
        self._pause = threading.Condition()
        self._pauser: int | None = None
        self._parked: set[int] = set()
        self.pauses = 0
        self.running = False

    # -- running -------------------------------------------------------------------------

    def run(self, timeout: float | None = None, prepare: Callable[[int], None] | None = None) -> None:
        """Run every vCPU until it is done; raises what a handler raised, ``Interrupted`` on
        timeout or ``stop()``, or the caller's KeyboardInterrupt once all are joined."""
        with self._lock:
            if self.running:
                from ..errors import InvalidState
                raise InvalidState("a run is already in progress on this machine")
            self.running = True
            self._stopping, self._stop_reason, self._error = False, None, None
        try:
            for index, vcpu in enumerate(self.vcpus):
                vcpu.kvm_run.immediate_exit = 0
                self.stats[index].done = False
                self.stats[index].last_fault = None
                if prepare is not None:
                    prepare(index)
            self._ended = [threading.Event() for _ in self.vcpus]
            self._threads = [threading.Thread(target=self._main, args=(i,), name=f"privmem-vcpu{i}", daemon=True)
                             for i in range(len(self.vcpus))]
            for index in range(len(self._threads)):
                self._in_loop[index] = True
            start_all(self._threads)
            self._wait(timeout)
        except BaseException:
            self.stop("interrupted")
            self._join_all()
            raise
        finally:
            with self._lock:
                self.running = False
        self._join_all()
        error, reason = self._error, self._stop_reason
        if error is not None:
            raise error
        if reason == "timeout":
            raise Interrupted(f"run timed out after {timeout} s; vCPU 0 stopped at "
                              f"{GuestError('', self.vcpus[0].registers())}".rstrip(), reason)
        if reason is not None:
            raise Interrupted(f"run stopped before it finished ({reason})", reason)

    def _wait(self, timeout: float | None) -> None:
        """Until every vCPU has ended (or the deadline stops them): the wait Ctrl-C interrupts,
        on the events the threads set, never inside Thread.join (threads.py)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for ended in self._ended:
            while not ended.is_set():
                wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
                ended.wait(wait)
                if deadline is not None and time.monotonic() >= deadline and not ended.is_set():
                    deadline = None
                    self.stop("timeout")

    def _join_all(self) -> None:
        """Join every vCPU thread, with Ctrl-C held off until they are all gone, kicking
        again any that has not stopped yet."""
        join_all(self._threads, nudge=lambda: self.stop("interrupted"))
        self._threads = []

    def stop(self, reason: str = "stopped") -> None:
        """Kick every vCPU out of KVM_RUN and end the run; safe from any thread, idempotent
        (the first reason is kept)."""
        with self._lock:
            self._stopping = True
            if self._stop_reason is None and self._error is None:
                self._stop_reason = reason
            for index, vcpu in enumerate(self.vcpus):
                if vcpu.kvm_run is not None:
                    vcpu.kvm_run.immediate_exit = 1
                if self._in_loop[index] and index < len(self._threads) and self._threads[index].ident:
                    kick(self._threads[index].ident)
        with self._pause:
            self._pause.notify_all()

    def fail(self, error: BaseException) -> None:
        """End the run with ``error`` (re-raised by ``run``), e.g. from a helper thread such
        as the drainer: from any thread."""
        with self._lock:
            if self._error is None and self._stop_reason is None:
                self._error = error
        self.stop("error")

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _main(self, index: int) -> None:
        try:
            self._loop(index)
        except BaseException as exc:
            with self._lock:
                if self._error is None and self._stop_reason is None:
                    self._error = exc
            self.stop("error")
        finally:
            with self._lock:
                self._in_loop[index] = False
            self._ended[index].set()

    def _loop(self, index: int) -> None:
        """The hot path: KVM_RUN, count, dispatch.  The no-op port is answered inline."""
        vcpu = self.vcpus[index]
        io = vcpu.kvm_run.io
        counts = self.stats[index].exits
        ports, handlers, unhandled, unknown_port = self.ports, self.handlers, self.unhandled, self.unknown_port
        run = vcpu.run
        exit_io, port_nop = uapi.KVM_EXIT_IO, PORT_NOP
        while not self._stopping:
            reason = run()
            counts[reason & 0xFF] += 1
            if reason == exit_io:
                port = io.port
                if port == port_nop:
                    continue
                handler = ports.get(port, unknown_port)
            else:
                handler = handlers.get(reason)
            if handler is None:
                unhandled(index, reason)
            elif handler(index):
                return

    # -- pausing the others --------------------------------------------------------------

    @contextlib.contextmanager
    def others_parked(self, index: int):
        """Hold every other vCPU outside KVM_RUN while the body runs.  A vCPU waiting here
        for its own turn counts as parked, so two vCPUs that both want a pause cannot wait
        for each other."""
        pause = self._pause
        with pause:
            while self._pauser is not None:
                self._parked.add(index)
                pause.notify_all()
                pause.wait()
            self._parked.discard(index)
            self._pauser = index
            self.pauses += 1
            with self._lock:
                for other, vcpu in enumerate(self.vcpus):
                    if other != index and self._in_loop[other]:
                        vcpu.kvm_run.immediate_exit = 1      # enough for a thread not yet in KVM_RUN
                        ident = self._threads[other].ident
                        if ident:
                            kick(ident)
            # A vCPU that leaves its loop (done, stopping) does not notify: poll for it.
            while not all(other == index or other in self._parked or not self._in_loop[other]
                          for other in range(len(self.vcpus))):
                pause.wait(0.01)
        try:
            yield
        finally:
            with pause:
                self._pauser = None
                pause.notify_all()

    def park_if_paused(self, index: int) -> None:
        """Called on a vCPU's KVM_EXIT_INTR: wait while another vCPU holds a pause."""
        pause = self._pause
        with pause:
            if self._pauser is not None and self._pauser != index:
                self._parked.add(index)
                pause.notify_all()
                while self._pauser is not None and not self._stopping:
                    pause.wait(0.05)
                self._parked.discard(index)
            if not self._stopping:
                self.vcpus[index].kvm_run.immediate_exit = 0


__all__ = ["Handler", "VcpuRunner", "VcpuStats"]
