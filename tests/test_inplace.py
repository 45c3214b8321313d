"""In-place conversion: one guest_memfd serving both views (privmem.convert.inplace).

The proposed selftest guest_memfd_conversions_test, scenario by scenario, on a real
guest_memfd (MMAP | INIT_SHARED) where /dev/kvm is usable and on the memfd stand-in
everywhere; the content rules and the pin (EAGAIN with the first pinned page, success after
unpin); a stateful property test against a per-page model; and, on the real machine, a guest
that writes private pages and converts them to shared sees zeros through its shared view
under every workload, as the host does through its own.
"""

import ctypes
import faulthandler
import os
import signal
import threading
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from privmem.attrs import ATTR_PRIVATE, MemoryAttributes
from privmem.backing.inplace import InPlaceBacking
from privmem.convert import ConversionTracker
from privmem.convert.inplace import PRESERVE, ZERO, InPlaceEngine
from privmem.errors import AccessDenied, Busy, InvalidArgument, InvalidState, Unsupported
from privmem.kvm import Kvm, uapi
from privmem.memmap import GpaRange
from privmem.ops import Op
from privmem.units import MiB

PAGE = 4096
MEMORY = 4 * MiB


def _kvm_backing(memory: int, initial_shared: bool):
    kvm = Kvm()
    vm = kvm.create_vm()
    fd = vm.create_guest_memfd(memory, uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED)
    backing = InPlaceBacking.from_guest_memfd(fd, memory, initial_shared=initial_shared)
    return backing, (vm, kvm)


@pytest.fixture(params=[pytest.param("guest_memfd", marks=pytest.mark.kvm), "standin"])
def make(request):
    """make(initial_shared) -> (engine, backing): over a real guest_memfd or the stand-in."""
    owned = []

    def build(initial_shared: bool = False, memory: int = MEMORY):
        if request.param == "guest_memfd":
            backing, keep = _kvm_backing(memory, initial_shared)
            owned.extend(keep)
        else:
            backing = InPlaceBacking.standin(memory, initial_shared=initial_shared)
        owned.append(backing)
        engine = InPlaceEngine(ConversionTracker(MemoryAttributes()), backing)
        engine.store.set(0, memory, 0 if initial_shared else ATTR_PRIVATE)
        return engine, backing

    yield build
    for thing in reversed(owned):
        thing.close()


def guest_write(backing, gpa: int, data: bytes) -> None:
    """The guest writing through its private view (KVM's mapping)."""
    ctypes.memmove(backing.private_hva + gpa, data, len(data))


def guest_read(backing, gpa: int, n: int) -> bytes:
    return ctypes.string_at(backing.private_hva + gpa, n)


# -- the proposed selftest's scenarios ------------------------------------------------------------

def test_init_private(make):
    engine, backing = make(initial_shared=False)
    with pytest.raises(AccessDenied):
        backing.read(0, 1)
    with pytest.raises(AccessDenied):
        engine.check_device_access(0, 1)
    guest_write(backing, 0, b"\xaa" * PAGE)
    engine.convert(0, PAGE, False)
    assert backing.read(0, PAGE) == bytes(PAGE)               # to shared: zeroed, never the private bytes


def test_init_shared(make):
    engine, backing = make(initial_shared=True)
    backing.write(0, b"\xbb" * PAGE)
    assert guest_read(backing, 0, PAGE) == b"\xbb" * PAGE       # one page, both views
    engine.convert(0, PAGE, True)                              # after launch: zero
    with pytest.raises(AccessDenied):
        backing.read(0, 1)
    assert guest_read(backing, 0, PAGE) == bytes(PAGE)


def test_per_page_precision(make):
    engine, backing = make(initial_shared=True)
    for page in range(4):
        backing.write(page * PAGE, bytes([page + 1]) * PAGE)
    engine.convert(PAGE, PAGE, True)
    engine.convert(3 * PAGE, PAGE, True)
    assert backing.read(0, PAGE) == b"\x01" * PAGE and backing.read(2 * PAGE, PAGE) == b"\x03" * PAGE
    for page in (1, 3):
        with pytest.raises(AccessDenied):
            backing.read(page * PAGE, 1)
    assert [engine.store.get(page * PAGE) for page in range(4)] == [0, ATTR_PRIVATE, 0, ATTR_PRIVATE]


