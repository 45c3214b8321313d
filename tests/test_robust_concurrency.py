"""Concurrency (issue 6): vCPUs converting at once on the real machine.

The oracle is the engine's journal: the committed requests in commit order.  Replayed one by
one on a fresh store (after the machine's initial state), they must give exactly the
attributes the machine ended with, whatever the interleaving was; and every byte pattern a
vCPU or the device wrote must read back (data_errors == 0, host reads byte-exact).
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from privmem import Busy
from privmem.attrs import ATTR_PRIVATE, MemoryAttributes
from privmem.convert import ConversionEngine, ConversionTracker, make_policy
from privmem.units import MiB
from privmem.vmm import Machine
from privmem.vmm.host import HostMachine
from privmem.workload import generate
from privmem.ops import Op
from privmem.ops import Op as GuestOp
from privmem.workload.model import check_trace

from .resources import resources
from .test_robust_bad_input import full_data_checks, journaled_engine, snapshot

PAGE = 4096
TIMEOUT = 60
RESERVED = 2 * MiB
BASE = 4 * MiB


def replay(initial: list, journal: list) -> list:
    """The attributes a sequential replay of ``journal`` gives, starting from ``initial`` runs."""
    store = MemoryAttributes()
    for gpa, size, attributes in initial:
        store.set(gpa, size, attributes)
    for request in journal:
        store.set(request.gpa, request.size, request.attributes)
    store.check()
    return list(store.ranges())


class Window:
    """One vCPU's disjoint window and a page model of what it should hold afterwards."""

    PAGES = 64

    def __init__(self, vcpu: int, base: int):
        self.vcpu, self.base = vcpu, base
        self.private = [True] * self.PAGES          # Machine(initial="private")
        self.data: list[int | None] = [None] * self.PAGES
        self.ops: list[GuestOp] = []

    def _op(self, kind, first, n, **kw):
        self.ops.append(GuestOp(kind, self.base + first * PAGE, n * PAGE, self.vcpu, **kw))

    def convert(self, first, n, private):
        self._op("convert", first, n, to="private" if private else "shared")
        self.private[first:first + n] = [private] * n
        self.data[first:first + n] = [None] * n

    def write(self, first, n, pattern, device=False):
        view = "private" if self.private[first] else "shared"
        if device:
            self._op("dma_in", first, n, pattern=pattern)
        else:
            self._op("write", first, n, view=view, pattern=pattern)
        self.data[first:first + n] = [pattern] * n

    def check(self, first, n, device=False):
        pattern = self.data[first]
        view = "private" if self.private[first] else "shared"
        if device:
            self._op("dma_out", first, n, pattern=pattern)
        else:
            self._op("verify", first, n, view=view, pattern=pattern)

    def script(self, rounds: int = 3) -> "Window":
        v = self.vcpu
        for r in range(rounds):
            p = (v * 16 + r * 4) & 0xFF
            self.convert(0, 32, False)
            self.write(0, 32, p + 1, device=True)
            self.check(0, 4)                                 # guest reads what the device wrote
            self.convert(8, 8, True)                         # a private hole in the shared run
            self.write(8, 4, p + 2)
            self.check(8, 4)
            self.check(16, 16, device=True)                  # neighbours unharmed
            self.convert(32, 32, False)
            self.write(40, 4, p + 3)
            self.check(40, 4, device=True)                   # device reads what the guest wrote
            if r < rounds - 1:
                self.convert(0, 64, True)
                self.write(60, 2, p + 4)
                self.check(60, 2)
        return self


@pytest.mark.kvm
@pytest.mark.parametrize("vcpus", [1, 2, 4, 8])
def test_disjoint_windows_convert_concurrently(vcpus):
    before = resources()
    memory = 8 * MiB
    with Machine(memory, vcpus, engine=journaled_engine("lazy", memory), **full_data_checks()) as m:
        initial = list(m.store.ranges())
        windows = [Window(v, BASE + v * Window.PAGES * PAGE).script() for v in range(vcpus)]
        ops = [op for step in zip(*(w.ops for w in windows)) for op in step]     # round-robin
        result = m.run_ops(ops, timeout=TIMEOUT)
        assert result.data_errors == 0 and result.dma_errors == 0 and result.psc_errors == 0, result.failures
        assert list(m.store.ranges()) == replay(initial, m.engine.journal)
        for w in windows:
            for page in range(Window.PAGES):
                gpa = w.base + page * PAGE
                assert m.store.has(gpa, PAGE, ATTR_PRIVATE if w.private[page] else 0), (w.vcpu, page)
                if not w.private[page] and w.data[page] is not None:
                    assert m.shared_read(gpa, PAGE) == bytes([w.data[page]]) * PAGE, (w.vcpu, page)
        # each vCPU's requests were committed in its own program order
        for v in range(vcpus):
            mine = [(r.gpa, r.size, r.private) for r in m.engine.journal if r.vcpu == v]
            expected = [(op.gpa, op.size, op.to == "private") for op in windows[v].ops if op.kind == "convert"]
            assert _covers(mine, expected), v
        m.engine.check()
    assert resources() == before


