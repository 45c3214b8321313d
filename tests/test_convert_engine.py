"""ConversionEngine + policies on real memfd backings: the kernel's accounting decides."""

import errno

import pytest

from privmem import (ATTR_PRIVATE, PAGE_SIZE, Busy, ConversionEngine, ConversionTracker, InvalidState,
                     MemoryAttributes, make_policy)
from privmem.backing import PrivateBacking, SharedBacking
from privmem.backing.faults import FaultyBacking
from privmem.convert import POLICIES
from privmem.convert.held import HELD_PRIVATE, HELD_SHARED
from privmem.errors import AccessDenied, InvalidArgument

from .policy_helpers import policy_with

MEMORY = 4 << 20
WINDOW = (1 << 20, 16 * PAGE_SIZE)
# When the built-ins free the side a conversion leaves, as documented: "now" (in the
# conversion), "tick" (by a tick a second later) or "" (never); for shared memory left by
# shared->private, then for private memory left by private->shared.  Every registered
# policy, these or not, is held to its own books by the kernel's accounting.
FREED = {"never": ("", ""), "eager": ("now", "now"), "keep-shared": ("", "now"),
         "lazy": ("tick", "tick"), "adaptive": ("now", "now")}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture(params=["memfd-standin", pytest.param("guest_memfd", marks=pytest.mark.kvm)])
def private_kind(request):
    return request.param