def test_conversion_before_allocation_allocates_nothing_and_reads_zero(make):
    engine, backing = make(initial_shared=False)
    assert backing.allocated_bytes_in(0, PAGE) == 0
    engine.convert(0, PAGE, False)
    engine.convert(0, PAGE, True)
    engine.convert(0, PAGE, False)
    assert backing.allocated_bytes_in(0, PAGE) == 0 and engine.stats.zeroed_bytes == 0
    assert backing.read(0, PAGE) == bytes(PAGE)


def test_a_kernel_without_cachestat_refuses_the_conversion_and_changes_nothing(make, monkeypatch):
    import errno

    from privmem.errors import SyscallError, Unsupported

    engine, backing = make(initial_shared=True)
    backing.write(0, b"\x5a" * 8)

    def enosys(offset, length):
        raise SyscallError("cachestat", errno.ENOSYS)

    monkeypatch.setattr(backing._counter, "allocated_pages", enosys)
    with pytest.raises(Unsupported, match=r"cachestat\(2\)"):
        engine.convert(0, PAGE, True)
    assert engine.store.get(0) == 0 and backing.read(0, 8) == b"\x5a" * 8     # still shared, still readable
    assert not engine.tracker.in_flight()


def test_a_failing_native_ioctl_restores_every_view_and_changes_nothing(make):
    import errno

    from privmem.errors import KvmError

    engine, backing = make(initial_shared=True)

    def refuse(offset, size, attributes):
        raise KvmError("KVM_SET_MEMORY_ATTRIBUTES2", errno.EAGAIN)

    engine.native = refuse
    with pytest.raises(KvmError):
        engine.convert(0, 2 * PAGE, True)
    assert engine.store.get(0) == 0 and not engine.tracker.in_flight()
    backing.write(0, b"\x01" * 2 * PAGE)                          # the shared view is back


def test_mixed_allocated_and_unallocated_pages(make):
    engine, backing = make(initial_shared=True)
    for page in (0, 2, 4, 6):
        backing.write(page * PAGE, b"\xcc" * PAGE)
    assert backing.allocated_bytes_in(0, 8 * PAGE) == 4 * PAGE
    engine.convert(0, 8 * PAGE, True)
    assert engine.stats.zeroed_bytes == 4 * PAGE                 # only what was allocated
    assert backing.allocated_bytes_in(0, 8 * PAGE) == 4 * PAGE   # nothing allocated, nothing freed
    assert guest_read(backing, 0, 8 * PAGE) == bytes(8 * PAGE)
    engine.convert(0, 8 * PAGE, False)
    assert backing.read(0, 8 * PAGE) == bytes(8 * PAGE)


def test_truncate_keeps_the_state_and_zeroes_the_data(make):
    engine, backing = make(initial_shared=True)
    backing.write(0, b"\xdd" * 2 * PAGE)
    engine.convert(PAGE, PAGE, True)
    guest_write(backing, PAGE, b"\xee" * PAGE)
    engine.truncate(0, 2 * PAGE)
    assert backing.allocated_bytes_in(0, 2 * PAGE) == 0                    # freed (a read re-faults them)
    assert engine.store.get(0) == 0 and engine.store.get(PAGE) == ATTR_PRIVATE
    assert backing.read(0, PAGE) == bytes(PAGE) and guest_read(backing, PAGE, PAGE) == bytes(PAGE)


def test_a_forked_child_has_no_way_to_private_pages(make):
    """The kernel's version unmaps a page from every process when it turns private.  privmem's
    views are MADV_DONTFORK, so a forked child has no mapping of them at all: its touch of the
    address faults, before and after the parent converts."""
    engine, backing = make(initial_shared=True)
    backing.write(0, b"\x5a" * PAGE)
    engine.convert(0, PAGE, True)
    address = backing.hva
    pid = os.fork()
    if pid == 0:                                      # the child: touch the parent's view
        faulthandler.disable()                        # the fault is expected: no traceback on stderr
        try:
            ctypes.string_at(address, 1)
        finally:
            os._exit(0)                               # reached only if the touch did not fault
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV


