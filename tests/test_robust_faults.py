"""Fault injection (issue 6): failing discard syscalls, signals during KVM_RUN, guests that
crash.  In every case the conversions the guest asked for stay committed, no data is lost,
errors come back as privmem errors carrying what a reader needs (errno, registers), and the
machine releases every fd, mapping and thread it took.
"""

from __future__ import annotations

import errno
import signal
import threading
import time

import pytest

from privmem import GuestError
from privmem.attrs import ATTR_PRIVATE, MemoryAttributes
from privmem.backing import FaultyBacking
from privmem.convert import ConversionEngine, ConversionTracker
from privmem.units import MiB
from privmem.ops import Op as GuestOp
from privmem.vmm import Machine
from privmem.vmm.host import HostMachine

from .policy_helpers import policy_with
from .resources import program_of, resources
from .test_robust_bad_input import snapshot

PAGE = 4096
MEMORY = 16 * MiB
BASE = 4 * MiB
TIMEOUT = 30


@pytest.fixture(scope="module", autouse=True)
def warm_up():
    """The first machine of the process installs the kick handler and loads libc pieces that
    stay; the leak checks below compare against a process that has done that already."""
    touch = [GuestOp("touch", BASE, PAGE, v, view="private") for v in range(4)]
    try:
        with Machine("8M", 4) as m:
            m.run_ops(touch, timeout=TIMEOUT)
    except Exception:        # no usable KVM: the kvm-marked tests are skipped anyway
        pass
    with HostMachine("8M", 4) as m:
        m.run_ops(touch)


# ---- discard failures ----------------------------------------------------------------------

class Faults:
    """A Machine(engine=...) factory wrapping both backings in FaultyBacking."""

    def __init__(self, policy: str, shared_rule=None, private_rule=None):
        self.policy, self.rules = policy, (shared_rule, private_rule)
        self.shared = self.private = None

    def __call__(self, shared, private, memory_map=None):
        shared_rule, private_rule = self.rules
        self.shared = FaultyBacking(shared, {"discard": shared_rule} if shared_rule else None)
        self.private = FaultyBacking(private, {"discard": private_rule} if private_rule else None)
        return ConversionEngine(ConversionTracker(MemoryAttributes()),
                                policy_with(self.policy, shared.size, budget=4 * MiB, max_age=3600),
                                self.shared, self.private,
                                journal=True, memory_map=memory_map)

    @property
    def injected(self) -> list:
        return self.shared.injected + self.private.injected


def make_machine(backend: str, faults: Faults, vcpus: int = 1):
    if backend == "kvm":
        return Machine(MEMORY, vcpus, engine=faults, initial="shared")
    machine = HostMachine(MEMORY, vcpus, initial="shared")     # HostMachine takes no engine factory:
    machine.engine = faults(machine.shared, machine.private, machine.memory_map)  # swap in one over its
    return machine                                                                 # own backings


BACKENDS = [pytest.param("kvm", marks=pytest.mark.kvm), "host"]


def W(kind, gpa, size, **kw):
    return GuestOp(kind, gpa, size, kw.pop("vcpu", 0), **kw)


