"""KVM userspace ABI: ctypes mirrors of the structs in include/uapi/linux/kvm.h and
arch/x86/include/uapi/asm/kvm.h, plus the constants privmem uses.

x86-64 only.  Every struct is little-endian and naturally aligned without implicit
padding; ``tests/test_kvm_uapi.py`` pins each size and field offset against the
reference table, so a typo here fails the test suite rather than the kernel.
"""

from __future__ import annotations

import ctypes

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

KVMIO = 0xAE
KVM_API_VERSION = 12


def _named(table: dict[int, str], value: int, name: str) -> int:
    """Define a constant and its name in one place: the name tables cannot drift."""
    table[value] = name
    return value


# VM types (KVM_CREATE_VM argument; bit n of KVM_CAP_VM_TYPES)
VM_TYPE_NAMES: dict[int, str] = {}

KVM_X86_DEFAULT_VM = _named(VM_TYPE_NAMES, 0, "default")
KVM_X86_SW_PROTECTED_VM = _named(VM_TYPE_NAMES, 1, "sw_protected")
KVM_X86_SEV_VM = _named(VM_TYPE_NAMES, 2, "sev")
KVM_X86_SEV_ES_VM = _named(VM_TYPE_NAMES, 3, "sev_es")
KVM_X86_SNP_VM = _named(VM_TYPE_NAMES, 4, "snp")
KVM_X86_TDX_VM = _named(VM_TYPE_NAMES, 5, "tdx")

# Capabilities (KVM_CHECK_EXTENSION argument)
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_EXIT_HYPERCALL = 201
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_FAULT_INFO = 232
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_VM_TYPES = 235
KVM_CAP_PRE_FAULT_MEMORY = 236
KVM_CAP_GUEST_MEMFD_FLAGS = 244
KVM_CAP_NR_VCPUS = 9            # recommended maximum vCPUs
KVM_CAP_MAX_VCPUS = 66          # hard maximum vCPUs
KVM_CAP_SET_GUEST_DEBUG = 23

# Exit reasons (kvm_run.exit_reason)
EXIT_REASON_NAMES: dict[int, str] = {}

KVM_EXIT_UNKNOWN = _named(EXIT_REASON_NAMES, 0, "unknown")
KVM_EXIT_EXCEPTION = _named(EXIT_REASON_NAMES, 1, "exception")
KVM_EXIT_IO = _named(EXIT_REASON_NAMES, 2, "io")
KVM_EXIT_HYPERCALL = _named(EXIT_REASON_NAMES, 3, "hypercall")
KVM_EXIT_DEBUG = _named(EXIT_REASON_NAMES, 4, "debug")
KVM_EXIT_HLT = _named(EXIT_REASON_NAMES, 5, "hlt")
KVM_EXIT_MMIO = _named(EXIT_REASON_NAMES, 6, "mmio")
KVM_EXIT_IRQ_WINDOW_OPEN = _named(EXIT_REASON_NAMES, 7, "irq_window_open")
KVM_EXIT_SHUTDOWN = _named(EXIT_REASON_NAMES, 8, "shutdown")
KVM_EXIT_FAIL_ENTRY = _named(EXIT_REASON_NAMES, 9, "fail_entry")
KVM_EXIT_INTR = _named(EXIT_REASON_NAMES, 10, "intr")
KVM_EXIT_INTERNAL_ERROR = _named(EXIT_REASON_NAMES, 17, "internal_error")
KVM_EXIT_SYSTEM_EVENT = _named(EXIT_REASON_NAMES, 24, "system_event")
KVM_EXIT_MEMORY_FAULT = _named(EXIT_REASON_NAMES, 39, "memory_fault")

KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1

# Memslot flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2

# Memory attributes and memory-fault flags
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3

# guest_memfd flags (KVM_CREATE_GUEST_MEMFD; bits of KVM_CAP_GUEST_MEMFD_FLAGS)
GUEST_MEMFD_FLAG_MMAP = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1
GUEST_MEMFD_FLAG_NAMES = {GUEST_MEMFD_FLAG_MMAP: "mmap", GUEST_MEMFD_FLAG_INIT_SHARED: "init_shared"}

# Hypercalls (include/uapi/linux/kvm_para.h, arch/x86/include/uapi/asm/kvm_para.h)
KVM_HC_MAP_GPA_RANGE = 12
KVM_EXIT_HYPERCALL_LONG_MODE = 1 << 0
KVM_MAP_GPA_RANGE_PAGE_SZ_4K = 0
KVM_MAP_GPA_RANGE_PAGE_SZ_2M = 1
KVM_MAP_GPA_RANGE_PAGE_SZ_1G = 2
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
KVM_MAP_GPA_RANGE_DECRYPTED = 0
KVM_EPERM = 1
KVM_EINVAL = 22
KVM_ENOSYS = 1000

