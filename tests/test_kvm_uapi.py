"""Pin every uAPI struct size, field offset and ioctl number against the reference table
(include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h), plus the constants."""

import ctypes

import pytest

from privmem.kvm import ioctls, uapi

SIZES = {
    uapi.kvm_userspace_memory_region: 32,
    uapi.kvm_userspace_memory_region2: 160,
    uapi.kvm_create_guest_memfd: 64,
    uapi.kvm_memory_attributes: 32,
    uapi.kvm_enable_cap: 104,
    uapi.kvm_regs: 144,
    uapi.kvm_segment: 24,
    uapi.kvm_dtable: 16,
    uapi.kvm_sregs: 312,
    uapi.kvm_run_exit: 256,
    uapi.kvm_run: 2352,
    uapi.kvm_cpuid_entry2: 40,
    uapi.kvm_cpuid2: 8,
    uapi.kvm_guest_debug: 72,
    uapi.kvm_memory_attributes2: 128,
}

OFFSETS = {
    uapi.kvm_userspace_memory_region: dict(slot=0, flags=4, guest_phys_addr=8, memory_size=16, userspace_addr=24),
    uapi.kvm_userspace_memory_region2: dict(slot=0, flags=4, guest_phys_addr=8, memory_size=16,
                                            userspace_addr=24, guest_memfd_offset=32, guest_memfd=40,
                                            pad1=44, pad2=48),
    uapi.kvm_create_guest_memfd: dict(size=0, flags=8, reserved=16),
    uapi.kvm_cpuid_entry2: dict(function=0, index=4, flags=8, eax=12, ebx=16, ecx=20, edx=24, padding=28),
    uapi.kvm_cpuid2: dict(nent=0, padding=4),
    uapi.kvm_guest_debug: dict(control=0, pad=4, debugreg=8),
    uapi.kvm_memory_attributes2: dict(offset=0, size=8, attributes=16, flags=24, error_offset=32, reserved=40),
    uapi.kvm_memory_attributes: dict(address=0, size=8, attributes=16, flags=24),
    uapi.kvm_enable_cap: dict(cap=0, flags=4, args=8, pad=40),
    uapi.kvm_regs: dict(rax=0, rbx=8, rcx=16, rdx=24, rsi=32, rdi=40, rsp=48, rbp=56, r8=64, r15=120,
                        rip=128, rflags=136),
    uapi.kvm_segment: dict(base=0, limit=8, selector=12, type=14, present=15, dpl=16, db=17, s=18, l=19,
                           g=20, avl=21, unusable=22, padding=23),
    uapi.kvm_dtable: dict(base=0, limit=8, padding=10),
    uapi.kvm_sregs: dict(cs=0, ds=24, es=48, fs=72, gs=96, ss=120, tr=144, ldt=168, gdt=192, idt=208,
                         cr0=224, cr2=232, cr3=240, cr4=248, cr8=256, efer=264, apic_base=272,
                         interrupt_bitmap=280),
    uapi.kvm_run: dict(request_interrupt_window=0, immediate_exit=1, padding1=2, exit_reason=8,
                       ready_for_interrupt_injection=12, if_flag=13, flags=14, cr8=16, apic_base=24,
                       exit=32, kvm_valid_regs=288, kvm_dirty_regs=296, s=304),
}

# exit payloads: absolute offsets inside kvm_run (union at 32)
RUN_PAYLOAD = {
    ("io", "direction"): 32, ("io", "size"): 33, ("io", "port"): 34, ("io", "count"): 36,
    ("io", "data_offset"): 40,
    ("mmio", "phys_addr"): 32, ("mmio", "data"): 40, ("mmio", "len"): 48, ("mmio", "is_write"): 52,
    ("hypercall", "nr"): 32, ("hypercall", "args"): 40, ("hypercall", "ret"): 88, ("hypercall", "flags"): 96,
    ("memory_fault", "flags"): 32, ("memory_fault", "gpa"): 40, ("memory_fault", "size"): 48,
}

IOCTLS = {
    "KVM_GET_API_VERSION": 0xAE00, "KVM_CREATE_VM": 0xAE01, "KVM_CHECK_EXTENSION": 0xAE03,
    "KVM_GET_VCPU_MMAP_SIZE": 0xAE04, "KVM_CREATE_VCPU": 0xAE41, "KVM_RUN": 0xAE80,
    "KVM_SET_USER_MEMORY_REGION": 0x4020AE46, "KVM_SET_USER_MEMORY_REGION2": 0x40A0AE49,
    "KVM_ENABLE_CAP": 0x4068AEA3, "KVM_SET_MEMORY_ATTRIBUTES": 0x4020AED2,
    "KVM_CREATE_GUEST_MEMFD": 0xC040AED4,
    # x86 register ioctls (well-known values of arch/x86 kvm.h)
    "KVM_GET_REGS": 0x8090AE81, "KVM_SET_REGS": 0x4090AE82,
    "KVM_GET_SREGS": 0x8138AE83, "KVM_SET_SREGS": 0x4138AE84, "KVM_SET_TSS_ADDR": 0xAE47,
    "KVM_GET_SUPPORTED_CPUID": 0xC008AE05, "KVM_SET_CPUID2": 0x4008AE90, "KVM_SET_GUEST_DEBUG": 0x4048AE9B,
    "KVM_SET_MEMORY_ATTRIBUTES2": 0xC080AED2,           # the in-place series, v7 (provisional)
}


