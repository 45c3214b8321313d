"""The kernel's guest_memfd_test (tools/testing/selftests/kvm/guest_memfd_test.c, 6.18 form;
docs/selftests.md) scenarios that apply on this host, against the real kernel.

Each check uses a fresh 4-page guest_memfd.  SIGBUS scenarios run in a child interpreter
and check that it died of SIGBUS.  Step 10 (guest case) is covered by
test_backing_guest_memfd.py::test_guest_faulted_pages_are_counted_and_punch_frees_them.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from privmem.backing import PrivateBacking, syscalls
from privmem.errors import KvmError, SyscallError
from privmem.units import PAGE_SIZE

PS = PAGE_SIZE
TOTAL = 4 * PS
MMAP, INIT_SHARED = 1, 2
KEEP, PUNCH = syscalls.FALLOC_FL_KEEP_SIZE, syscalls.FALLOC_FL_PUNCH_HOLE | syscalls.FALLOC_FL_KEEP_SIZE

pytestmark = pytest.mark.kvm


def _kvm():
    if not os.path.exists("/dev/kvm"):
        pytest.skip("needs /dev/kvm: this host has no KVM device")
    from privmem.kvm import Kvm
    try:
        return Kvm()
    except KvmError as exc:
        pytest.skip(f"/dev/kvm is not usable here: {exc}")


@pytest.fixture(scope="module")
def kvm():
    with _kvm() as k:
        yield k


def vm_types(kvm) -> list[int]:
    from privmem.kvm import uapi
    try:
        bitmap = kvm.check_extension(uapi.KVM_CAP_VM_TYPES)
    except KvmError:
        bitmap = 0
    return [t for t in range(64) if bitmap >> t & 1] or [uapi.KVM_X86_DEFAULT_VM]


@pytest.fixture(scope="module")
def vm(kvm):
    from privmem.kvm import uapi
    with kvm.create_vm() as machine:
        machine.gmem_flags = machine.check_extension(uapi.KVM_CAP_GUEST_MEMFD_FLAGS)
        yield machine


def flag_sets(vm) -> list[int]:
    return [f for f in (0, MMAP, MMAP | INIT_SHARED) if f & vm.gmem_flags == f]


@pytest.fixture(params=[0, MMAP, MMAP | INIT_SHARED], ids=["flags0", "mmap", "mmap+init_shared"])
def flags(request, vm):
    if request.param & vm.gmem_flags != request.param:
        pytest.skip(f"KVM_CAP_GUEST_MEMFD_FLAGS={vm.gmem_flags:#x} lacks {request.param:#x}")
    return request.param


@pytest.fixture
def fd(vm, flags):
    fd = vm.create_guest_memfd(TOTAL, flags)
    yield fd
    os.close(fd)


def errno_of(call) -> int:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


# step 1 -------------------------------------------------------------------------------
def test_flag_matrix_each_single_bit(kvm):
    from privmem.kvm import uapi
    for vm_type in vm_types(kvm):
        with kvm.create_vm(vm_type) as machine:
            supported = machine.check_extension(uapi.KVM_CAP_GUEST_MEMFD_FLAGS)
            for bit in range(64):
                flag = 1 << bit
                if supported & flag:
                    os.close(machine.create_guest_memfd(PS, flag))
                else:
                    with pytest.raises(KvmError) as info:
                        machine.create_guest_memfd(PS, flag)
                    assert (info.value.call, info.value.errno) == ("KVM_CREATE_GUEST_MEMFD", errno.EINVAL), bit


def test_this_host_offers_mmap_and_init_shared(vm):
    """Reference section 10: KVM_CAP_GUEST_MEMFD_FLAGS = 3 on the project's hosts."""
    assert vm.gmem_flags & (MMAP | INIT_SHARED) == MMAP | INIT_SHARED


# step 3 -------------------------------------------------------------------------------
def test_two_creates_distinct_inodes_and_sizes(vm, flags):
    a, b = vm.create_guest_memfd(PS, flags), vm.create_guest_memfd(2 * PS, flags)
    try:
        sa, sb = os.fstat(a), os.fstat(b)
        assert (sa.st_size, sb.st_size) == (PS, 2 * PS)
        assert sa.st_ino != sb.st_ino
    finally:
        os.close(a)
        os.close(b)


