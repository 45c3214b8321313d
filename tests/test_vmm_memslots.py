"""MemslotMachine on real KVM: conversions as memslot surgery (the design the seed rejected).

The memslot layout must encode the state (a wrong-view access finds no memslot: an MMIO
exit), data must survive slots being deleted and re-created, the counters must add up,
failed ioctls must roll back, and machines must not leak."""

import errno
import gc
import os
import random

import pytest

from privmem import InvalidState, KvmError, Unsupported
from privmem.attrs import MemoryAttributes
from privmem.convert import ConversionEngine, ConversionTracker, make_policy
from privmem.kvm import uapi
from privmem.units import MiB
from privmem.vmm.machine import Machine
from privmem.vmm.memslots import MemslotMachine
from privmem.workload import generate
from privmem.ops import convert, dma_in, dma_out, touch, verify, write

pytestmark = pytest.mark.kvm

PAGE = 4096
TIMEOUT = 60
PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
BASE = 4 * MiB


def _ok(result):
    assert result.data_errors == 0 and result.dma_errors == 0 and result.psc_errors == 0, result.failures
    assert result.failures == []


def test_reshape_encodes_initial_state_and_counts():
    with MemslotMachine("16M") as m:
        # the Machine's private and shared slots deleted, one private run created; the
        # firmware keeps its slot
        assert m.slot_layout() == {"private": [(0, 16 * MiB)], "shared": []}
        assert m.memslot_ioctls == m.reshape_ioctls == 3
        assert m.live_slots == 2 and m.peak_slots == 3
        m.check_layout()
        assert m.view_mapped(BASE, "private") and not m.view_mapped(BASE, "shared")
        assert m.view_mapped(0, "private") and not m.view_mapped(0, "shared")
    with MemslotMachine("16M", initial="shared") as m:
        assert m.slot_layout() == {"private": [], "shared": [(0, 16 * MiB)]}
        m.check_layout()


def test_surgery_ioctl_and_slot_counts_merge():
    with MemslotMachine("16M") as m:
        r, end = 0, 16 * MiB
        n = m.memslot_ioctls
        # split the private run: delete 1, create 2 remnants + 1 shared slot
        m.engine.convert(BASE, PAGE, False)
        assert m.memslot_ioctls - n == 4
        assert m.slot_layout() == {"private": [(r, BASE), (BASE + PAGE, end)], "shared": [(BASE, BASE + PAGE)]}
        assert m.live_slots == m.peak_slots == 4
        m.check_layout()
        # a neighbouring page joins the shared run: a slot cannot grow, so delete + create
        n = m.memslot_ioctls
        m.engine.convert(BASE + PAGE, PAGE, False)
        assert m.memslot_ioctls - n == 4          # private: delete 1, create 1; shared: delete 1, create 1
        assert m.slot_layout()["shared"] == [(BASE, BASE + 2 * PAGE)]
        # back: merge everything into one private run again
        n = m.memslot_ioctls
        m.engine.convert(BASE, 2 * PAGE, True)
        assert m.memslot_ioctls - n == 4          # delete shared + 2 private, create 1 private
        assert m.slot_layout() == {"private": [(r, end)], "shared": []}
        assert m.live_slots == 2 and m.peak_slots == 4
        # no state change: no surgery
        n = m.memslot_ioctls
        m.engine.convert(BASE, 4 * PAGE, True)
        assert m.memslot_ioctls == n
        # at the edge of the region (page 0): delete 1, create 1 remnant + 1 shared
        m.engine.convert(r, PAGE, False)
        assert m.memslot_ioctls - n == 3
        assert m.memslot_creates - m.memslot_deletes + 3 == m.live_slots      # + the Machine's 3
        m.check_layout()


def test_surgery_counts_without_merge():
    with MemslotMachine("16M", merge=False) as m:
        r, end = 0, 16 * MiB
        n = m.memslot_ioctls
        m.engine.convert(BASE, PAGE, False)
        assert m.memslot_ioctls - n == 4
        n = m.memslot_ioctls
        m.engine.convert(BASE, PAGE, True)
        assert m.memslot_ioctls - n == 2          # delete the shared slot, create a private one; no merging
        assert m.slot_layout() == {"private": [(r, BASE), (BASE, BASE + PAGE), (BASE + PAGE, end)], "shared": []}
        assert m.live_slots == m.peak_slots == 4
        m.check_layout()