A, B, C, D, E = (BASE + i * 64 * PAGE for i in range(5))
N = 4 * PAGE


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_discards_keep_conversions_and_are_retried_without_losing_data(backend):
    before = resources()
    faults = Faults("eager", shared_rule=[errno.ENOMEM, errno.EIO, errno.ENOMEM], private_rule=[errno.EIO])
    with make_machine(backend, faults) as m:
        r = m.run_ops([
            W("dma_in", A, N, pattern=0x11),
            W("convert", A, N, to="private"),             # shared discard of A: ENOMEM (held, queued)
            W("write", A, N, view="private", pattern=0x22),
            W("convert", B, N, to="private"),             # retry of A: EIO; B's own discard: ENOMEM
            W("write", B, N, view="private", pattern=0x33),
            W("dma_in", D, N, pattern=0x44),
            W("convert", D, N, to="private"),             # retries of A and B pass, D's discard passes
            W("convert", D, N, to="shared"),              # private discard of D: EIO
            W("dma_in", D, N, pattern=0x55),
            W("verify", A, N, view="private", pattern=0x22),
            W("verify", B, N, view="private", pattern=0x33),
            W("verify", D, N, view="shared", pattern=0x55),
            W("dma_out", D, N, pattern=0x55),
        ], timeout=TIMEOUT)
        stats = m.engine.stats
        assert [(name, err) for name, err, _ in faults.injected] == [
            ("discard", errno.ENOMEM), ("discard", errno.EIO), ("discard", errno.ENOMEM), ("discard", errno.EIO)]
        assert stats.discard_failures == 4
        assert r.data_errors == 0 and r.dma_errors == 0, r.failures
        # every conversion committed although its discard failed
        assert m.engine.store.has(A, N, ATTR_PRIVATE) and m.engine.store.has(B, N, ATTR_PRIVATE)
        assert m.engine.store.has(D, N, 0)
        # A and B were retried and freed; D's private side is still queued for a retry
        assert m.shared.allocated_bytes_in(A, N) == 0 and m.shared.allocated_bytes_in(B, N) == 0
        assert m.engine.held.runs() == [(D, N, 2)] and stats.queued_bytes == N
        # a later conversion (or a tick) retries it; the data on the shared side survives that
        r = m.run_ops([W("convert", E, N, to="private"), W("dma_out", D, N, pattern=0x55),
                       W("verify", A, N, view="private", pattern=0x22)], timeout=TIMEOUT)
        assert r.data_errors == 0 and r.dma_errors == 0
        assert m.engine.held.runs() == [] and stats.queued_bytes == 0 and stats.double_allocated_bytes == 0
        assert m.private.allocated_bytes_in(D, N) == 0
        assert m.shared_read(D, N) == b"\x55" * N
        assert stats.discard_failures == 4 and len(faults.injected) == 4
        m.engine.check()
    assert resources() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_retried_discard_never_destroys_data_written_after_it_failed(backend):
    """F's shared discard fails; F flips back to shared (the retry runs in that same step,
    before anyone can write F), the device writes F, more conversions, ticks and a flush
    follow: F's data survives all of them."""
    before = resources()
    F = A
    faults = Faults("eager", shared_rule=[errno.ENOMEM, errno.ENOMEM])
    with make_machine(backend, faults) as m:
        r = m.run_ops([
            W("convert", F, N, to="private"),             # shared discard fails: held + queued
            W("convert", B, N, to="private"),             # retry of F fails again, B's discard passes
            W("convert", F, N, to="shared"),              # the flip back
            W("dma_in", F, N, pattern=0x66),
            W("convert", C, N, to="private"),             # more discards after the data arrived
            W("convert", B, N, to="shared"),
            W("dma_out", F, N, pattern=0x66),
            W("verify", F, N, view="shared", pattern=0x66),
        ], timeout=TIMEOUT)
        assert r.data_errors == 0 and r.dma_errors == 0, r.failures
        assert m.engine.stats.discard_failures == 2 and m.engine.store.has(F, N, 0)
        m.engine.tick()
        m.engine.flush()
        assert m.shared_read(F, N) == b"\x66" * N and m.engine.held.runs() == []
        m.engine.check()
    assert resources() == before


def test_a_page_flipping_back_reclaims_memory_whose_discard_failed():
    faults = Faults("eager", shared_rule=[errno.ENOMEM])
    with make_machine("host", faults) as m:
        m.run_ops([W("dma_in", A, N, pattern=1), W("convert", A, N, to="private"),
                   W("convert", A, N, to="shared")])
        stats = m.engine.stats
        assert stats.discard_failures == 1
        assert stats.reclaimed_bytes == N and stats.discards == 1     # only the private side of A
        assert m.shared.allocated_bytes_in(A, N) == N                  # the shared page was kept


