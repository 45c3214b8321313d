"""What this host's KVM offers, for ``privmem info`` and for feature checks.

``probe()`` never raises for a missing or unusable /dev/kvm: it reports ``kvm: False``.
``hypercall_exit_works`` is measured, not assumed: a tiny real-mode guest issues
KVM_HC_MAP_GPA_RANGE with VMCALL after KVM_CAP_EXIT_HYPERCALL is enabled; if no exit arrives
within the timeout the vCPU thread is kicked out of KVM_RUN and the answer is False.
"""

from __future__ import annotations

import ctypes
import threading
from typing import NamedTuple

from ..errors import InvalidState, KvmError
from . import uapi
from ._sys import _mmap, _munmap, MAP_FAILED, PROT_READ, PROT_WRITE
from .kick import ensure_kick_handler, kick
from .system import DEV_KVM, Kvm

_MAP_PRIVATE_ANON = 0x02 | 0x20

KEYS = ("kvm", "api_version", "vm_types", "memory_attributes", "guest_memfd", "guest_memfd_flags",
        "user_memory2", "memory_fault_info", "exit_hypercall", "hypercall_exit_works", "max_memslots",
        "max_vcpus", "gpa_width", "shared_bit", "huge_pages_1g", "long_mode", "memory_attributes2")


class CpuFeatures(NamedTuple):
    """What KVM_GET_SUPPORTED_CPUID offers a guest, as the machine needs it."""

    entries: list              # the supported entries, for KVM_SET_CPUID2
    gpa_width: int             # guest physical address bits
    huge_pages_1g: bool        # 1 GiB pages (pdpe1gb)
    long_mode: bool

    @property
    def shared_bit(self) -> int:
        """The TDX-style shared bit: the highest guest-physical bit."""
        return 1 << (self.gpa_width - 1)


def cpu_features(kvm: Kvm) -> CpuFeatures:
    """Read the guest physical width, 1 GiB pages and long mode from the supported CPUID.
    The width is CPUID 0x80000008 EAX bits 23:16 (AMD's guest physical address size) where
    set, else bits 7:0 (MAXPHYADDR)."""
    entries = kvm.get_supported_cpuid()
    by_leaf = {(e.function, e.index): e for e in entries}
    ext = by_leaf.get((uapi.CPUID_EXT_FEATURES, 0))
    sizes = by_leaf.get((uapi.CPUID_ADDRESS_SIZES, 0))
    width = 36                                    # the architectural default without the leaf
    if sizes is not None:
        width = (sizes.eax >> 16) & 0xFF or sizes.eax & 0xFF
    return CpuFeatures(entries, width, bool(ext and ext.edx & uapi.CPUID_EDX_PDPE1GB),
                       bool(ext and ext.edx & uapi.CPUID_EDX_LM))


def _set_bits(mask: int) -> list[int]:
    """Positions of the bits set in ``mask``, ascending."""
    return [bit for bit in range(mask.bit_length()) if mask >> bit & 1]


def machine_unsupported_reason(path: str = DEV_KVM) -> str | None:
    """None if this KVM has what privmem's machine needs, else what is missing and which
    kernel brings it: KVM_SET_USER_MEMORY_REGION2 and guest_memfd (Linux 6.8), and
    guest_memfd's MMAP and INIT_SHARED flags (Linux 6.18)."""
    try:
        kvm = Kvm(path)
    except KvmError as error:
        return str(error)
    with kvm:
        cap = kvm.check_extension
        try:
            if not cap(uapi.KVM_CAP_USER_MEMORY2) or not cap(uapi.KVM_CAP_GUEST_MEMFD):
                return "this KVM has no guest_memfd or KVM_SET_USER_MEMORY_REGION2 (Linux 6.8 or later)"
            needed = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
            if cap(uapi.KVM_CAP_GUEST_MEMFD_FLAGS) & needed != needed:
                return "this KVM's guest_memfd has no MMAP | INIT_SHARED flags (Linux 6.18 or later)"
        except KvmError as error:
            return f"{path} is not a KVM device ({error})"
    return None


def probe(path: str = DEV_KVM, *, measure: bool = True, timeout: float = 0.2) -> dict:
    """Capabilities of the host's KVM as a dict with the keys in ``KEYS``."""
    info = dict.fromkeys(KEYS)
    info.update(kvm=False, vm_types=[], guest_memfd_flags=[])
    try:
        kvm = Kvm(path)
    except KvmError:
        return info
    with kvm:
        try:
            info["api_version"] = kvm.get_api_version()
            cap = kvm.check_extension
            types = cap(uapi.KVM_CAP_VM_TYPES) or 1 << uapi.KVM_X86_DEFAULT_VM
            info["vm_types"] = [uapi.VM_TYPE_NAMES.get(bit, f"type{bit}") for bit in _set_bits(types)]
            info["memory_attributes"] = cap(uapi.KVM_CAP_MEMORY_ATTRIBUTES)
            info["guest_memfd"] = bool(cap(uapi.KVM_CAP_GUEST_MEMFD))
            info["guest_memfd_flags"] = [uapi.GUEST_MEMFD_FLAG_NAMES.get(1 << bit, f"bit{bit}")
                                         for bit in _set_bits(cap(uapi.KVM_CAP_GUEST_MEMFD_FLAGS))]
            info["user_memory2"] = bool(cap(uapi.KVM_CAP_USER_MEMORY2))
            info["memory_fault_info"] = bool(cap(uapi.KVM_CAP_MEMORY_FAULT_INFO))
            info["exit_hypercall"] = cap(uapi.KVM_CAP_EXIT_HYPERCALL)
            info["max_memslots"] = cap(uapi.KVM_CAP_NR_MEMSLOTS)
            info["max_vcpus"] = cap(uapi.KVM_CAP_MAX_VCPUS)
            features = cpu_features(kvm)
            info.update(gpa_width=features.gpa_width, shared_bit=features.shared_bit,
                        huge_pages_1g=features.huge_pages_1g, long_mode=features.long_mode)
            info["memory_attributes2"] = _probe_in_place(kvm)
        except KvmError:
            return info
        info["kvm"] = True
        if measure and info["exit_hypercall"] & (1 << uapi.KVM_HC_MAP_GPA_RANGE):
            try:
                info["hypercall_exit_works"] = hypercall_exit_works(kvm, timeout)
            except (KvmError, InvalidState):
                info["hypercall_exit_works"] = None
        elif measure:
            info["hypercall_exit_works"] = False
    return info