@pytest.mark.parametrize("struct,size", SIZES.items(), ids=lambda v: getattr(v, "__name__", str(v)))
def test_struct_size(struct, size):
    assert ctypes.sizeof(struct) == size


@pytest.mark.parametrize("struct", OFFSETS, ids=lambda s: s.__name__)
def test_field_offsets(struct):
    actual = {name: getattr(struct, name).offset for name in OFFSETS[struct]}
    assert actual == OFFSETS[struct]


def test_every_field_is_pinned():
    for struct, pinned in OFFSETS.items():
        names = {f[0] for f in struct._fields_}
        missing = names - set(pinned)
        if struct is uapi.kvm_regs:
            missing -= {"r9", "r10", "r11", "r12", "r13", "r14"}
            assert [getattr(uapi.kvm_regs, f"r{i}").offset for i in range(8, 16)] == list(range(64, 128, 8))
        assert not missing, (struct.__name__, missing)


@pytest.mark.parametrize("member,field", RUN_PAYLOAD, ids=lambda v: str(v))
def test_kvm_run_payload_offsets(member, field):
    run = uapi.kvm_run()            # through the anonymous union, on a live instance
    payload = getattr(run, member)
    offset = ctypes.addressof(payload) - ctypes.addressof(run) + getattr(type(payload), field).offset
    assert offset == RUN_PAYLOAD[(member, field)]


def test_payload_sizes():
    assert ctypes.sizeof(uapi.kvm_run_io) == 16
    assert ctypes.sizeof(uapi.kvm_run_hypercall) == 72
    assert ctypes.sizeof(uapi.kvm_run_memory_fault) == 24


@pytest.mark.parametrize("name,value", IOCTLS.items())
def test_ioctl_numbers(name, value):
    assert getattr(ioctls, name) == value
    assert ioctls.NAMES[value] == name


def test_constants():
    assert (uapi.KVM_EXIT_IO, uapi.KVM_EXIT_HYPERCALL, uapi.KVM_EXIT_HLT, uapi.KVM_EXIT_MMIO,
            uapi.KVM_EXIT_SHUTDOWN, uapi.KVM_EXIT_FAIL_ENTRY, uapi.KVM_EXIT_INTERNAL_ERROR,
            uapi.KVM_EXIT_MEMORY_FAULT) == (2, 3, 5, 6, 8, 9, 17, 39)
    assert (uapi.KVM_CAP_NR_MEMSLOTS, uapi.KVM_CAP_EXIT_HYPERCALL, uapi.KVM_CAP_USER_MEMORY2,
            uapi.KVM_CAP_MEMORY_FAULT_INFO, uapi.KVM_CAP_MEMORY_ATTRIBUTES, uapi.KVM_CAP_GUEST_MEMFD,
            uapi.KVM_CAP_VM_TYPES, uapi.KVM_CAP_PRE_FAULT_MEMORY, uapi.KVM_CAP_GUEST_MEMFD_FLAGS) \
        == (10, 201, 231, 232, 233, 234, 235, 236, 244)
    assert (uapi.KVM_X86_DEFAULT_VM, uapi.KVM_X86_SW_PROTECTED_VM, uapi.KVM_X86_SEV_VM,
            uapi.KVM_X86_SEV_ES_VM, uapi.KVM_X86_SNP_VM, uapi.KVM_X86_TDX_VM) == (0, 1, 2, 3, 4, 5)
    assert (uapi.KVM_MEM_LOG_DIRTY_PAGES, uapi.KVM_MEM_READONLY, uapi.KVM_MEM_GUEST_MEMFD) == (1, 2, 4)
    assert uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE == uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE == 8
    assert (uapi.GUEST_MEMFD_FLAG_MMAP, uapi.GUEST_MEMFD_FLAG_INIT_SHARED) == (1, 2)
    assert uapi.KVM_HC_MAP_GPA_RANGE == 12
    assert (uapi.KVM_MAP_GPA_RANGE_ENCRYPTED, uapi.KVM_MAP_GPA_RANGE_PAGE_SZ_2M) == (0x10, 1)
    assert (uapi.KVM_EPERM, uapi.KVM_EINVAL, uapi.KVM_ENOSYS) == (1, 22, 1000)


def test_the_private_attribute_is_defined_once_and_is_the_kernels():
    from privmem.attrs import ATTR_PRIVATE
    from privmem.vmm import machine, memslots

    assert ATTR_PRIVATE == uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE == 1 << 3
    assert not hasattr(machine, "ATTR_PRIVATE") or machine.ATTR_PRIVATE is ATTR_PRIVATE
    assert not hasattr(memslots, "ATTR_PRIVATE") or memslots.ATTR_PRIVATE is ATTR_PRIVATE