def test_wrong_view_access_finds_no_memslot():
    """The layout is the state: after a conversion to shared, the private view of the page
    has no memslot (MMIO exit); its shared view works; and the reverse for private pages."""
    ops = [convert(BASE, 2 * PAGE, "shared"),
           touch(BASE, 2 * PAGE, "private"),                 # 2 pages, one read each: 2 MMIO exits
           touch(BASE, 2 * PAGE, "shared"),
           touch(BASE + 2 * PAGE, 3 * PAGE, "shared"),       # still private: 3 MMIO exits
           touch(BASE + 2 * PAGE, 3 * PAGE, "private")]
    with MemslotMachine("16M") as m:
        res = m.run_ops(ops, timeout=TIMEOUT)
        _ok(res)
        assert res.exits_by_reason.get("mmio") == 5
        m.check_layout()
        # a write through the shared view of a private page is dropped (no slot), not stored
        before = m.shared.read(BASE + 2 * PAGE, 16)
        res = m.run_ops([write(BASE + 2 * PAGE, PAGE, "shared", 0x5A)], timeout=TIMEOUT)
        assert res.exits_by_reason.get("mmio", 0) >= 1
        assert m.shared.read(BASE + 2 * PAGE, 16) == before
    with Machine("16M") as m:                                  # contrast: the store-based machine maps both
        res = m.run_ops(ops, timeout=TIMEOUT)
        _ok(res)
        assert "mmio" not in res.exits_by_reason


def test_hand_scenario_data_survives_surgery():
    """Guest writes, conversions that split and merge the slots around the data, DMA both
    ways, verifies: every byte survives slots being deleted and re-created (policy never:
    nothing is discarded, so even a page flipped away and back keeps its private data)."""
    a, b, c = BASE, BASE + 64 * PAGE, 8 * MiB
    ops = [
        write(a, 16 * PAGE, "private", 0x11),
        write(b, 4 * PAGE, "private", 0x22),
        write(c, 2 * MiB, "private", 0x33),
        convert(a + 4 * PAGE, 2 * PAGE, "shared"),             # split the big private slot
        dma_in(a + 4 * PAGE, 2 * PAGE, 0x44),
        verify(a + 4 * PAGE, 2 * PAGE, "shared", 0x44),
        write(a + 5 * PAGE, PAGE, "shared", 0x45),
        dma_out(a + 5 * PAGE, PAGE, 0x45),
        verify(a, 4 * PAGE, "private", 0x11),                   # neighbours: their slots were re-created
        verify(a + 6 * PAGE, 10 * PAGE, "private", 0x11),
        convert(b, 4 * PAGE, "shared"),
        convert(a + 4 * PAGE, 2 * PAGE, "private"),             # merge back
        verify(a, 16 * PAGE, "private", 0x11),                  # the flipped pages kept their private data
        dma_in(b, 4 * PAGE, 0x55),
        convert(c, 2 * MiB, "shared"),                          # a large run flips
        convert(b + PAGE, PAGE, "private"),                     # split the shared run
        verify(b + PAGE, PAGE, "private", 0x22),
        verify(b, PAGE, "shared", 0x55),
        verify(b + 2 * PAGE, 2 * PAGE, "shared", 0x55),
        convert(c, 2 * MiB, "private"),
        verify(c, 2 * MiB, "private", 0x33),
        convert(b, 4 * PAGE, "private"),
        convert(b, 4 * PAGE, "shared"),                         # shared data survives a round trip too
        verify(b, PAGE, "shared", 0x55),
        verify(b + 2 * PAGE, 2 * PAGE, "shared", 0x55),
        dma_out(b + 3 * PAGE, PAGE, 0x55),
        convert(b, 4 * PAGE, "private"),
    ]
    with MemslotMachine("16M") as m:
        res = m.run_ops(ops, timeout=TIMEOUT)
        _ok(res)
        assert res.conversions == 9 and "mmio" not in res.exits_by_reason
        assert m.memslot_ioctls > m.reshape_ioctls
        assert m.slot_layout() == {"private": [(0, 16 * MiB)], "shared": []}
        m.check_layout()