def test_a_pinned_page_refuses_to_private_with_its_address_then_converts_after_unpin(make):
    engine, backing = make(initial_shared=True)
    pin = engine.tracker.pin(GpaRange(2 * PAGE, PAGE), "device mid-DMA")
    with pytest.raises(Busy) as info:
        engine.convert(0, 4 * PAGE, True)
    assert info.value.gpa == 2 * PAGE                             # the ABI's error_offset
    assert all(engine.store.get(p * PAGE) == 0 for p in range(4))  # nothing changed
    assert engine.stats.pinned_refusals == 1
    backing.write(0, b"\x01" * PAGE)                              # the host still reaches every page
    engine.tracker.unpin(pin)
    engine.convert(0, 4 * PAGE, True)
    assert engine.store.has(0, 4 * PAGE, ATTR_PRIVATE)


def test_content_modes(make):
    engine, backing = make(initial_shared=True)
    backing.write(0, b"\x77" * PAGE)
    engine.populate(0, PAGE)                                      # before launch: preserved in place
    assert guest_read(backing, 0, PAGE) == b"\x77" * PAGE and engine.stats.zeroed_bytes == 0
    with pytest.raises(InvalidArgument, match="preserve is for conversions to private"):
        engine.convert(0, PAGE, False, mode=PRESERVE)
    engine.launch()
    backing.write(PAGE, b"\x66" * PAGE)
    with pytest.raises(InvalidState, match="refused after launch"):
        engine.convert(PAGE, PAGE, True, mode=PRESERVE)
    with pytest.raises(InvalidState):
        engine.populate(PAGE, PAGE)
    engine.convert(PAGE, PAGE, True, mode=ZERO)
    assert guest_read(backing, PAGE, PAGE) == bytes(PAGE)
    with pytest.raises(InvalidArgument, match="mode='scramble'"):
        engine.convert(2 * PAGE, PAGE, True, mode="scramble")


def test_no_change_returns_early_touching_nothing(make):
    engine, backing = make(initial_shared=False)
    guest_write(backing, 0, b"\x11" * PAGE)
    changes = backing.protection_changes
    conversion = engine.convert(0, PAGE, True)
    assert conversion.changed == () and backing.protection_changes == changes
    assert guest_read(backing, 0, PAGE) == b"\x11" * PAGE        # not zeroed: nothing changed hands


@pytest.mark.parametrize("call, field", [
    (lambda e: e.set_memory_attributes2(0, PAGE, ATTR_PRIVATE, flags=1), "flags"),
    (lambda e: e.set_memory_attributes2(0, PAGE, 1 << 4), "attributes"),
    (lambda e: e.set_memory_attributes2(0, 0, ATTR_PRIVATE), "size"),
    (lambda e: e.set_memory_attributes2(1, PAGE, ATTR_PRIVATE), "address"),
    (lambda e: e.set_memory_attributes2(MEMORY, PAGE, ATTR_PRIVATE), "offset"),
])
def test_the_proposed_abis_validation(make, call, field):
    engine, backing = make(initial_shared=True)
    with pytest.raises(InvalidArgument) as info:
        call(engine)
    assert info.value.field == field and not list(engine.store.ranges())
    engine.set_memory_attributes2(PAGE, PAGE, ATTR_PRIVATE)
    assert engine.store.get(PAGE) == ATTR_PRIVATE


def test_nothing_is_ever_discarded_or_held(make):
    engine, backing = make(initial_shared=False)
    for k in range(200):
        engine.convert((k % 16) * PAGE, PAGE, k % 2 == 0)
    engine.check()
    assert engine.measure_double_allocation() == 0 and engine.stats.discards == 0
    assert engine.measure()["double_bytes"] == 0


# -- a stateful model --------------------------------------------------------------------------

PAGES = 16


