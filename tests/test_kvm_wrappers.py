"""The thin wrappers against the real kernel, and against a bad fd (every call must fail
cleanly with KvmError naming its ioctl)."""

import errno
import os
import time

import pytest

from privmem.errors import KvmError
from privmem.kvm import Kvm, Vcpu, Vm, format_info, probe, uapi


def _bad_fd():
    r, w = os.pipe()          # a valid fd that is not a KVM fd -> ENOTTY
    os.close(w)
    return r


def _calls(obj):
    if isinstance(obj, Kvm):
        return {"KVM_GET_API_VERSION": obj.get_api_version,
                "KVM_CHECK_EXTENSION": lambda: obj.check_extension(uapi.KVM_CAP_USER_MEMORY2),
                "KVM_GET_VCPU_MMAP_SIZE": obj.get_vcpu_mmap_size,
                "KVM_CREATE_VM": obj.create_vm}
    if isinstance(obj, Vm):
        return {"KVM_CHECK_EXTENSION": lambda: obj.check_extension(1),
                "KVM_SET_USER_MEMORY_REGION": lambda: obj.set_user_memory_region(0, 0, 0, 4096, 0),
                "KVM_SET_USER_MEMORY_REGION2": lambda: obj.set_user_memory_region2(0, 0, 0, 4096, 0),
                "KVM_CREATE_GUEST_MEMFD": lambda: obj.create_guest_memfd(4096, 0),
                "KVM_SET_MEMORY_ATTRIBUTES": lambda: obj.set_memory_attributes(0, 4096, 8),
                "KVM_ENABLE_CAP": lambda: obj.enable_cap(uapi.KVM_CAP_EXIT_HYPERCALL, 1 << 12),
                "KVM_CREATE_VCPU": lambda: obj.create_vcpu(0)}
    return {"KVM_RUN": obj.run, "KVM_GET_REGS": obj.get_regs,
            "KVM_SET_REGS": lambda: obj.set_regs(uapi.kvm_regs()),
            "KVM_GET_SREGS": obj.get_sregs, "KVM_SET_SREGS": lambda: obj.set_sregs(uapi.kvm_sregs()),
            "KVM_ENABLE_CAP": lambda: obj.enable_cap(1)}


@pytest.mark.parametrize("cls", [Kvm, Vm, Vcpu])
@pytest.mark.parametrize("how", ["not-kvm-fd", "closed"])
def test_bad_fd_every_call_fails_cleanly(cls, how):
    obj = cls(fd=_bad_fd()) if cls is Kvm else cls(_bad_fd())
    expected = errno.ENOTTY
    if how == "closed":
        obj.close()
        obj.close()                       # idempotent
        assert obj.fd == -1 and obj.closed
        expected = errno.EBADF
    for name, call in _calls(obj).items():
        with pytest.raises(KvmError) as info:
            call()
        assert info.value.call == name
        assert info.value.errno == expected
        assert name in str(info.value)
    obj.close()


def test_open_missing_device():
    with pytest.raises(KvmError) as info:
        Kvm("/nonexistent/kvm")
    assert info.value.errno == errno.ENOENT and "open" in info.value.call


def test_probe_without_kvm():
    info = probe("/nonexistent/kvm")
    assert info["kvm"] is False and info["api_version"] is None and info["vm_types"] == []
    assert "not available" in format_info(info)


def _fd_count():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.kvm
def test_system_and_vm_real():
    before = _fd_count()
    with Kvm() as kvm:
        assert kvm.get_api_version() == uapi.KVM_API_VERSION
        assert kvm.get_vcpu_mmap_size() >= 4096
        with kvm.create_vm() as vm:
            assert vm.check_extension(uapi.KVM_CAP_USER_MEMORY2) == 1
            with vm.create_vcpu(0) as vcpu:
                assert vcpu.kvm_run is not None
                sregs = vcpu.get_sregs()
                vcpu.set_sregs(sregs)
                regs = vcpu.get_regs()
                assert regs.rflags & 2
                vcpu.set_regs(regs)
            with pytest.raises(KvmError) as info:
                vm.create_vcpu(0).close()      # a second vCPU 0 is refused
            assert info.value.call == "KVM_CREATE_VCPU"
    assert _fd_count() == before


@pytest.mark.kvm
def test_guest_memfd_real():
    with Kvm() as kvm, kvm.create_vm() as vm:
        if not vm.check_extension(uapi.KVM_CAP_GUEST_MEMFD):
            pytest.skip("no KVM_CAP_GUEST_MEMFD")
        fd = vm.create_guest_memfd(2 << 20, 0)
        try:
            assert os.fstat(fd).st_size == 2 << 20
            vm.set_user_memory_region2(0, uapi.KVM_MEM_GUEST_MEMFD, 0, 2 << 20, 0, fd, 0)
        finally:
            os.close(fd)
        with pytest.raises(KvmError) as info:
            vm.create_guest_memfd(4095, 0)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(KvmError) as info:      # v1 refuses GUEST_MEMFD
            vm.set_user_memory_region(1, uapi.KVM_MEM_GUEST_MEMFD, 4 << 20, 4096, 0)
        assert info.value.errno == errno.EINVAL


@pytest.mark.kvm
def test_probe_real():
    start = time.monotonic()
    info = probe()
    assert time.monotonic() - start < 5
    assert info["kvm"] is True and info["api_version"] == 12
    assert "default" in info["vm_types"]
    assert isinstance(info["hypercall_exit_works"], bool)
    assert isinstance(info["max_memslots"], int) and info["max_memslots"] > 2
    text = format_info(info)
    assert "guest_memfd" in text and "hypercall exit works" in text


def test_machine_support_is_refused_by_name_on_a_device_that_is_not_kvm():
    from privmem.kvm.probe import machine_unsupported_reason

    assert "/dev/null is not a KVM device" in machine_unsupported_reason("/dev/null")


@pytest.mark.kvm
def test_this_hosts_kvm_has_what_the_machine_needs():
    from privmem.kvm.probe import machine_unsupported_reason

    assert machine_unsupported_reason() is None
