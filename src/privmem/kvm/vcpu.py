"""A vCPU fd (api.rst section 4: "vcpu ioctl") and its mmapped ``struct kvm_run``."""

from __future__ import annotations

import ctypes
import errno

from ..errors import KvmError, InvalidState
from . import ioctls, uapi
from ._sys import FdObject, _ioctl, get_errno, ioctl, map_shared

_KVM_RUN = ioctls.KVM_RUN
_EXIT_INTR = uapi.KVM_EXIT_INTR
_EXIT_MEMORY_FAULT = uapi.KVM_EXIT_MEMORY_FAULT
_EHWPOISON = getattr(errno, "EHWPOISON", 133)   # not exported by every Python build
_FAULT_ERRNOS = (errno.EFAULT, _EHWPOISON)


class Vcpu(FdObject):
    """A vCPU.  ``kvm_run`` is a ``uapi.kvm_run`` view of the shared page (the exit record).

    ``run()`` returns the exit reason.  Outcomes the kernel reports through errno but that
    are exits, not errors, come back as values: EINTR (a signal or ``immediate_exit``) ->
    ``KVM_EXIT_INTR``; EFAULT/EHWPOISON with exit_reason 39 -> ``KVM_EXIT_MEMORY_FAULT``.
    Anything else raises ``KvmError("KVM_RUN", errno)``.
    """

    def __init__(self, fd: int, mmap_size: int = 0, *, vcpu_id: int = 0):
        super().__init__(fd)
        self.vcpu_id = vcpu_id
        self.kvm_run: uapi.kvm_run | None = None
        if mmap_size:
            try:
                addr = map_shared(fd, mmap_size, "mmap(kvm_run)")
            except BaseException:
                self.close()
                raise
            self._attach_mapping(addr, mmap_size)
            self.kvm_run = uapi.kvm_run.from_address(addr)

    def close(self) -> None:
        self.kvm_run = None
        super().close()

    def run(self) -> int:
        if _ioctl(self.fd, _KVM_RUN, 0) == 0:
            return self.kvm_run.exit_reason
        err = get_errno()
        if err == errno.EINTR:
            return _EXIT_INTR
        if err in _FAULT_ERRNOS and self.kvm_run is not None \
                and self.kvm_run.exit_reason == _EXIT_MEMORY_FAULT:
            return _EXIT_MEMORY_FAULT
        raise KvmError("KVM_RUN", err)

    def get_regs(self) -> uapi.kvm_regs:
        regs = uapi.kvm_regs()
        ioctl(self.fd, "KVM_GET_REGS", ioctls.KVM_GET_REGS, ctypes.addressof(regs))
        return regs

    def set_regs(self, regs: uapi.kvm_regs) -> None:
        ioctl(self.fd, "KVM_SET_REGS", ioctls.KVM_SET_REGS, ctypes.addressof(regs))

    def get_sregs(self) -> uapi.kvm_sregs:
        sregs = uapi.kvm_sregs()
        ioctl(self.fd, "KVM_GET_SREGS", ioctls.KVM_GET_SREGS, ctypes.addressof(sregs))
        return sregs

    def set_sregs(self, sregs: uapi.kvm_sregs) -> None:
        ioctl(self.fd, "KVM_SET_SREGS", ioctls.KVM_SET_SREGS, ctypes.addressof(sregs))

    def set_cpuid2(self, entries) -> None:
        """KVM_SET_CPUID2 (api.rst 4.73): the CPUID the guest sees (e.g. the supported set)."""
        entries = list(entries)
        buffer = uapi.cpuid2_with(len(entries))(nent=len(entries))
        for i, entry in enumerate(entries):
            buffer.entries[i] = entry
        ioctl(self.fd, "KVM_SET_CPUID2", ioctls.KVM_SET_CPUID2, ctypes.addressof(buffer))

    def set_guest_debug(self, control: int) -> None:
        """KVM_SET_GUEST_DEBUG (api.rst 4.59); ENABLE | SINGLESTEP exits after each instruction."""
        arg = uapi.kvm_guest_debug(control=control)
        ioctl(self.fd, "KVM_SET_GUEST_DEBUG", ioctls.KVM_SET_GUEST_DEBUG, ctypes.addressof(arg))

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        arg = uapi.kvm_enable_cap(cap=cap, flags=flags)
        for i, value in enumerate(args):
            arg.args[i] = value
        ioctl(self.fd, "KVM_ENABLE_CAP", ioctls.KVM_ENABLE_CAP, ctypes.addressof(arg))

    def registers(self) -> dict:
        """General registers as a dict (for GuestError); empty if they cannot be read."""
        try:
            regs = self.get_regs()
        except KvmError:
            return {}
        return {name: getattr(regs, name) for name, _ in uapi.kvm_regs._fields_}

    def io_data(self) -> memoryview:
        """The bytes of the current KVM_EXIT_IO exit (size x count at io.data_offset)."""
        run = self.kvm_run
        if run is None:
            raise InvalidState("vCPU has no kvm_run mapping")
        io = run.io
        return memoryview((ctypes.c_char * (io.size * io.count)).from_address(
            ctypes.addressof(run) + io.data_offset)).cast("B")
