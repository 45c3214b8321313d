"""Kernel selftest scenarios (docs/selftests.md) that tests/test_vmm_*.py and
tests/test_backing_guest_memfd*.py did not cover yet; docs/selftests.md maps every step.

* 8.1 private_mem_conversions_test: the do_fallocate=true pass (conversions that punch the
  side left: the eager policy) and the punch-hole case (punch without an attribute change).
* 8.2 private_mem_kvm_exits_test: memslot_deleted / memslot_not_private analogues through the
  machine's memory-fault handler (exit 39 written into kvm_run by the test; this host has no
  SW_PROTECTED VM type, so KVM never delivers it).
* 8.4 set_memory_region_test, guest_memfd parts: flags, max slots, bad bindings, offsets and
  overlaps, against the real KVM_SET_USER_MEMORY_REGION2.
"""

from __future__ import annotations

import errno
import os

import pytest

from privmem import GuestError
from privmem.attrs import ATTR_PRIVATE
from privmem.backing import SharedBacking
from privmem.errors import KvmError
from privmem.kvm import Kvm, uapi
from privmem.units import MiB
from privmem.ops import Op as GuestOp
from privmem.vmm import Machine
from privmem.vmm.exits import MAX_FAULT_REPEATS

from .resources import resources
from .test_robust_bad_input import full_data_checks

pytestmark = pytest.mark.kvm

PAGE = 4096
TIMEOUT = 30
MEMORY = 16 * MiB
# the selftest's W is 2 MiB + 4 KiB with ranges up to 2 MiB; guest data ops are emulated
# here (~0.35 us per 4 bytes), so the same shape is kept at 1/32 scale: 64 KiB + 4 KiB
BIG = 64 * 1024
WINDOW = BIG + PAGE
RANGES = [(0, PAGE), (0, BIG), (PAGE, PAGE), (PAGE, BIG), (BIG, PAGE)]
W0 = 4 * MiB


def G(kind, offset, size, **kw):
    return GuestOp(kind, W0 + offset, size, 0, **kw)


# ---- 8.1 -------------------------------------------------------------------------------

def test_conversions_with_fallocate_punch_the_side_left():
    """do_fallocate = true: every conversion to shared punches guest_memfd, every conversion
    to private punches the shared memfd (policy eager).  The host never sees private data,
    each side reads zeroes after its punch, and the final all-shared conversion (step 7)
    leaves no guest_memfd page in W."""
    with Machine(MEMORY, 1, policy="eager", initial="shared", **full_data_checks()) as m:
        r = m.run_ops([G("write", 0, WINDOW, view="shared", pattern=0xAA),
                       G("verify", 0, WINDOW, view="shared", pattern=0xAA)], timeout=TIMEOUT)
        assert m.shared_read(W0, WINDOW) == b"\xaa" * WINDOW
        m.shared_write(W0, b"\xcc" * WINDOW)
        for offset, size in RANGES:
            r = m.run_ops([G("verify", 0, WINDOW, view="shared", pattern=0xCC),
                           G("write", offset, size, view="shared", pattern=0x11),
                           G("convert", offset, size, to="private"),
                           G("write", offset, size, view="private", pattern=0x22),
                           G("verify", offset, size, view="private", pattern=0x22)], timeout=TIMEOUT)
            assert r.data_errors == 0, (offset, size, r.failures)
            gpa = W0 + offset
            assert m.shared.allocated_bytes_in(gpa, size) == 0                # punched at to-private
            assert m.private.allocated_bytes_in(gpa, size) == size
            r = m.run_ops([G("convert", offset, size, to="shared"),
                           G("verify", offset, size, view="private", pattern=0),   # the punch zeroed it
                           G("write", offset, size, view="shared", pattern=0x33)], timeout=TIMEOUT)
            assert r.data_errors == 0, (offset, size, r.failures)
            assert m.private.allocated_bytes_in(gpa, size) == size          # re-faulted (zeroed) by the verify
            assert m.shared_read(gpa, size) == b"\x33" * size                  # never a 0x22
            m.shared_write(gpa, b"\x44" * size)
            r = m.run_ops([G("verify", offset, size, view="shared", pattern=0x44),
                           G("write", offset, size, view="shared", pattern=0xCC),
                           G("convert", 0, WINDOW, to="shared")], timeout=TIMEOUT)
            assert r.data_errors == 0
        m.run_ops([G("convert", 0, WINDOW, to="private"), G("convert", 0, WINDOW, to="shared")], timeout=TIMEOUT)
        assert m.private.allocated_bytes_in(W0, WINDOW) == 0                   # step 7
        assert m.engine.store.has(W0, WINDOW, 0)