def _probe_in_place(kvm: Kvm) -> dict:
    """Whether guest_memfd takes KVM_SET_MEMORY_ATTRIBUTES2 (in-place conversion), asked of a
    one-page guest_memfd of a fresh VM."""
    import os

    from .gmem import probe_memory_attributes2

    with kvm.create_vm() as vm:
        fd = vm.create_guest_memfd(4096, 0)
        try:
            offered, why = probe_memory_attributes2(fd)
        finally:
            os.close(fd)
    return {"offered": offered, "why": why}


# real mode at 0x0: vmcall; hlt
_VMCALL_GUEST = bytes([0x0F, 0x01, 0xC1, 0xF4])


def hypercall_exit_works(kvm: Kvm, timeout: float = 0.2) -> bool:
    """Run VMCALL(MAP_GPA_RANGE) in a 1-page real-mode guest; True iff KVM_EXIT_HYPERCALL arrives."""
    ensure_kick_handler()
    size = 4096
    addr = _mmap(None, size, PROT_READ | PROT_WRITE, _MAP_PRIVATE_ANON, -1, 0)
    if addr is None or addr == MAP_FAILED:
        raise KvmError("mmap(probe guest)", ctypes.get_errno())
    try:
        ctypes.memmove(addr, _VMCALL_GUEST, len(_VMCALL_GUEST))
        with kvm.create_vm() as vm:
            vm.enable_cap(uapi.KVM_CAP_EXIT_HYPERCALL, 1 << uapi.KVM_HC_MAP_GPA_RANGE)
            vm.set_user_memory_region(0, 0, 0, size, addr)
            with vm.create_vcpu(0) as vcpu:
                sregs = vcpu.get_sregs()
                sregs.cs.base, sregs.cs.selector = 0, 0
                vcpu.set_sregs(sregs)
                regs = uapi.kvm_regs(rax=uapi.KVM_HC_MAP_GPA_RANGE, rbx=0, rcx=1,
                                     rdx=uapi.KVM_MAP_GPA_RANGE_ENCRYPTED, rip=0,
                                     rflags=uapi.X86_RFLAGS_RESERVED)
                vcpu.set_regs(regs)
                result: list = []
                lock = threading.Lock()
                running = [True]

                def body() -> None:
                    try:
                        result.append(vcpu.run())
                    except BaseException as exc:  # reported below
                        result.append(exc)
                    with lock:
                        running[0] = False

                thread = threading.Thread(target=body, name="privmem-probe-vcpu", daemon=True)
                thread.start()
                thread.join(timeout)
                while thread.is_alive():
                    vcpu.kvm_run.immediate_exit = 1
                    with lock:
                        if running[0]:
                            kick(thread.ident)
                    thread.join(0.05)
                exit_reason = result[0] if result else None
                if isinstance(exit_reason, BaseException):
                    raise exit_reason
                return (exit_reason == uapi.KVM_EXIT_HYPERCALL
                        and vcpu.kvm_run.hypercall.nr == uapi.KVM_HC_MAP_GPA_RANGE)
    finally:
        _munmap(addr, size)


def format_info(info: dict) -> str:
    """Human-readable summary of ``probe()``."""
    if not info.get("kvm"):
        return "KVM: not available (no usable /dev/kvm)"

    def yes(v):
        return "unknown" if v is None else ("yes" if v else "no")

    rows = [
        ("KVM API version", str(info["api_version"])),
        ("VM types", ", ".join(info["vm_types"]) or "-"),
        ("memory attributes", f"{info['memory_attributes']:#x}"
         + (" (PRIVATE)" if info["memory_attributes"] & uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE else " (none)")),
        ("guest_memfd", yes(info["guest_memfd"])),
        ("guest_memfd flags", ", ".join(info["guest_memfd_flags"]) or "-"),
        ("KVM_SET_USER_MEMORY_REGION2", yes(info["user_memory2"])),
        ("memory-fault exit info", yes(info["memory_fault_info"])),
        ("exit-hypercall mask", f"{info['exit_hypercall']:#x}"),
        ("hypercall exit works (measured)", yes(info["hypercall_exit_works"])),
        ("max memslots", str(info["max_memslots"])),
        ("max vCPUs", str(info["max_vcpus"])),
        ("guest physical address width", f"{info['gpa_width']} bits (shared bit {info['shared_bit']:#x})"
         if info["gpa_width"] else "unknown"),
        ("1 GiB pages for the guest", yes(info["huge_pages_1g"])),
        ("long mode for the guest", yes(info["long_mode"])),
        ("SET_MEMORY_ATTRIBUTES2 (in-place)",
         (yes(info["memory_attributes2"]["offered"]) + f" ({info['memory_attributes2']['why']})")
         if info.get("memory_attributes2") else "unknown"),
    ]
    width = max(len(k) for k, _ in rows) + 1
    return "\n".join(f"{k + ':':<{width}} {v}" for k, v in rows)
