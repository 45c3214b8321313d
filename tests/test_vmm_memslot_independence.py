"""Attributes belong to pages, not memslots (the seed's point, on real KVM).

Deleting and re-creating memslots, toggling dirty logging on the shared slot, and
allocating private memory before it is bound all leave the conversion tracking exactly
as it was: nothing is replayed, nothing is lost.
"""

import pytest

from privmem import ATTR_PRIVATE, PAGE_SIZE, ConversionEngine, ConversionTracker, MemoryAttributes, make_policy
from privmem.backing import PrivateBacking, SharedBacking
from privmem.kvm import Kvm, uapi
from privmem.kvm.slotmap import SlotMapping
from privmem.vmm import Machine
from privmem import ops

pytestmark = pytest.mark.kvm
MEMORY = 16 << 20


def tracking(machine):
    return list(machine.engine.store.ranges()), machine.engine.held.runs(), machine.engine.stats.as_dict()


def test_memslot_updates_leave_tracking_and_data_untouched():
    with Machine(MEMORY, policy="never", data_check="full") as machine:
        base = 0
        shared_page, private_page = base, base + 8 * PAGE_SIZE
        machine.run_ops([ops.convert(shared_page, PAGE_SIZE, "shared"),
                         ops.write(shared_page, PAGE_SIZE, "shared", 0x5A),
                         ops.write(private_page, PAGE_SIZE, "private", 0xA5)])
        before = tracking(machine)
        vm = machine._vm  # the VM fd's wrapper: memslot surgery a VMM does for migration or hotplug
        shared_slot, private_slot = machine.shared_slot(0), machine.private_slot(0)
        vm.set_user_memory_region2(shared_slot, uapi.KVM_MEM_LOG_DIRTY_PAGES, machine.shared_bit, machine.memory,
                                   machine.shared.hva)
        vm.set_user_memory_region2(shared_slot, 0, machine.shared_bit, machine.memory, machine.shared.hva)
        vm.set_user_memory_region2(shared_slot, 0, machine.shared_bit, 0, 0)              # delete
        vm.set_user_memory_region2(shared_slot, 0, machine.shared_bit, machine.memory, machine.shared.hva)
        vm.set_user_memory_region2(private_slot, uapi.KVM_MEM_GUEST_MEMFD, 0, 0, 0, machine.private.fd, 0)
        vm.set_user_memory_region2(private_slot, uapi.KVM_MEM_GUEST_MEMFD, 0, machine.memory,
                                   machine._slot_map.addr, machine.private.fd, 0)
        assert tracking(machine) == before
        result = machine.run_ops([ops.verify(shared_page, PAGE_SIZE, "shared", 0x5A),
                                  ops.verify(private_page, PAGE_SIZE, "private", 0xA5),
                                  ops.dma_out(shared_page, PAGE_SIZE, 0x5A)])
        assert result.data_errors == 0 and result.dma_errors == 0
        assert machine.store.get(private_page) == ATTR_PRIVATE and machine.store.get(shared_page) == 0


def test_private_memory_allocated_before_binding_is_accounted_without_replay():
    with Kvm() as kvm, kvm.create_vm() as vm:
        flags = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
        with PrivateBacking.from_guest_memfd(vm.create_guest_memfd(MEMORY, flags), MEMORY) as private, \
                SharedBacking.create(MEMORY) as shared:
            engine = ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy("lazy", MEMORY),
                                      shared, private)
            engine.preallocate(0, 64 * PAGE_SIZE)              # before any memslot exists
            assert engine.measure()["private_bytes"] == 64 * PAGE_SIZE
            assert list(engine.store.ranges()) == []           # allocation is not conversion state
            with SlotMapping(private.fd, MEMORY) as slot_map:
                vm.set_user_memory_region2(0, uapi.KVM_MEM_GUEST_MEMFD, 0, MEMORY, slot_map.addr, private.fd, 0)
                assert engine.measure()["private_bytes"] == 64 * PAGE_SIZE    # binding replays nothing
                engine.convert(0, 64 * PAGE_SIZE, True)
                assert engine.measure()["private_bytes"] == 64 * PAGE_SIZE
                vm.set_user_memory_region2(0, uapi.KVM_MEM_GUEST_MEMFD, 0, 0, 0, private.fd, 0)
            assert engine.store.has(0, 64 * PAGE_SIZE, ATTR_PRIVATE)            # survives the unbinding
