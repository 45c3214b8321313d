"""ioctl request numbers, computed from the struct types (include/uapi/asm-generic/ioctl.h).

Nothing here is hand-typed: a number is (direction, type, nr, sizeof(arg)) packed the way the
kernel packs it, so a wrong struct size shows up as a wrong number in the pinning test.
"""

from __future__ import annotations

import ctypes

from . import uapi

_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    assert 0 <= size < (1 << _IOC_SIZEBITS), size
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(struct))


def _IOW(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(struct))


def _IOWR(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(struct))


K = uapi.KVMIO

# /dev/kvm
KVM_GET_API_VERSION = _IO(K, 0x00)
KVM_CREATE_VM = _IO(K, 0x01)
KVM_CHECK_EXTENSION = _IO(K, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(K, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(K, 0x05, uapi.kvm_cpuid2)
# VM
KVM_CREATE_VCPU = _IO(K, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(K, 0x46, uapi.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(K, 0x47)
KVM_SET_USER_MEMORY_REGION2 = _IOW(K, 0x49, uapi.kvm_userspace_memory_region2)
KVM_ENABLE_CAP = _IOW(K, 0xA3, uapi.kvm_enable_cap)
KVM_SET_MEMORY_ATTRIBUTES = _IOW(K, 0xD2, uapi.kvm_memory_attributes)
KVM_CREATE_GUEST_MEMFD = _IOWR(K, 0xD4, uapi.kvm_create_guest_memfd)
# guest_memfd (in-place conversion series, NOT MERGED: the same nr as the VM ioctl, a larger struct)
KVM_SET_MEMORY_ATTRIBUTES2 = _IOWR(K, 0xD2, uapi.kvm_memory_attributes2)
# vCPU
KVM_RUN = _IO(K, 0x80)
KVM_GET_REGS = _IOR(K, 0x81, uapi.kvm_regs)
KVM_SET_REGS = _IOW(K, 0x82, uapi.kvm_regs)
KVM_GET_SREGS = _IOR(K, 0x83, uapi.kvm_sregs)
KVM_SET_SREGS = _IOW(K, 0x84, uapi.kvm_sregs)
KVM_SET_CPUID2 = _IOW(K, 0x90, uapi.kvm_cpuid2)
KVM_SET_GUEST_DEBUG = _IOW(K, 0x9B, uapi.kvm_guest_debug)

NAMES = {value: name for name, value in globals().items()
         if name.startswith("KVM_") and isinstance(value, int)}
