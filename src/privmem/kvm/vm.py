"""A VM fd (api.rst section 4: "vm ioctl").  Thin wrappers named after their ioctl; no policy."""

from __future__ import annotations

import ctypes

from . import ioctls, uapi
from ._sys import FdObject, ioctl


class Vm(FdObject):
    """A VM.  Owns its fd; ``create_vcpu`` returns ``Vcpu`` objects that own theirs."""

    def __init__(self, fd: int, *, vm_type: int = uapi.KVM_X86_DEFAULT_VM, vcpu_mmap_size: int = 0):
        super().__init__(fd)
        self.vm_type = vm_type
        self.vcpu_mmap_size = vcpu_mmap_size

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, "KVM_CHECK_EXTENSION", ioctls.KVM_CHECK_EXTENSION, cap)

    def set_user_memory_region(self, slot: int, flags: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int) -> None:
        region = uapi.kvm_userspace_memory_region(slot, flags, guest_phys_addr, memory_size, userspace_addr)
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION", ioctls.KVM_SET_USER_MEMORY_REGION, ctypes.addressof(region))

    def set_user_memory_region2(self, slot: int, flags: int, guest_phys_addr: int, memory_size: int,
                                userspace_addr: int = 0, guest_memfd: int = 0,
                                guest_memfd_offset: int = 0) -> None:
        region = uapi.kvm_userspace_memory_region2(
            slot=slot, flags=flags, guest_phys_addr=guest_phys_addr, memory_size=memory_size,
            userspace_addr=userspace_addr, guest_memfd_offset=guest_memfd_offset, guest_memfd=guest_memfd)
        ioctl(self.fd, "KVM_SET_USER_MEMORY_REGION2", ioctls.KVM_SET_USER_MEMORY_REGION2,
              ctypes.addressof(region))

    def create_guest_memfd(self, size: int, flags: int = 0) -> int:
        """Return a new guest_memfd fd; the caller owns it (a backing closes it)."""
        arg = uapi.kvm_create_guest_memfd(size=size, flags=flags)
        return ioctl(self.fd, "KVM_CREATE_GUEST_MEMFD", ioctls.KVM_CREATE_GUEST_MEMFD, ctypes.addressof(arg))

    def set_memory_attributes(self, address: int, size: int, attributes: int, flags: int = 0) -> None:
        arg = uapi.kvm_memory_attributes(address, size, attributes, flags)
        ioctl(self.fd, "KVM_SET_MEMORY_ATTRIBUTES", ioctls.KVM_SET_MEMORY_ATTRIBUTES, ctypes.addressof(arg))

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        arg = uapi.kvm_enable_cap(cap=cap, flags=flags)
        for i, value in enumerate(args):
            arg.args[i] = value
        ioctl(self.fd, "KVM_ENABLE_CAP", ioctls.KVM_ENABLE_CAP, ctypes.addressof(arg))

    def set_tss_addr(self, address: int) -> None:
        ioctl(self.fd, "KVM_SET_TSS_ADDR", ioctls.KVM_SET_TSS_ADDR, address)

    def create_vcpu(self, vcpu_id: int):
        from .vcpu import Vcpu
        fd = ioctl(self.fd, "KVM_CREATE_VCPU", ioctls.KVM_CREATE_VCPU, vcpu_id)
        return Vcpu(fd, self.vcpu_mmap_size, vcpu_id=vcpu_id)