@pytest.mark.parametrize("merge", [True, False])
def test_ovmf_dma_trace_zero_data_errors(merge):
    trace = generate("ovmf-dma", memory=32 * MiB, vcpus=1, scale=0.02)
    with MemslotMachine(trace.memory, trace.vcpus, merge=merge) as m:
        res = m.run_ops(trace.ops, timeout=TIMEOUT)
        _ok(res)
        converts = sum(op.kind == "convert" for op in trace.ops)
        assert res.conversions == converts and m.engine.stats.conversions == converts
        assert "mmio" not in res.exits_by_reason
        surgery = m.memslot_ioctls - m.reshape_ioctls
        assert surgery >= 2 * converts                 # every conversion here changes state: >= 1 delete + 1 create
        assert m.memslot_creates - m.memslot_deletes + 3 == m.live_slots      # + the Machine's 3
        assert m.peak_slots >= m.live_slots and m.memslot_failures == 0
        m.check_layout()


def test_runner_tracking_memslots():
    from privmem.runner import run_trace
    trace = generate("ovmf-dma", memory=32 * MiB, vcpus=1, scale=0.01)
    result = run_trace(trace, "eager", backend="kvm", tracking="memslots")
    assert result.tracking == "memslots" and result.data_errors == 0 and result.dma_errors == 0
    assert result.conversions == sum(op.kind == "convert" for op in trace.ops)


@pytest.mark.parametrize("merge", [True, False])
def test_random_conversions_layout_matches_store(merge):
    """Random conversions in a 64-page window: after each the layout equals the store;
    then the guest touches both views of every page and finds exactly the wrong-view
    pages unmapped."""
    rng = random.Random(7 + merge)
    pages = 64
    with MemslotMachine("16M", merge=merge) as m:
        for _ in range(150):
            first = rng.randrange(pages)
            count = rng.randint(1, min(8, pages - first))
            m.engine.convert(BASE + first * PAGE, count * PAGE, rng.random() < 0.5)
            m.check_layout()
        private = sum(m.store.has(BASE + i * PAGE, PAGE, PRIVATE) for i in range(pages))
        assert m.peak_slots <= m.max_slots
        res = m.run_ops([touch(BASE, pages * PAGE, "private"), touch(BASE, pages * PAGE, "shared")],
                        timeout=TIMEOUT)
        assert res.exits_by_reason.get("mmio", 0) == pages      # (pages - private) + private
        res = m.run_ops([touch(BASE, pages * PAGE, "private")], timeout=TIMEOUT)
        assert res.exits_by_reason.get("mmio", 0) == pages - private


class _FailingRegion:
    """Wraps Vm.set_user_memory_region2: call number ``fail_at`` (0-based, counted from
    arming) and, with ``sticky``, every later one raise KvmError(EIO)."""

    def __init__(self, real):
        self.real, self.calls, self.fail_at, self.sticky = real, 0, None, False

    def __call__(self, *args, **kwargs):
        index, self.calls = self.calls, self.calls + 1
        if self.fail_at is not None and (index == self.fail_at or (self.sticky and index > self.fail_at)):
            raise KvmError("KVM_SET_USER_MEMORY_REGION2", errno.EIO)
        return self.real(*args, **kwargs)


def test_failed_ioctl_at_every_step_rolls_back(monkeypatch):
    """A merge that needs 4 ioctls, failed at each of them in turn: the engine aborts, the
    store and the slot layout are as before, and the guest still finds its data."""
    with MemslotMachine("16M") as m:
        m.run_ops([write(BASE, 4 * PAGE, "private", 0x66), convert(BASE + PAGE, PAGE, "shared"),
                   dma_in(BASE + PAGE, PAGE, 0x77)], timeout=TIMEOUT)
        layout = m.slot_layout()
        wrapper = _FailingRegion(m._vm.set_user_memory_region2)
        monkeypatch.setattr(m._vm, "set_user_memory_region2", wrapper)
        for step in range(4):
            wrapper.calls, wrapper.fail_at = 0, step
            with pytest.raises(KvmError):
                m.engine.convert(BASE + PAGE, PAGE, True)
            assert m.memslot_failures == step + 1
            assert not m.store.has(BASE + PAGE, PAGE, PRIVATE)
            assert m.slot_layout() == layout
            m.check_layout()
        wrapper.fail_at = None
        res = m.run_ops([verify(BASE, PAGE, "private", 0x66), verify(BASE + 2 * PAGE, 2 * PAGE, "private", 0x66),
                         verify(BASE + PAGE, PAGE, "shared", 0x77), convert(BASE + PAGE, PAGE, "private"),
                         verify(BASE, 4 * PAGE, "private", 0x66)], timeout=TIMEOUT)
        _ok(res)
        m.check_layout()
        # a restore that fails too leaves the machine refusing further conversions
        wrapper.calls, wrapper.fail_at, wrapper.sticky = 0, 1, True
        with pytest.raises(KvmError):
            m.engine.convert(BASE, PAGE, False)
        with pytest.raises(InvalidState):
            m.engine.convert(8 * MiB, PAGE, False)