class InPlaceModel(RuleBasedStateMachine):
    """The engine against a per-page model: attributes, the contents the content rules say
    (a page that changes hands reads zero, a preserving conversion before launch keeps it, a
    truncate zeroes it), pins (to private over a pinned page: Busy, nothing changed), host
    access (refused on private pages, before any byte moves)."""

    def __init__(self):
        super().__init__()
        self.backing = InPlaceBacking.standin(PAGES * PAGE, initial_shared=True)
        self.engine = InPlaceEngine(ConversionTracker(MemoryAttributes()), self.backing)
        self.private = [False] * PAGES
        self.data = [0] * PAGES
        self.pins: list = []
        self.launched = False

    def teardown(self):
        self.backing.close()

    pages = st.tuples(st.integers(0, PAGES - 1), st.integers(1, 4))

    @rule(span=pages, to_private=st.booleans(), preserve=st.booleans())
    def convert(self, span, to_private, preserve):
        first, count = span
        count = min(count, PAGES - first)
        mode = PRESERVE if preserve else None
        pinned = any(p.gpa < (first + count) * PAGE and first * PAGE < p.end for p in self.pins)
        unchanged = all(self.private[i] == to_private for i in range(first, first + count))
        try:
            self.engine.convert(first * PAGE, count * PAGE, to_private, mode=mode)
        except (InvalidArgument, InvalidState):
            assert preserve and (not to_private or self.launched)
            return
        except Busy:
            assert pinned and not unchanged
            return
        assert unchanged or not pinned
        for i in range(first, first + count):
            if self.private[i] != to_private and not (preserve and to_private):
                self.data[i] = 0
            self.private[i] = to_private

    @rule(span=pages, byte=st.integers(1, 255))
    def host_write(self, span, byte):
        first, count = span
        count = min(count, PAGES - first)
        if any(self.private[first:first + count]):
            with pytest.raises(AccessDenied):
                self.backing.write(first * PAGE, bytes([byte]) * (count * PAGE))
            return
        self.backing.write(first * PAGE, bytes([byte]) * (count * PAGE))
        self.data[first:first + count] = [byte] * count

    @rule(page=st.integers(0, PAGES - 1), byte=st.integers(1, 255))
    def guest_write(self, page, byte):
        if self.private[page]:
            guest_write(self.backing, page * PAGE, bytes([byte]) * PAGE)
            self.data[page] = byte

    @rule(page=st.integers(0, PAGES - 1))
    def pin(self, page):
        if not self.private[page] and len(self.pins) < 3:
            try:
                self.pins.append(self.engine.tracker.pin(GpaRange(page * PAGE, PAGE)))
            except Busy:
                pass

    @precondition(lambda self: self.pins)
    @rule()
    def unpin(self):
        self.engine.tracker.unpin(self.pins.pop(0))

    @rule(page=st.integers(0, PAGES - 1))
    def truncate(self, page):
        self.engine.truncate(page * PAGE, PAGE)
        self.data[page] = 0

    @precondition(lambda self: not self.launched)
    @rule()
    def launch(self):
        self.engine.launch()
        self.launched = True

    @invariant()
    def matches_the_model(self):
        for page in range(PAGES):
            assert bool(self.engine.store.get(page * PAGE)) == self.private[page]
            assert guest_read(self.backing, page * PAGE, 1)[0] == self.data[page], page
        self.engine.check()


TestInPlaceModel = InPlaceModel.TestCase
TestInPlaceModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- the machine: a guest's view -----------------------------------------------------------------

def zero_checks_after_each_share(trace):
    """The trace with a guest check, after every conversion to shared, that the pages it
    turned shared (the ones that were private: the others keep what they held) read zero
    through the shared view."""
    offset = trace.memory_map.offset
    private = bytearray([1]) * (trace.memory >> 12)          # machines start all private
    ops = []
    for op in trace.ops:
        ops.append(op)
        if op.kind != "convert":
            continue
        first, count = offset(op.gpa) >> 12, op.size >> 12
        if op.to == "shared":
            page = 0
            while page < count:
                if private[first + page]:
                    run = page
                    while run < count and private[first + run]:
                        run += 1
                    ops.append(Op("verify", op.gpa + page * PAGE, (run - page) * PAGE, op.vcpu, view="shared",
                                  pattern=0))
                    page = run
                else:
                    page += 1
        private[first:first + count] = bytes([op.to == "private"]) * count
    return trace.replace(ops=tuple(ops))