def _covers(committed: list, asked: list) -> bool:
    """The PSC path splits an op into requests (4 KiB / 2 MiB entries merged per batch); glue
    adjacent committed requests back and compare with the ops asked for, in order."""
    glued: list = []
    for gpa, size, private in committed:
        if glued and glued[-1][2] == private and glued[-1][0] + glued[-1][1] == gpa and \
                not any(a == glued[-1] for a in asked):
            glued[-1] = (glued[-1][0], glued[-1][1] + size, private)
        else:
            glued.append((gpa, size, private))
    return glued == asked


@pytest.mark.kvm
def test_overlapping_requests_across_vcpus_replay_sequentially_on_the_machine():
    """The seeded 'random' workload: every vCPU converts random ranges of one common window
    (overlapping the others') while it writes and checks patterns in its own window."""
    before = resources()
    memory, vcpus = 16 * MiB, 4
    trace = generate("random", memory=memory, vcpus=vcpus, seed=6, scale=0.03, reserved=RESERVED)
    check_trace(trace, reserved=RESERVED)
    with Machine(memory, vcpus, engine=journaled_engine("adaptive", memory)) as m:
        initial = list(m.store.ranges())
        result = m.run_ops(trace.ops, timeout=TIMEOUT)
        assert result.data_errors == 0 and result.dma_errors == 0 and result.psc_errors == 0, result.failures
        assert list(m.store.ranges()) == replay(initial, m.engine.journal)
        # Whether two vCPUs' requests meet in flight here depends on timing (PSC handling is
        # Python under the GIL; a request is in flight for microseconds; HEAD's Machine even
        # serialized engine.convert under a lock): retries are counted, not required.  The
        # host-backend test below forces the meeting and requires retries.
        assert m.psc_retries == result.psc_retries >= 0
        m.engine.check()
    assert resources() == before


class SlowCommit:
    """A commit hook that holds each request in flight (the time a real
    KVM_SET_MEMORY_ATTRIBUTES takes) until some vCPU has met one in the tracker and been told
    Busy (bounded), so overlapping vCPUs meet deterministically, not by luck of timing."""

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0
        self.met = threading.Event()

    def __call__(self, request) -> None:
        self.calls += 1
        if not self.met.is_set():
            self.met.wait(self.seconds)


class SignallingTracker(ConversionTracker):
    """A tracker that tells the hook when it refused a request with Busy."""

    def __init__(self, store, hook: SlowCommit):
        super().__init__(store)
        self.hook = hook

    def request_range(self, *args, **kwargs):
        try:
            return super().request_range(*args, **kwargs)
        except Busy:
            self.hook.met.set()
            raise


@pytest.mark.parametrize("policy", ["eager", "lazy"])
def test_overlapping_requests_see_busy_retry_and_replay_sequentially_on_the_host_backend(policy):
    memory, vcpus = 16 * MiB, 4
    trace = generate("random", memory=memory, vcpus=vcpus, seed=11, scale=0.04, reserved=RESERVED)
    # Every vCPU starts by converting the same range of the trace's common (data-free) window, so
    # the first request held in flight is met for sure, not by luck of the interleaving.
    common = 0x69A000
    meeting = [op for vcpu in range(vcpus) for op in (Op("convert", common, 8 * PAGE, vcpu, to="shared"),
                                                       Op("convert", common, 8 * PAGE, vcpu, to="private"))]
    ops = meeting + list(trace.ops)
    before = resources()
    with HostMachine(memory, vcpus) as m:
        hook = SlowCommit(0.5)
        m.engine = ConversionEngine(SignallingTracker(MemoryAttributes(), hook), make_policy(policy, memory),
                                    m.shared, m.private, commit_hooks=[hook], journal=True)
        m.engine.set_initial(0, memory, True)
        initial = list(m.engine.store.ranges())
        result = m.run_ops(ops, timeout=TIMEOUT)
        assert result.data_errors == 0 and result.dma_errors == 0
        assert result.psc_retries > 0                      # overlapping requests met: Busy, retried
        assert hook.calls == len(m.engine.journal)         # every request that got in committed
        assert list(m.engine.store.ranges()) == replay(initial, m.engine.journal)
        assert snapshot(m)["in_flight"] == []
        m.engine.check()
    assert resources() == before


def test_engine_convert_from_many_threads_with_forced_overlap():
    """Eight threads hammer overlapping ranges through engine.convert directly; each Busy is
    retried.  Nothing is lost, nothing is committed twice, the journal replays."""
    memory = 4 * MiB
    with HostMachine(memory, 1) as m:
        engine = ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy("lazy", memory),
                                  m.shared, m.private, commit_hooks=[lambda r: time.sleep(0)], journal=True)
        busy = [0] * 8
        done = [0] * 8

        def worker(v):
            rng = random.Random(v)
            for _ in range(150):
                first = rng.randrange(0, 64)
                n = rng.randint(1, 16)
                while True:
                    try:
                        engine.convert(RESERVED + first * PAGE, n * PAGE, rng.random() < 0.5, v)
                        done[v] += 1
                        break
                    except Busy:
                        busy[v] += 1
                        time.sleep(0)

        threads = [threading.Thread(target=worker, args=(v,)) for v in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(busy) > 0                              # the overlap was real
        assert sum(done) == 8 * 150 == len(engine.journal)
        assert list(engine.store.ranges()) == replay([], engine.journal)
        assert engine.tracker.in_flight() == []
        engine.check()