@pytest.mark.parametrize("precise", [False, True])
def test_punch_hole_without_attribute_change_reads_zeroes(precise):
    """Punch-hole case: W is private; for each R, the host punches all of W (attributes stay
    private), the guest writes 0xcc to R (precise) or W, the host punches R, and the guest
    reads zeroes in R while the rest of W keeps 0xcc."""
    with Machine(MEMORY, 1, initial="shared", **full_data_checks()) as m:
        m.run_ops([G("convert", 0, WINDOW, to="private")], timeout=TIMEOUT)
        for offset, size in RANGES:
            m.private.discard(W0, WINDOW)                      # fallocate(PUNCH_HOLE), no attributes
            assert m.engine.store.has(W0, WINDOW, ATTR_PRIVATE)
            span = (offset, size) if precise else (0, WINDOW)
            r = m.run_ops([G("write", *span, view="private", pattern=0xCC),
                           G("verify", *span, view="private", pattern=0xCC)], timeout=TIMEOUT)
            assert r.data_errors == 0
            m.private.discard(W0 + offset, size)
            ops = [G("verify", offset, size, view="private", pattern=0)]
            if not precise:
                ops += [G("verify", 0, offset, view="private", pattern=0xCC)] if offset else []
                rest = WINDOW - offset - size
                ops += [G("verify", offset + size, rest, view="private", pattern=0xCC)] if rest else []
            r = m.run_ops(ops, timeout=TIMEOUT)
            assert r.data_errors == 0, (offset, size, r.failures)
            assert m.engine.store.has(W0, WINDOW, ATTR_PRIVATE)
    # teardown (the selftest's last step) is test_backing_guest_memfd_selftest::test_teardown_fallocate_after_vm_is_gone


# ---- 8.2 -------------------------------------------------------------------------------

FLAGS_PRIVATE = uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE


def _fault(m, flags, gpa, size=PAGE):
    run = m.vcpu(0).kvm_run
    run.exit_reason = uapi.KVM_EXIT_MEMORY_FAULT
    run.memory_fault.flags, run.memory_fault.gpa, run.memory_fault.size = flags, gpa, size
    return m.dispatch(0)


def test_exits_memslot_deleted_analog():
    """A private access to a page whose backing went away: exit 39, flags PRIVATE (8), the
    page's gpa, size 4096.  The handler converts the page to private once (as QEMU does),
    re-enters, and when the identical fault keeps coming back it stops after
    MAX_FAULT_REPEATS with a GuestError naming gpa, size and flags, registers attached."""
    assert FLAGS_PRIVATE == 8
    gpa = W0 + 5 * PAGE
    with Machine(MEMORY, 1, initial="shared") as m:
        before = m.engine.stats.conversions
        assert _fault(m, FLAGS_PRIVATE, gpa) is False
        assert m.engine.store.has(gpa, PAGE, ATTR_PRIVATE) and m.engine.store.has(gpa + PAGE, PAGE, 0)
        assert m.engine.stats.conversions == before + 1
        with pytest.raises(GuestError, match=rf"vCPU 0: memory fault at {gpa:#x} \(\+0x1000, flags 0x8\) "
                                             rf"repeated {MAX_FAULT_REPEATS} times") as info:
            for _ in range(2 * MAX_FAULT_REPEATS):
                _fault(m, FLAGS_PRIVATE, gpa)
        assert "rip" in info.value.registers
        assert m.engine.stats.conversions == before + 1          # the repeats changed nothing
        assert m.exit_counts["memory_fault"] == MAX_FAULT_REPEATS + 1


def test_exits_memslot_not_private_analog():
    """The page is already PRIVATE but the access still faults (a slot without guest_memfd):
    the handler's conversion is a no-op, the same fault repeats, the guard stops it.  A
    different fault in between resets the guard; a new run resets it too."""
    gpa = W0
    with Machine(MEMORY, 1, initial="private") as m:
        assert m.engine.store.has(gpa, PAGE, ATTR_PRIVATE)
        conversions = m.engine.stats.conversions
        for _ in range(MAX_FAULT_REPEATS - 1):
            assert _fault(m, FLAGS_PRIVATE, gpa) is False
        assert _fault(m, 0, gpa + PAGE) is False                 # another fault: the count restarts
        assert m.engine.store.has(gpa + PAGE, PAGE, 0)
        for _ in range(MAX_FAULT_REPEATS - 1):
            assert _fault(m, FLAGS_PRIVATE, gpa) is False
        m.run_ops([G("touch", 0, PAGE, view="private")], timeout=TIMEOUT)     # a run resets it as well
        for _ in range(MAX_FAULT_REPEATS):
            assert _fault(m, FLAGS_PRIVATE, gpa) is False
        with pytest.raises(GuestError, match=r"repeated"):
            _fault(m, FLAGS_PRIVATE, gpa)
        assert m.engine.stats.conversions == conversions + 1     # only the shared fault changed a page
        assert m.engine.store.has(gpa, PAGE, ATTR_PRIVATE)