@pytest.fixture
def make_engine(private_kind):
    """Engines over a real memfd (shared) and, for private memory, a memfd stand-in or a real
    guest_memfd (MMAP | INIT_SHARED, so the test can touch it before sealing)."""
    made, vms = [], []

    def private_backing():
        if private_kind == "memfd-standin":
            return PrivateBacking.standin(MEMORY)
        from privmem.kvm import Kvm, uapi
        kvm = Kvm()
        vm = kvm.create_vm()
        vms.append((kvm, vm))
        flags = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
        return PrivateBacking.from_guest_memfd(vm.create_guest_memfd(MEMORY, flags), MEMORY)

    def make(policy="never", budget=MEMORY // 4, shared=None, private=None):
        shared = shared or SharedBacking.create(MEMORY)
        private = private or private_backing()
        clock = Clock()
        engine = ConversionEngine(ConversionTracker(MemoryAttributes()), policy_with(policy, MEMORY, budget=budget),
                                  shared, private, clock=clock)
        engine.clock_control = clock
        made.append((shared, private))
        return engine

    yield make
    for shared, private in made:
        shared.close()
        private.close()
    for kvm, vm in vms:
        vm.close()
        kvm.close()


def allocated(backing, gpa, size):
    end = gpa + size
    return sum(max(0, min(o + s, end) - max(o, gpa)) for o, s in backing.allocated_ranges())


def held_in(engine, gpa, size, side):
    """Bytes of ``[gpa, gpa + size)`` the engine's books hold on ``side``."""
    end = gpa + size
    return sum(max(0, min(g + s, end) - max(g, gpa)) for g, s, held in engine.held.runs() if held == side)


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("to_private", [True, False], ids=["shared-left", "private-left"])
def test_memory_left_behind_is_freed_exactly_when_the_books_say(make_engine, policy, to_private):
    engine = make_engine(policy)
    left, side = (engine.shared, HELD_SHARED) if to_private else (engine.private, HELD_PRIVATE)
    gpa, size = WINDOW
    if not to_private:
        engine.set_initial(0, MEMORY, private=True)
    left.write(gpa, b"\x5a" * size)
    engine.launch()
    assert allocated(left, gpa, size) == size
    documented = FREED.get(policy, (None, None))[0 if to_private else 1]
    engine.convert(gpa, size, to_private)
    assert allocated(left, gpa, size) == held_in(engine, gpa, size, side)
    if documented is not None:
        assert allocated(left, gpa, size) == (0 if documented == "now" else size)
    engine.clock_control.now += 1.0
    engine.tick()
    assert allocated(left, gpa, size) == held_in(engine, gpa, size, side)
    if documented is not None:
        assert allocated(left, gpa, size) == (0 if documented in ("now", "tick") else size)
    engine.flush()
    assert allocated(left, gpa, size) == held_in(engine, gpa, size, side)
    assert engine.stats.queued_bytes == (engine.stats.double_allocated_bytes if engine.policy.queues else 0)
    if engine.policy.queues:
        assert engine.stats.double_allocated_bytes == 0
    engine.check()


@pytest.mark.parametrize("policy", list(POLICIES))
def test_host_view_never_shows_data_written_while_private(make_engine, policy):
    engine = make_engine(policy)
    shared, private = engine.shared, engine.private
    gpa, size = WINDOW
    shared.write(gpa, b"\x11" * size)  # shared-phase data the host may see
    engine.convert(gpa, size, True)
    private.write(gpa, b"SECRET!!" * (size // 8))  # written while private (pre-launch guest stand-in)
    engine.convert(gpa, size, False)
    host_view = shared.read(gpa, size)
    assert b"SECRET" not in host_view
    assert set(host_view) <= {0x00, 0x11}
    with pytest.raises(AccessDenied):
        engine.launch() or private.read(gpa, size)


def test_lazy_flip_flop_costs_nothing_until_drained(make_engine):
    engine = make_engine("lazy", budget=64 * PAGE_SIZE)
    gpa = WINDOW[0]
    engine.set_initial(0, MEMORY, True)
    for _ in range(1000):
        engine.convert(gpa, PAGE_SIZE, False)
        engine.convert(gpa, PAGE_SIZE, True)
    assert engine.stats.discards == 0
    assert engine.stats.conversions == 2000 and engine.stats.reclaimed_bytes == 1999 * PAGE_SIZE
    assert engine.stats.peak_double_allocated_bytes == PAGE_SIZE
    engine.flush()
    assert engine.stats.double_allocated_bytes == 0 and engine.stats.discards == 1


def test_lazy_respects_its_budget_and_drains_coalesced(make_engine):
    budget = 32 * PAGE_SIZE
    engine = make_engine("lazy", budget=budget)
    for k in range(200):
        engine.convert((k + 1) * PAGE_SIZE, PAGE_SIZE, True)
        assert engine.stats.double_allocated_bytes <= budget
    assert engine.stats.peak_double_allocated_bytes <= budget
    # Adjacent pages drain in coalesced runs: far fewer syscalls than pages.
    assert 0 < engine.stats.discards < 20
    engine.check()


def test_failed_discards_keep_the_conversion_and_are_retried(make_engine):
    shared = FaultyBacking(SharedBacking.create(MEMORY), {"discard": [errno.ENOMEM, errno.EIO]})
    engine = make_engine("eager", shared=shared)
    gpa, size = WINDOW
    shared.write(gpa, b"\x77" * size)
    engine.convert(gpa, size, True)
    assert engine.store.has(gpa, size, ATTR_PRIVATE)
    assert engine.stats.discard_failures == 1 and engine.stats.queued_bytes == size
    engine.tick()  # second failure (EIO), still held
    assert engine.stats.discard_failures == 2 and allocated(shared, gpa, size) == size
    engine.tick()
    assert engine.stats.discards == 1 and allocated(shared, gpa, size) == 0
    assert engine.stats.queued_bytes == 0 and engine.stats.double_allocated_bytes == 0
    engine.check()


def test_populate_before_launch_only(make_engine):
    engine = make_engine("eager")
    shared, private = engine.shared, engine.private
    shared.write(0, b"firmware" * 512)
    engine.populate(0, PAGE_SIZE)
    assert engine.store.has(0, PAGE_SIZE, ATTR_PRIVATE)
    assert private.read(0, 8) == b"firmware"
    engine.launch()
    with pytest.raises(InvalidState, match="after launch"):
        engine.populate(PAGE_SIZE, PAGE_SIZE)
    with pytest.raises(InvalidState):
        engine.set_initial(0, PAGE_SIZE, True)


def test_preallocation_is_accounted_without_replay(make_engine):
    engine = make_engine("never")
    engine.preallocate(0, 64 * PAGE_SIZE)
    assert engine.measure()["private_bytes"] == 64 * PAGE_SIZE
    assert list(engine.store.ranges()) == []


def test_bad_input_changes_nothing(make_engine):
    engine = make_engine("lazy")
    engine.convert(0, PAGE_SIZE, True)
    before = (list(engine.store.ranges()), engine.stats.as_dict(), engine.held.runs())
    with pytest.raises(InvalidArgument):
        engine.convert(3, PAGE_SIZE, True)
    request = engine.tracker.request(PAGE_SIZE, PAGE_SIZE, True)
    with pytest.raises(Busy):
        engine.convert(0, 2 * PAGE_SIZE, False)
    engine.tracker.abort(request)
    assert (list(engine.store.ranges()), engine.stats.as_dict(), engine.held.runs()) == before
    with pytest.raises(InvalidArgument, match="policy='sometimes'"):
        make_policy("sometimes", MEMORY)


def test_commit_hook_failure_aborts(make_engine):
    engine = make_engine("eager")

    def refuse(request):
        raise InvalidState("KVM refused")

    engine.commit_hooks.append(refuse)
    with pytest.raises(InvalidState):
        engine.convert(0, PAGE_SIZE, True)
    assert list(engine.store.ranges()) == [] and engine.tracker.in_flight() == []


def test_lazy_ages_a_page_from_its_latest_hold_not_its_first(make_engine):
    engine = make_engine("lazy")
    shared = engine.shared
    gpa = WINDOW[0]
    clock = engine.clock_control
    engine.convert(gpa, PAGE_SIZE, True)            # t=0: shared side held
    clock.now = 0.030
    engine.convert(gpa, PAGE_SIZE, False)           # back: reclaimed; private side held
    clock.now = 0.040
    engine.convert(gpa, PAGE_SIZE, True)            # held again at t=0.040
    shared.write(gpa, b"x")
    clock.now = 0.060
    engine.tick()                                   # 20 ms old: stays held
    assert engine.stats.discards == 0 and allocated(shared, gpa, PAGE_SIZE) == PAGE_SIZE
    clock.now = 0.100
    engine.tick()
    assert allocated(shared, gpa, PAGE_SIZE) == 0 and engine.stats.double_allocated_bytes == 0
    engine.check()


def test_adaptive_learns_flip_floppers_after_one_discard(make_engine):
    engine = make_engine("adaptive")
    gpa = WINDOW[0]
    engine.convert(gpa + 8 * PAGE_SIZE, PAGE_SIZE, True)   # cold: discarded at once, never back
    for _ in range(50):
        engine.convert(gpa, PAGE_SIZE, True)
        engine.convert(gpa, PAGE_SIZE, False)
    assert engine.stats.discards == 2   # the cold page, and the flip-flopper's first departure
    engine.check()


def test_the_drainer_discards_aged_memory_while_the_guest_is_idle():
    import time as _time

    from privmem.convert.drainer import Drainer
    from privmem.vmm.host import HostMachine
    from privmem import ops

    with HostMachine(MEMORY, policy="lazy") as machine:
        gpa = 0
        machine.run_ops([ops.convert(gpa, PAGE_SIZE, "shared"), ops.write(gpa, PAGE_SIZE, "shared", 7),
                         ops.convert(gpa, PAGE_SIZE, "private")])
        assert machine.engine.stats.double_allocated_bytes == PAGE_SIZE   # held, younger than 50 ms
        with Drainer.for_engine(machine.engine):
            deadline = _time.monotonic() + 2
            while machine.engine.stats.double_allocated_bytes and _time.monotonic() < deadline:
                _time.sleep(0.01)
        assert machine.engine.stats.double_allocated_bytes == 0 and machine.engine.stats.discards == 1
        assert allocated(machine.shared, gpa, PAGE_SIZE) == 0
