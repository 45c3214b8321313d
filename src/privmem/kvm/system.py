"""``/dev/kvm``: the system fd (api.rst section 4: "system ioctl")."""

from __future__ import annotations

import ctypes
import os

from ..errors import KvmError
from . import ioctls, uapi
from ._sys import FdObject, ioctl

DEV_KVM = "/dev/kvm"


class Kvm(FdObject):
    """An open ``/dev/kvm``.  ``Kvm()`` opens it; ``Kvm(fd=...)`` wraps an fd it then owns."""

    def __init__(self, path: str = DEV_KVM, *, fd: int | None = None):
        if fd is None:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise KvmError(f"open({path})", exc.errno) from None
        super().__init__(fd)

    def get_api_version(self) -> int:
        return ioctl(self.fd, "KVM_GET_API_VERSION", ioctls.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, "KVM_CHECK_EXTENSION", ioctls.KVM_CHECK_EXTENSION, cap)

    def get_vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, "KVM_GET_VCPU_MMAP_SIZE", ioctls.KVM_GET_VCPU_MMAP_SIZE)

    def get_supported_cpuid(self) -> list[uapi.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID (api.rst 4.46): the CPUID entries KVM can offer a guest."""
        buffer = uapi.cpuid2_with(uapi.KVM_CPUID_ENTRIES_MAX)(nent=uapi.KVM_CPUID_ENTRIES_MAX)
        ioctl(self.fd, "KVM_GET_SUPPORTED_CPUID", ioctls.KVM_GET_SUPPORTED_CPUID, ctypes.addressof(buffer))
        return list(buffer.entries[:buffer.nent])

    def create_vm(self, vm_type: int = uapi.KVM_X86_DEFAULT_VM):
        from .vm import Vm
        fd = ioctl(self.fd, "KVM_CREATE_VM", ioctls.KVM_CREATE_VM, vm_type)
        vm = Vm(fd, vm_type=vm_type)
        try:
            vm.vcpu_mmap_size = self.get_vcpu_mmap_size()
        except BaseException:
            vm.close()
            raise
        return vm