@pytest.mark.parametrize("size", [0, 1, 7, PS // 2, PS - 1, PS + 1])
def test_unaligned_or_zero_size_is_einval(vm, size):
    for flags in flag_sets(vm):
        with pytest.raises(KvmError) as info:
            vm.create_guest_memfd(size, flags)
        assert info.value.errno == errno.EINVAL


# step 4 -------------------------------------------------------------------------------
def test_read_write_pread_pwrite_fail(fd):
    buf = b"x" * PS
    for call in (lambda: os.read(fd, PS), lambda: os.write(fd, buf),
                 lambda: os.pread(fd, PS, 0), lambda: os.pwrite(fd, buf, 0)):
        assert errno_of(call) != 0


# step 5 -------------------------------------------------------------------------------
def test_mmap_init_shared_write_punch_read(vm):
    if vm.gmem_flags & (MMAP | INIT_SHARED) != MMAP | INIT_SHARED:
        pytest.skip("needs MMAP|INIT_SHARED")
    with PrivateBacking.from_guest_memfd(vm.create_guest_memfd(TOTAL, MMAP | INIT_SHARED), TOTAL) as b:
        b.fill(0, TOTAL, 0xAA)
        assert b.read(0, TOTAL) == b"\xaa" * TOTAL
        b.discard(0, PS)
        assert b.read(0, PS) == bytes(PS)
        assert b.read(PS, 3 * PS) == b"\xaa" * (3 * PS)


def test_madvise_rules(vm):
    if vm.gmem_flags & (MMAP | INIT_SHARED) != MMAP | INIT_SHARED:
        pytest.skip("needs MMAP|INIT_SHARED")
    with PrivateBacking.from_guest_memfd(vm.create_guest_memfd(TOTAL, MMAP | INIT_SHARED), TOTAL) as b:
        b.fill(0, TOTAL, 0xAA)
        syscalls.madvise(b.hva, TOTAL, syscalls.MADV_HUGEPAGE)
        with pytest.raises(SyscallError) as info:
            syscalls.madvise(b.hva, TOTAL, syscalls.MADV_COLLAPSE)
        assert (info.value.call, info.value.errno) == ("madvise", errno.EINVAL)
        syscalls.madvise(b.hva, TOTAL, syscalls.MADV_DONTNEED)    # drops PTEs, not the pages
        assert b.read(0, TOTAL) == b"\xaa" * TOTAL                  # re-fault works
        assert b.allocated_bytes() == TOTAL


CHILD = textwrap.dedent("""
    import ctypes, sys
    from privmem.kvm import Kvm
    from privmem.backing import syscalls as s
    flags, map_size, action = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    total = 4 * 4096
    vm = Kvm().create_vm()
    fd = vm.create_guest_memfd(total, flags)
    addr = s.mmap(map_size, s.PROT_READ | s.PROT_WRITE, s.MAP_SHARED, fd)
    if action == "inside":
        ctypes.memset(addr, 0xaa, total)
        assert ctypes.string_at(addr, total) == b"\\xaa" * total
        print("inside ok", flush=True)
    elif action == "memset-all":
        ctypes.memset(addr, 0xaa, map_size)
    elif action == "read-at-size":
        ctypes.string_at(addr + total, 1)
    elif action == "read-first":
        ctypes.string_at(addr, 1)
    print("survived", flush=True)
""")


def run_child(flags: int, map_size: int, action: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONFAULTHANDLER", None)
    return subprocess.run([sys.executable, "-c", CHILD, str(flags), str(map_size), action],
                          capture_output=True, text=True, timeout=60, env=env)


def test_sigbus_past_file_size(vm):
    if vm.gmem_flags & (MMAP | INIT_SHARED) != MMAP | INIT_SHARED:
        pytest.skip("needs MMAP|INIT_SHARED")
    ok = run_child(MMAP | INIT_SHARED, 4 * TOTAL, "inside")
    assert ok.returncode == 0 and "inside ok" in ok.stdout, ok.stderr
    for action in ("memset-all", "read-at-size"):
        child = run_child(MMAP | INIT_SHARED, 4 * TOTAL, action)
        assert child.returncode == -signal.SIGBUS, (action, child.returncode, child.stderr[-500:])
        assert "survived" not in child.stdout


# step 6 -------------------------------------------------------------------------------
def test_mmap_without_init_shared_sigbus_on_any_access(vm):
    if not vm.gmem_flags & MMAP:
        pytest.skip("needs MMAP")
    child = run_child(MMAP, TOTAL, "read-first")
    assert child.returncode == -signal.SIGBUS, (child.returncode, child.stderr[-500:])


# step 7 -------------------------------------------------------------------------------
def test_mmap_rules(fd, flags):
    if flags & MMAP:
        with pytest.raises(SyscallError) as info:
            syscalls.mmap(TOTAL, syscalls.PROT_READ | syscalls.PROT_WRITE, syscalls.MAP_PRIVATE, fd)
        assert info.value.errno == errno.EINVAL
        addr = syscalls.mmap(TOTAL, syscalls.PROT_NONE, syscalls.MAP_SHARED, fd)   # what accounting relies on
        syscalls.munmap(addr, TOTAL)
    else:
        for size in (PS, TOTAL):
            for prot in (syscalls.PROT_READ | syscalls.PROT_WRITE, syscalls.PROT_NONE):
                with pytest.raises(SyscallError) as info:
                    syscalls.mmap(size, prot, syscalls.MAP_SHARED, fd)
                assert (info.value.call, info.value.errno) == ("mmap", errno.ENODEV)


# step 8 -------------------------------------------------------------------------------
def test_fstat(fd):
    st = os.fstat(fd)
    assert st.st_size == TOTAL and st.st_blksize == PS
    assert st.st_blocks == 0                    # never updated: useless for accounting
    syscalls.fallocate(fd, KEEP, 0, TOTAL)
    assert os.fstat(fd).st_blocks == 0
    assert syscalls.cachestat(fd, 0, TOTAL).nr_cache == 4


def test_size_is_fixed(fd):
    assert errno_of(lambda: os.ftruncate(fd, 2 * TOTAL)) == errno.EINVAL


# step 9 -------------------------------------------------------------------------------
def test_fallocate_sequence(fd):
    def falloc(mode, offset, length):
        try:
            syscalls.fallocate(fd, mode, offset, length)
        except SyscallError as exc:
            assert exc.call == "fallocate"
            return exc.errno
        return 0

    assert falloc(KEEP, 0, TOTAL) == 0
    assert falloc(PUNCH, PS - 1, PS) == errno.EINVAL
    assert falloc(KEEP, TOTAL, PS) == errno.EINVAL
    assert falloc(KEEP, TOTAL + PS, PS) == errno.EINVAL
    assert falloc(PUNCH, TOTAL, PS) == 0                 # punch past the end: no size check
    assert falloc(PUNCH, TOTAL + PS, PS) == 0
    assert falloc(PUNCH, PS, PS - 1) == errno.EINVAL
    assert falloc(PUNCH, PS, PS) == 0
    assert falloc(KEEP, PS, PS) == 0
    assert falloc(0, 0, PS) == errno.EOPNOTSUPP          # no KEEP_SIZE
    assert falloc(KEEP | 0x08, 0, PS) == errno.EOPNOTSUPP  # COLLAPSE_RANGE bit: beyond KEEP|PUNCH


@pytest.mark.parametrize("offset,length", [(0, 1), (0, PS - 1), (0, PS + 1), (1, 1), (1, PS - 1), (1, PS),
                                           (1, PS + 1), (PS, 1), (PS, PS - 1), (PS, PS + 1)])
def test_punch_misaligned_is_einval(fd, offset, length):
    with pytest.raises(SyscallError) as info:
        syscalls.fallocate(fd, PUNCH, offset, length)
    assert info.value.errno == errno.EINVAL


def test_teardown_fallocate_after_vm_is_gone(kvm):
    """8.1 teardown: the guest_memfd outlives its VM; punch and allocate still succeed."""
    with kvm.create_vm() as machine:
        fd = machine.create_guest_memfd(TOTAL, 0)
    try:
        syscalls.fallocate(fd, PUNCH, 0, TOTAL)
        syscalls.fallocate(fd, KEEP, 0, TOTAL)
        assert syscalls.cachestat(fd, 0, TOTAL).nr_cache == 4
    finally:
        os.close(fd)
