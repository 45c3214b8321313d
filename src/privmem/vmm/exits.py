"""Exit handlers: what the VMM does for each KVM exit and doorbell port.

Each handler takes the vCPU index and returns True when that vCPU is done.  Everything the
guest wrote is untrusted: the PSC request is validated whole before anything converts
(psc.py), hypercall arguments and memory-fault addresses are checked against guest RAM, and
a malformed request is answered with an error status and counted, never with an exception,
so nothing the guest writes can crash the VMM.  Exits that mean the guest itself is broken
(shutdown, failed entry, internal error, an exit nobody handles) raise GuestError with the
vCPU's registers.
"""

from __future__ import annotations

import errno
import time

from ..errors import Busy, GuestError
from ..kvm import uapi
from ..memmap import GpaRange
from ..units import PAGE_SHIFT, PAGE_SIZE
from . import firmware, psc

MAX_FAULT_REPEATS = 1000
_MASK64 = (1 << 64) - 1
_EXIT_NAMES = uapi.EXIT_REASON_NAMES


class ExitHandlers:
    """The handler tables for ``machine`` (a Machine): ``ports`` and ``exits``."""

    def __init__(self, machine, device):
        self.machine, self.device = machine, device
        self.ports = {
            firmware.PORT_DONE: self.on_hlt, firmware.PORT_PSC: self.on_psc,
            firmware.PORT_DMA_IN: device.dma_in, firmware.PORT_DMA_OUT: device.dma_out,
            firmware.PORT_VERIFY_FAIL: device.verify_fail, firmware.PORT_REFILL: self.on_refill,
            firmware.PORT_DELAY: device.delay,
        }
        self.exits = {
            uapi.KVM_EXIT_IO: self.on_io, uapi.KVM_EXIT_HLT: self.on_hlt, uapi.KVM_EXIT_MMIO: self.on_mmio,
            uapi.KVM_EXIT_HYPERCALL: self.on_hypercall, uapi.KVM_EXIT_MEMORY_FAULT: self.on_memory_fault,
            uapi.KVM_EXIT_SHUTDOWN: self.on_shutdown, uapi.KVM_EXIT_FAIL_ENTRY: self.on_fail_entry,
            uapi.KVM_EXIT_INTERNAL_ERROR: self.on_internal_error, uapi.KVM_EXIT_INTR: self.on_intr,
        }
        self._converters = [self._converter(i) for i in range(machine.vcpus)]

    def _converter(self, index: int):
        """vCPU ``index``'s ``convert(gpa, size, to_private)`` for the PSC handler (the request
        was validated against guest RAM): the machine's one conversion path."""
        convert = self.machine.convert_for_guest

        def convert_for_vcpu(gpa: int, size: int, to_private: bool):
            return convert(index, GpaRange(gpa, size), to_private)
        return convert_for_vcpu

    def _regs(self, index: int) -> dict:
        return self.machine.vcpu(index).registers()

    def unhandled(self, index: int, reason: int) -> None:
        raise GuestError(f"vCPU {index}: unhandled exit {_EXIT_NAMES.get(reason, reason)} ({reason})",
                         self._regs(index))

    def on_io(self, index: int) -> bool:
        port = self.machine.vcpu(index).kvm_run.io.port
        return port != firmware.PORT_NOP and self.ports.get(port, self.on_unknown_io)(index)

    def on_unknown_io(self, index: int) -> bool:
        """No device on the port: OUT is ignored, IN reads all-ones (a floating bus)."""
        self.machine.stats[index].unhandled_io += 1
        vcpu = self.machine.vcpu(index)
        if vcpu.kvm_run.io.direction == uapi.KVM_EXIT_IO_IN:
            data = vcpu.io_data()
            data[:] = b"\xff" * len(data)
        return False

    def on_intr(self, index: int) -> bool:
        self.machine.runner.park_if_paused(index)
        return False

    def on_hlt(self, index: int) -> bool:
        self.machine.stats[index].done = True
        return True

    def on_refill(self, index: int) -> bool:
        self.machine.stats[index].refills += 1
        self.machine.rings[index].refill()
        return False

    def on_mmio(self, index: int) -> bool:
        """No MMIO devices: reads return all-ones, writes are dropped (counted)."""
        self.machine.stats[index].mmio += 1
        mmio = self.machine.vcpu(index).kvm_run.mmio
        if not mmio.is_write:
            for i in range(8):
                mmio.data[i] = 0xFF
        return False

    def on_shutdown(self, index: int) -> bool:
        raise GuestError(f"vCPU {index}: guest shut down (triple fault)", self._regs(index))

    def on_fail_entry(self, index: int) -> bool:
        fail = self.machine.vcpu(index).kvm_run.fail_entry
        raise GuestError(f"vCPU {index}: VM entry failed, hardware reason {fail.hardware_entry_failure_reason:#x}"
                         f" on cpu {fail.cpu}", self._regs(index))

    def on_internal_error(self, index: int) -> bool:
        internal = self.machine.vcpu(index).kvm_run.internal
        data = [hex(internal.data[i]) for i in range(min(internal.ndata, 16))]
        raise GuestError(f"vCPU {index}: KVM internal error, suberror {internal.suberror} data {data}",
                         self._regs(index))

    def on_hypercall(self, index: int) -> bool:
        """KVM_HC_MAP_GPA_RANGE(gpa, npages, attrs): convert, answer in hypercall.ret
        (0, -KVM_EINVAL for a range that is not RAM or a conversion refused, -EAGAIN when
        busy, -KVM_ENOSYS for other calls)."""
        machine = self.machine
        hypercall = machine.vcpu(index).kvm_run.hypercall
        if hypercall.nr != uapi.KVM_HC_MAP_GPA_RANGE:
            hypercall.ret = -uapi.KVM_ENOSYS & _MASK64
            return False
        gpa, npages, attrs = hypercall.args[0], hypercall.args[1], hypercall.args[2]
        size = npages << PAGE_SHIFT
        if gpa % PAGE_SIZE or npages == 0 or not machine.memory_map.contains(gpa, size):
            hypercall.ret = -uapi.KVM_EINVAL & _MASK64
            return False
        try:
            machine.convert_for_guest(index, GpaRange(gpa, size), bool(attrs & uapi.KVM_MAP_GPA_RANGE_ENCRYPTED))
        except Busy:
            hypercall.ret = -errno.EAGAIN & _MASK64
            return False
        except psc.REFUSED:
            hypercall.ret = -uapi.KVM_EINVAL & _MASK64
            return False
        hypercall.ret = 0
        return False

    def on_memory_fault(self, index: int) -> bool:
        """KVM_EXIT_MEMORY_FAULT: convert [gpa, gpa + size) to the access's type (flags
        PRIVATE -> private, else shared) as QEMU does, then re-enter.  An address in the
        shared alias is taken without the shared bit.  The same fault MAX_FAULT_REPEATS
        times in a row, or one outside guest RAM, is a GuestError."""
        machine = self.machine
        fault = machine.vcpu(index).kvm_run.memory_fault
        flags, gpa, size = fault.flags, fault.gpa, fault.size
        stats = machine.stats[index]
        key = (flags, gpa, size)
        if key == stats.last_fault:
            stats.fault_repeats += 1
            if stats.fault_repeats >= MAX_FAULT_REPEATS:
                raise GuestError(f"vCPU {index}: memory fault at {gpa:#x} (+{size:#x}, flags {flags:#x}) "
                                 f"repeated {stats.fault_repeats} times", self._regs(index))
        else:
            stats.last_fault, stats.fault_repeats = key, 0
        if gpa & machine.shared_bit:
            gpa &= ~machine.shared_bit
        if gpa % PAGE_SIZE or size == 0 or size % PAGE_SIZE or not machine.memory_map.contains(gpa, size):
            where = machine.memory_map.outside(gpa, max(size, PAGE_SIZE)).why if size else "size 0"
            raise GuestError(f"vCPU {index}: memory fault outside guest RAM: gpa {fault.gpa:#x} size {size:#x}: "
                             f"{where}", self._regs(index))
        try:
            machine.convert_for_guest(index, GpaRange(gpa, size), bool(flags & uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE))
        except Busy:
            pass            # re-enter: the guest faults again and we retry
        return False

    def on_psc(self, index: int, _clock=time.perf_counter_ns, _serve=psc.serve_in_place) -> bool:
        """The PSC doorbell: serve the request in vCPU ``index``'s comm page in place (the
        status word is always written).  Timed into ``psc_handler_ns``."""
        start = _clock()
        machine = self.machine
        stats = machine.stats[index]
        stats.psc_requests += 1
        status, error = _serve(machine.comm[index], machine.memory_map, self._converters[index])
        if status:
            if status == psc.STATUS_INVALID:
                stats.psc_errors += 1
                machine.record_failure(index, "psc", error=error)
            else:
                stats.psc_retries += 1
        stats.psc_ns += _clock() - start
        return False


__all__ = ["ExitHandlers", "MAX_FAULT_REPEATS"]