def test_kernel_refusal_rolls_back():
    """A real kernel error, not an injected one: a foreign slot already maps the shared
    view of the page, so creating ours fails with EEXIST after the private run was split."""
    with MemslotMachine("16M") as m:
        layout, n = m.slot_layout(), m.memslot_ioctls
        foreign = m.max_slots - 1
        m._vm.set_user_memory_region2(foreign, 0, m.shared_bit + BASE, PAGE, m.shared.hva + BASE)
        with pytest.raises(KvmError) as info:
            m.engine.convert(BASE, PAGE, False)
        assert info.value.errno == errno.EEXIST
        # delete, create 2 remnants, create (EEXIST); undo: delete 2, re-create 1
        assert m.memslot_ioctls - n == 7 and m.memslot_failures == 1
        assert m.slot_layout() == layout and m.store.has(BASE, PAGE, PRIVATE)
        m.check_layout()
        m._vm.set_user_memory_region2(foreign, 0, 0, 0, 0)
        m.engine.convert(BASE, PAGE, False)
        m.check_layout()
        _ok(m.run_ops([dma_in(BASE, PAGE, 0x12), verify(BASE, PAGE, "shared", 0x12)], timeout=TIMEOUT))


def test_out_of_slots_refused_before_any_ioctl():
    with MemslotMachine("16M", merge=False) as m:
        m.max_slots = m.slot_firmware + 5                # ids firmware + 1 .. + 4 for RAM
        m.engine.convert(BASE, PAGE, False)              # 3 workload slots
        n = m.memslot_ioctls
        with pytest.raises(Unsupported):
            m.engine.convert(8 * MiB, PAGE, False)       # needs 4 slots: split + new shared
        assert m.memslot_ioctls == n and m.store.has(8 * MiB, PAGE, PRIVATE)
        m.check_layout()


def _fds():
    gc.collect()
    return set(os.listdir("/proc/self/fd"))


def test_create_close_cycles_leak_nothing():
    MemslotMachine("16M").close()                        # warm up lazily opened files
    before = _fds()
    for i in range(20):
        with MemslotMachine("16M", merge=bool(i % 2)) as m:
            m.engine.convert(BASE, PAGE, False)
        assert m.closed
    m.close()                                            # idempotent

    def no_hooks(shared, private, memory_map):
        engine = ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy("never", 16 * MiB),
                                  shared, private)
        engine.commit_hooks = None
        return engine

    with pytest.raises(Unsupported):
        MemslotMachine("16M", engine=no_hooks)
    assert _fds() == before


@pytest.mark.parametrize("vcpus", [2, 4])
def test_several_vcpus_are_parked_around_the_surgery(vcpus):
    """Without parking, a vCPU touching a neighbour of a range being split finds no memslot
    (MMIO exit, data lost).  Each conversion parks the others: no errors, no MMIO exits."""
    from privmem.workload import generate

    trace = generate("ovmf-dma", memory=64 << 20, vcpus=vcpus, scale=0.03)
    with MemslotMachine(64 << 20, vcpus, data_check="full") as machine:
        result = machine.run_ops(trace.ops)
        assert result.data_errors == 0 and result.dma_errors == 0
        assert "mmio" not in result.exits_by_reason
        assert machine.pauses == result.conversions > 0
        machine.check_layout()