# Control register / EFLAGS / EFER bits used to set up a guest without firmware
X86_CR0_PE = 1 << 0
X86_CR0_ET = 1 << 4
X86_CR0_NE = 1 << 5
X86_CR0_PG = 1 << 31
X86_CR4_PAE = 1 << 5
X86_EFER_LME = 1 << 8
X86_EFER_LMA = 1 << 10
X86_RFLAGS_RESERVED = 1 << 1

# CPUID leaves and bits the machine reads (AMD APM vol. 3, Intel SDM vol. 2A "CPUID")
CPUID_EXT_FEATURES = 0x8000_0001       # edx bit 26: 1 GiB pages (pdpe1gb), bit 29: long mode
CPUID_ADDRESS_SIZES = 0x8000_0008      # eax 7:0 physical address bits, 23:16 guest physical (AMD)
CPUID_EDX_PDPE1GB = 1 << 26
CPUID_EDX_LM = 1 << 29
KVM_CPUID_ENTRIES_MAX = 256            # what KVM_GET_SUPPORTED_CPUID is asked for (E2BIG if short)

# KVM_SET_GUEST_DEBUG control bits
KVM_GUESTDBG_ENABLE = 1 << 0
KVM_GUESTDBG_SINGLESTEP = 1 << 1


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64)]


class kvm_userspace_memory_region2(ctypes.Structure):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64),
                ("guest_memfd_offset", u64), ("guest_memfd", u32), ("pad1", u32),
                ("pad2", u64 * 14)]


class kvm_create_guest_memfd(ctypes.Structure):
    _fields_ = [("size", u64), ("flags", u64), ("reserved", u64 * 6)]


class kvm_memory_attributes(ctypes.Structure):
    _fields_ = [("address", u64), ("size", u64), ("attributes", u64), ("flags", u64)]


class kvm_memory_attributes2(ctypes.Structure):
    """The in-place conversion series' argument (v7/v8, NOT MERGED: numbers provisional),
    issued on a guest_memfd fd: a file ``offset`` instead of a GPA, ``error_offset`` out."""
    _fields_ = [("offset", u64), ("size", u64), ("attributes", u64), ("flags", u64),
                ("error_offset", u64), ("reserved", u64 * 11)]


class kvm_enable_cap(ctypes.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
                ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(ctypes.Structure):
    """The fixed head of ``struct kvm_cpuid2``; the ioctl number is computed from it (the
    entries array is a flexible member).  ``cpuid2_with(n)`` makes a buffer for n entries."""
    _fields_ = [("nent", u32), ("padding", u32)]


def cpuid2_with(entries: int) -> type:
    """A ctypes type: ``struct kvm_cpuid2`` followed by ``entries`` entries."""
    return type(f"kvm_cpuid2_{entries}", (ctypes.Structure,), {
        "_fields_": [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * entries)]})


class kvm_guest_debug(ctypes.Structure):
    _fields_ = [("control", u32), ("pad", u32), ("debugreg", u64 * 8)]


class kvm_regs(ctypes.Structure):
    _fields_ = [(name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
                ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8),
                ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
                ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64),
                ("efer", u64), ("apic_base", u64),
                ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64))]


# ---- struct kvm_run and its exit payloads (union at offset 32, 256 bytes) ----

class kvm_run_io(ctypes.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class kvm_run_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_hypercall(ctypes.Structure):
    # the kernel's union { __u32 longmode; __u64 flags; } is exposed as ``flags``
    _fields_ = [("nr", u64), ("args", u64 * 6), ("ret", u64), ("flags", u64)]


class kvm_run_memory_fault(ctypes.Structure):
    _fields_ = [("flags", u64), ("gpa", u64), ("size", u64)]


class kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_exit(ctypes.Union):
    _fields_ = [("io", kvm_run_io), ("mmio", kvm_run_mmio), ("hypercall", kvm_run_hypercall),
                ("memory_fault", kvm_run_memory_fault), ("fail_entry", kvm_run_fail_entry),
                ("internal", kvm_run_internal), ("padding", u8 * 256)]


class kvm_run(ctypes.Structure):
    _anonymous_ = ("exit",)
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64),
                ("exit", kvm_run_exit),
                ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64), ("s", u8 * 2048)]