@pytest.mark.parametrize("err", [errno.ENOMEM, errno.EIO])
def test_lazy_drain_failures_are_retried_by_tick(err):
    """A drain (lazy policy) whose discards fail keeps the memory held; ticks retry it."""
    faults = Faults("lazy", shared_rule=[err, err])
    with make_machine("host", faults) as m:
        m.run_ops([W("convert", A, 64 * PAGE, to="private"), W("write", A, 64 * PAGE, view="private", pattern=7)])
        held = snapshot(m)["held"]
        assert held == [(A, 64 * PAGE, 1)]
        m.engine.flush()                                   # drains everything: fails
        assert m.engine.stats.discard_failures == 1 and snapshot(m)["held"] == held
        m.engine.tick()                                    # retry: fails again
        assert m.engine.stats.discard_failures == 2 and snapshot(m)["held"] == held
        m.engine.tick()                                    # retry: passes
        assert snapshot(m)["held"] == [] and m.engine.stats.discards == 1
        assert m.engine.store.has(A, 64 * PAGE, ATTR_PRIVATE)
        r = m.run_ops([W("verify", A, 64 * PAGE, view="private", pattern=7)])
        assert r.data_errors == 0


# ---- signals during KVM_RUN -----------------------------------------------------------------

@pytest.mark.kvm
def test_signals_during_kvm_run_are_resumed_and_lose_nothing():
    """Two vCPUs convert, write, verify, DMA and exit thousands of times while another thread
    sends SIGUSR1 and SIGALRM to both vCPU threads every ~0.2 ms.  KVM_RUN returns EINTR
    (KVM_EXIT_INTR), the loop re-enters, and the run completes with nothing lost."""
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: None)
    before = resources()
    try:
        with Machine(MEMORY, 2, initial="shared") as m:
            ops = []
            for v in (0, 1):
                base = BASE + v * MiB
                for i in range(12):
                    page = base + i * 8 * PAGE
                    ops += [GuestOp("convert", page, 8 * PAGE, v, to="private"),
                            GuestOp("write", page, 8 * PAGE, v, view="private", pattern=i + 1),
                            ("exits", v, 1000),
                            GuestOp("verify", page, 8 * PAGE, v, view="private", pattern=i + 1),
                            GuestOp("convert", page, 4 * PAGE, v, to="shared"),
                            GuestOp("dma_in", page, 4 * PAGE, v, pattern=0x80 + i),
                            GuestOp("verify", page, 4 * PAGE, v, view="shared", pattern=0x80 + i),
                            GuestOp("dma_out", page, 4 * PAGE, v, pattern=0x80 + i)]
            sent = {"n": 0}
            stop = threading.Event()

            def pester():
                signals = (signal.SIGUSR1, signal.SIGALRM)
                while not stop.is_set():
                    for thread in threading.enumerate():
                        if thread.name.startswith("privmem-vcpu") and thread.is_alive():
                            try:
                                signal.pthread_kill(thread.ident, signals[sent["n"] % 2])
                                sent["n"] += 1
                            except (ProcessLookupError, OSError):
                                pass
                    time.sleep(0.0002)

            pest = threading.Thread(target=pester, name="pester")
            pest.start()
            try:
                r = m.run_ops(program_of(m, ops), timeout=TIMEOUT)
            finally:
                stop.set()
                pest.join()
            assert sent["n"] > 100
            assert r.data_errors == 0 and r.dma_errors == 0 and r.psc_errors == 0, r.failures
            assert r.exits_by_reason.get("intr", 0) > 0          # some signals did interrupt KVM_RUN
            for v in (0, 1):
                for i in range(12):
                    page = BASE + v * MiB + i * 8 * PAGE
                    assert m.shared_read(page, 4 * PAGE) == bytes([0x80 + i]) * 4 * PAGE
                    assert m.engine.store.has(page + 4 * PAGE, 4 * PAGE, ATTR_PRIVATE)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert resources() == before


# ---- guests that crash -------------------------------------------------------------------------