@pytest.mark.kvm
def test_private_data_never_shows_through_a_shared_view_under_every_workload():
    from privmem.runner import run_trace
    from privmem.workload import WORKLOADS, generate

    for name in WORKLOADS:
        # random's common window is converted by every vCPU at once: one vCPU's check could
        # meet another's conversion back, so that workload runs on one vCPU here
        trace = zero_checks_after_each_share(generate(name, 64 * MiB, 1 if name == "random" else 2, scale=0.02))
        result = run_trace(trace, backend="kvm", backing="in-place")
        assert result.data_errors == 0 and result.dma_errors == 0, (name, result)
        assert result.discards == 0 and result.peak_double_alloc_measured_bytes == 0, name


@pytest.mark.kvm
def test_the_host_touching_a_private_page_faults_through_a_raw_mapping(tmp_path):
    """Through the API a host touch is refused (AccessDenied); through the raw mapping it
    faults: the process dies, no byte is read."""
    import subprocess
    import sys
    import textwrap

    child = textwrap.dedent("""
        import ctypes
        from privmem.ops import Op
        from privmem.vmm import Machine
        m = Machine("16M", 1, backing="in-place", data_check="full")
        m.run_ops([Op("write", 0, 4096, view="private", pattern=0x42)])
        try:
            m.shared_read(0, 8)
        except Exception as exc:
            print(type(exc).__name__, flush=True)
        print(ctypes.string_at(m.shared.hva, 8), flush=True)
    """)
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert run.stdout.decode().splitlines() == ["AccessDenied"]
    assert run.returncode == -signal.SIGSEGV


@pytest.mark.kvm
def test_a_device_pin_across_an_exit_makes_the_guest_retry_until_it_is_dropped():
    from privmem.vmm import Machine

    with Machine("16M", 1, backing="in-place", initial="shared") as machine:
        pin = machine.engine.tracker.pin(GpaRange(PAGE, PAGE), "device mid-DMA")
        threading.Thread(target=lambda: (time.sleep(0.3), machine.engine.tracker.unpin(pin)), daemon=True).start()
        result = machine.run_ops([Op("convert", 0, 4 * PAGE, to="private"),
                                  Op("write", 0, 4 * PAGE, view="private", pattern=9),
                                  Op("verify", 0, 4 * PAGE, view="private", pattern=9)], timeout=30)
        assert result.psc_retries > 0 and result.data_errors == 0 and result.psc_errors == 0
        assert machine.store.has(0, 4 * PAGE, ATTR_PRIVATE)


@pytest.mark.kvm
def test_in_place_machines_refuse_discard_policies_and_memslot_tracking():
    from privmem.runner import make_machine
    from privmem.memmap import GuestMemoryMap
    from privmem.vmm import Machine

    with pytest.raises(InvalidArgument, match="in-place conversion discards nothing"):
        Machine("16M", 1, backing="in-place", policy="eager")
    with pytest.raises(InvalidArgument, match="memslot tracking needs the two-file backing"):
        make_machine("kvm", GuestMemoryMap.flat(16 * MiB), 1, "never", tracking="memslots", backing="in-place")
    with pytest.raises(InvalidArgument, match="backing='both'"):
        Machine("16M", 1, backing="both")


def test_out_of_memory_areas_refuses_the_conversion_and_restores_protections(make, monkeypatch):
    """An mprotect the kernel refuses (ENOMEM: vm.max_map_count memory areas) refuses the
    conversion, changes nothing, and the guest gets an error status rather than a dead run."""
    import errno as errno_module

    from privmem.backing import syscalls
    from privmem.errors import SyscallError

    engine, backing = make(initial_shared=True)
    real = syscalls.mprotect
    calls = {"n": 0}

    def failing(addr, length, prot):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SyscallError("mprotect", errno_module.ENOMEM, "injected")
        return real(addr, length, prot)

    monkeypatch.setattr(syscalls, "mprotect", failing)
    from privmem.memmap import GuestMemoryMap
    engine.memory_map = GuestMemoryMap([(0, 2 * MiB), (2 * MiB, 2 * MiB)])    # two pieces: two mprotects
    with pytest.raises(Unsupported, match="ENOMEM"):
        engine.convert(2 * MiB - PAGE, 2 * PAGE, True)
    assert not list(engine.store.ranges()) and not engine.tracker.in_flight()
    backing.write(2 * MiB - PAGE, b"ok")                                      # the shared view is back