@pytest.mark.parametrize("flags, gpa, size, why", [
    (FLAGS_PRIVATE, 0xC0000000, PAGE, "outside guest RAM"),      # the selftest's GPA: past 16 MiB
    (FLAGS_PRIVATE, W0 + 1, PAGE, "outside guest RAM"),          # not page aligned
    (0, W0, 0, "outside guest RAM"),                             # empty
    (0, MEMORY - PAGE, 2 * PAGE, "outside guest RAM"),           # runs past the end
])
def test_exits_with_impossible_fields_are_guest_errors(flags, gpa, size, why):
    with Machine(MEMORY, 1) as m:
        before = list(m.engine.store.ranges())
        with pytest.raises(GuestError, match=why) as info:
            _fault(m, flags, gpa, size)
        assert f"gpa {gpa:#x}" in str(info.value) and "rip" in info.value.registers
        assert list(m.engine.store.ranges()) == before


# ---- 8.4 -------------------------------------------------------------------------------

REGION = 2 * MiB
GPA = 0xC0000000
SLOT = 10
GMEM = uapi.KVM_MEM_GUEST_MEMFD


@pytest.fixture
def vm():
    before = resources()
    with Kvm() as kvm, kvm.create_vm() as vm, SharedBacking.create(REGION) as memory:
        vm.kvm, vm.memory = kvm, memory
        yield vm
    assert resources() == before


def _einval(call):
    with pytest.raises(KvmError) as info:
        call()
    assert info.value.errno == errno.EINVAL, info.value
    return info.value


def test_region_flags(vm):
    gmem = vm.create_guest_memfd(REGION, 0)
    try:
        for bit in range(32):
            flag = 1 << bit
            if flag in (uapi.KVM_MEM_LOG_DIRTY_PAGES, uapi.KVM_MEM_READONLY):
                continue
            if flag == GMEM:                                          # v1 never takes GUEST_MEMFD
                _einval(lambda: vm.set_user_memory_region(SLOT, flag, GPA, REGION, vm.memory.hva))
                continue
            _einval(lambda: vm.set_user_memory_region(SLOT, flag, GPA, REGION, vm.memory.hva))
            _einval(lambda: vm.set_user_memory_region2(SLOT, flag, GPA, REGION, vm.memory.hva))
        for extra in (uapi.KVM_MEM_LOG_DIRTY_PAGES, uapi.KVM_MEM_READONLY):
            _einval(lambda: vm.set_user_memory_region2(SLOT, GMEM | extra, GPA, REGION, vm.memory.hva, gmem, 0))
        vm.set_user_memory_region2(SLOT, GMEM, GPA, REGION, vm.memory.hva, gmem, 0)   # and alone it binds
    finally:
        os.close(gmem)


def test_max_memslots_then_one_more_is_einval(vm):
    slots = vm.check_extension(uapi.KVM_CAP_NR_MEMSLOTS)
    assert slots > 2
    for slot in range(slots):
        vm.set_user_memory_region2(slot, 0, slot * REGION, REGION, vm.memory.hva)
    _einval(lambda: vm.set_user_memory_region2(slots, 0, slots * REGION, REGION, vm.memory.hva))


def test_binding_something_that_is_not_this_vms_guest_memfd_is_einval(vm):
    other_vm = vm.kvm.create_vm()
    other = other_vm.create_guest_memfd(REGION, 0)
    try:
        for fd in (vm.kvm.fd, vm.fd, vm.memory.fd, other):
            _einval(lambda: vm.set_user_memory_region2(SLOT, GMEM, GPA, REGION, vm.memory.hva, fd, 0))
        other_vm.set_user_memory_region2(SLOT, GMEM, GPA, REGION, vm.memory.hva, other, 0)   # its own VM binds it
    finally:
        os.close(other)
        other_vm.close()


def test_unaligned_guest_memfd_offsets_are_einval(vm):
    gmem = vm.create_guest_memfd(REGION, 0)
    try:
        for offset in range(1, PAGE):
            _einval(lambda: vm.set_user_memory_region2(SLOT, GMEM, GPA, REGION, vm.memory.hva, gmem, offset))
        vm.set_user_memory_region2(SLOT, GMEM, GPA, REGION, vm.memory.hva, gmem, 0)
    finally:
        os.close(gmem)


def test_overlapping_bindings(vm):
    """File-offset overlap: EINVAL on this host (mainline; kvm-x86 says EEXIST); GPA overlap: EEXIST."""
    size = 2 * REGION
    gmem = vm.create_guest_memfd(5 * REGION, 0)
    with SharedBacking.create(size) as memory:
        try:
            bind = lambda slot, gpa, offset: vm.set_user_memory_region2(slot, GMEM, gpa, size, memory.hva,  # noqa: E731
                                                                        gmem, offset)
            bind(SLOT, GPA, 0)
            bind(SLOT + 1, 0x180000000, 2 * REGION)
            vm.set_user_memory_region2(SLOT, 0, GPA, 0, 0)                    # delete slot 10
            for offset in (REGION, 3 * REGION):
                _einval(lambda: bind(SLOT, GPA, offset))
            for gpa in (0x180000000 - REGION, 0x180000000 + REGION):
                with pytest.raises(KvmError) as info:
                    bind(SLOT, gpa, 0)
                assert info.value.errno == errno.EEXIST
        finally:
            os.close(gmem)