def _break_paging(machine, vcpu: int) -> None:
    """Turn paging on with CR3 at an all-zero page table and an empty IDT: the first fetch
    page-faults, the #PF cannot be delivered (#GP), nor can the #DF: a triple fault."""
    v = machine.vcpu(vcpu)
    sregs = v.get_sregs()
    sregs.cr0 |= 1 << 31
    sregs.cr3 = BASE + 512 * PAGE
    sregs.idt.base, sregs.idt.limit = 0, 0
    v.set_sregs(sregs)
    return sregs


@pytest.mark.kvm
def test_triple_fault_is_a_guest_error_with_registers_and_releases_everything():
    before = resources()
    with Machine(MEMORY, 1) as m:
        good = m.vcpu(0).get_sregs()
        _break_paging(m, 0)
        with pytest.raises(GuestError, match=r"vCPU 0: guest shut down \(triple fault\)") as info:
            m.run_ops([W("write", A, PAGE, view="private", pattern=1)], timeout=TIMEOUT)
        regs = info.value.registers
        assert regs["rip"] == m.layout.va and regs["rsp"] == m.layout.va_of(m.layout.stack_top(0))
        assert f"rip={m.layout.va:#x}" in str(info.value)
        assert m.exit_counts["shutdown"] == 1
        assert threading.active_count() == before["threads"]
        # the process and the machine are fine: restore the state and run again
        m.vcpu(0).set_sregs(good)
        r = m.run_ops([W("write", A, PAGE, view="private", pattern=1), W("verify", A, PAGE, view="private",
                                                                            pattern=1)], timeout=TIMEOUT)
        assert r.data_errors == 0
    assert resources() == before


@pytest.mark.kvm
def test_one_crashing_vcpu_stops_the_others_and_reports_its_own_registers():
    before = resources()
    with Machine(MEMORY, 3) as m:
        _break_paging(m, 2)
        start = time.monotonic()
        ops = [("exits", 0, 10 ** 9), ("exits", 1, 10 ** 9), W("write", A, PAGE, vcpu=2, view="private", pattern=1)]
        with pytest.raises(GuestError, match=r"vCPU 2: guest shut down") as info:
            m.run_ops(program_of(m, ops), timeout=TIMEOUT)
        assert time.monotonic() - start < 5                 # the spinning vCPUs were kicked
        assert info.value.registers["rip"] == m.layout.va
        assert threading.active_count() == before["threads"]
    assert resources() == before


@pytest.mark.kvm
def test_guest_running_outside_memory_is_an_internal_error_with_registers():
    """The player jumps to an address its page tables map to a GPA no memslot holds (past the
    end of RAM, inside the last 2 MiB page): the instruction fetch cannot be emulated, KVM
    reports an internal error (emulation failure), the machine a GuestError."""
    before = resources()
    with Machine(MEMORY - PAGE, 1) as m:
        from privmem.kvm import uapi
        m.launch()
        m.vcpu(0).set_regs(uapi.kvm_regs(rip=MEMORY - PAGE, rflags=uapi.X86_RFLAGS_RESERVED))
        with pytest.raises(GuestError, match=r"vCPU 0: KVM internal error, suberror 1") as info:
            m.runner.run(TIMEOUT)
        assert info.value.registers["rip"] == MEMORY - PAGE
        assert m.exit_counts["internal_error"] == 1
    assert resources() == before


@pytest.mark.kvm
def test_machines_that_crashed_or_failed_leave_nothing_behind():
    before = resources()
    for i in range(5):
        m = Machine(MEMORY, 2, engine=Faults("eager", shared_rule=errno.EIO))
        try:
            _break_paging(m, i % 2)
            with pytest.raises(GuestError):
                m.run_ops([W("convert", A, PAGE, vcpu=1 - i % 2, to="shared"),
                           W("touch", B, PAGE, vcpu=i % 2, view="private")], timeout=TIMEOUT)
        finally:
            m.close()
    assert resources() == before
