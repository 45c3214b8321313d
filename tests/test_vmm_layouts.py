"""Guest layouts and sizes on real KVM: q35 and Cloud Hypervisor guests with data checked on
both sides of every region boundary, ops in holes refused with the address named, page 0 and
the last page of RAM owned by the trace, the selftest conversion scenario at the top and the
bottom of each region, and big guests launched, converted and closed with nothing left."""

import pytest

from privmem import InvalidArgument
from privmem.memmap import GuestMemoryMap
from privmem.ops import Op
from privmem.units import GiB, MiB, TiB
from privmem.vmm import Machine
from privmem.vmm.memslots import MemslotMachine

from .resources import resources

pytestmark = pytest.mark.kvm

PAGE = 4096
TIMEOUT = 60
LAYOUTS = [("flat", 64 * MiB), ("q35", 16 * GiB), ("q35", 2 * GiB), ("cloud-hypervisor", 8 * GiB)]


def around_boundaries(memory_map: GuestMemoryMap, vcpu: int = 0) -> list[Op]:
    """For each region's first and last page: to shared, write, device check, device write,
    guest check; back to private, write, check.  Adjacent pages get their own patterns, so
    data that lands on the wrong side of a boundary is seen."""
    ops = []
    for k, gpa in enumerate(memory_map.boundaries()):
        shared, private = 0x10 + k, 0x80 + k
        ops += [Op("convert", gpa, PAGE, vcpu, to="shared"),
                Op("write", gpa, PAGE, vcpu, view="shared", pattern=shared),
                Op("dma_out", gpa, PAGE, vcpu, pattern=shared),
                Op("dma_in", gpa, PAGE, vcpu, pattern=shared + 1),
                Op("verify", gpa, PAGE, vcpu, view="shared", pattern=shared + 1),
                Op("convert", gpa, PAGE, vcpu, to="private"),
                Op("write", gpa, PAGE, vcpu, view="private", pattern=private)]
    for k, gpa in enumerate(memory_map.boundaries()):
        ops.append(Op("verify", gpa, PAGE, vcpu, view="private", pattern=0x80 + k))
    return ops


@pytest.mark.parametrize("layout, ram", LAYOUTS, ids=[f"{n}-{r >> 20}M" for n, r in LAYOUTS])
@pytest.mark.parametrize("cls", [Machine, MemslotMachine], ids=["store", "memslots"])
def test_data_on_both_sides_of_every_region_boundary(cls, layout, ram):
    with cls(ram, 2, layout=layout, data_check="full") as m:
        assert m.memory_map.name == layout and m.memory == ram
        ops = around_boundaries(m.memory_map)
        result = m.run_ops(ops, timeout=TIMEOUT)
        assert result.data_errors == 0 and result.dma_errors == 0 and result.psc_errors == 0, result.failures
        assert result.conversions == 2 * len(m.memory_map.boundaries())
        for gpa in m.memory_map.boundaries():
            assert m.store.get(gpa) == 8
        if cls is MemslotMachine:
            m.check_layout()


def test_ops_in_holes_are_refused_with_the_address_and_regions_named():
    with Machine(16 * GiB, 1, layout="q35") as m:
        before = list(m.store.ranges())
        for gpa, size in ((3 * GiB, PAGE), (2 * GiB - PAGE, 2 * PAGE), (18 * GiB, PAGE)):
            with pytest.raises(InvalidArgument, match=rf"ops\[0\].gpa={gpa:#x}: .* is not all guest RAM"):
                m.run_ops([Op("convert", gpa, size, to="shared")], timeout=TIMEOUT)
        with pytest.raises(InvalidArgument, match=r"0x80000000 is in the hole between RAM regions "
                                                  r"\[0x0, 0x80000000\) and \[0x100000000, 0x480000000\)"):
            m.run_ops([Op("write", 2 * GiB - PAGE, 2 * PAGE, view="private", pattern=1)], timeout=TIMEOUT)
        assert list(m.store.ranges()) == before and m.conversions == 0


def test_page_zero_and_a_realistic_ovmf_address_flip_flop():
    """The trace format's own example (gpa 4096), page 0 and OVMF's 0x12c000: a guest owns
    every page of its RAM."""
    with Machine("64M", 1, policy="eager") as m:
        ops = []
        for gpa in (0, 4096, 0x12C000):
            for k in range(50):
                ops += [Op("convert", gpa, PAGE, to="shared"), Op("dma_in", gpa, PAGE, pattern=k + 1),
                        Op("verify", gpa, PAGE, view="shared", pattern=k + 1),
                        Op("convert", gpa, PAGE, to="private"), Op("write", gpa, PAGE, view="private", pattern=k + 2),
                        Op("verify", gpa, PAGE, view="private", pattern=k + 2)]
        result = m.run_ops(ops, timeout=TIMEOUT)
        assert result.data_errors == 0 and result.dma_errors == 0 and result.conversions == 300
        assert m.engine.stats.discards == 300                          # eager: every flip punched


def selftest_scenario(base: int, vcpu: int = 0) -> list[Op]:
    """private_mem_conversions_test's explicit-conversion steps on a window of 2 MiB + 4 KiB
    at ``base`` (reference 8.1), condensed: write through the shared view, the host checks;
    for each range R: convert to private, write and check privately, the host's read refused;
    back to shared, the guest writes, the host checks and writes, the guest sees it."""
    window = 2 * MiB + PAGE
    ops = [Op("convert", base, window, vcpu, to="shared"), Op("write", base, window, vcpu, view="shared", pattern=0xAA),
           Op("dma_out", base, window, vcpu, pattern=0xAA), Op("dma_in", base, window, vcpu, pattern=0xCC),
           Op("verify", base, window, vcpu, view="shared", pattern=0xCC)]
    for offset, size in ((0, PAGE), (0, 2 * MiB), (PAGE, PAGE), (PAGE, 2 * MiB), (2 * MiB, PAGE)):
        r = base + offset
        ops += [Op("convert", r, size, vcpu, to="private"), Op("write", r, size, vcpu, view="private", pattern=0x22),
                Op("verify", r, size, vcpu, view="private", pattern=0x22),
                Op("convert", r, size, vcpu, to="shared"), Op("write", r, size, vcpu, view="shared", pattern=0x33),
                Op("dma_out", r, size, vcpu, pattern=0x33), Op("dma_in", r, size, vcpu, pattern=0x44),
                Op("verify", r, size, vcpu, view="shared", pattern=0x44),
                Op("write", r, size, vcpu, view="shared", pattern=0xCC)]
    ops.append(Op("verify", base, window, vcpu, view="shared", pattern=0xCC))
    return ops


@pytest.mark.parametrize("layout, ram", [("q35", 16 * GiB), ("cloud-hypervisor", 8 * GiB)])
def test_selftest_scenario_at_the_bottom_and_top_of_each_region(layout, ram):
    memory_map = GuestMemoryMap.from_layout(layout, ram)
    windows = []
    for region in memory_map:
        windows += [region.gpa, region.end - 2 * MiB - PAGE]
    with Machine(vcpus=len(windows), memory_map=memory_map) as m:
        ops = [op for vcpu, base in enumerate(windows) for op in selftest_scenario(base, vcpu)]
        result = m.run_ops(ops, timeout=TIMEOUT)
        assert result.data_errors == 0 and result.dma_errors == 0 and result.psc_errors == 0, result.failures
        for base in windows:
            assert m.shared_matches(base, 2 * MiB + PAGE, 0xCC)      # what the guest's sampled write defines


@pytest.mark.parametrize("layout, ram", [("flat", 64 * GiB), ("q35", 1 * TiB)])
def test_big_guests_launch_convert_and_close_with_nothing_left(layout, ram):
    with Machine(vcpus=1, memory_map=GuestMemoryMap.flat(8 * MiB)) as m:     # warm up the process
        m.run_ops([Op("touch", 0, PAGE, view="private")], timeout=TIMEOUT)
    before = resources()
    with Machine(ram, 2, layout=layout, policy="eager") as m:
        last = m.memory_map.top - PAGE
        ops = [Op("convert", 0, PAGE, 0, to="shared"), Op("dma_in", 0, PAGE, 0, pattern=1),
               Op("verify", 0, PAGE, 0, view="shared", pattern=1),
               Op("convert", last, PAGE, 1, to="shared"), Op("write", last, PAGE, 1, view="shared", pattern=2),
               Op("dma_out", last, PAGE, 1, pattern=2), Op("convert", m.memory_map.top - GiB, 2 * MiB, 1, to="shared")]
        result = m.run_ops(ops, timeout=TIMEOUT)
        assert result.data_errors == 0 and result.dma_errors == 0 and result.conversions == 3
        assert m.shared.allocated_bytes() + m.private.allocated_bytes() < 64 * MiB   # sparse: touched pages only
    assert resources() == before


def test_too_many_vcpus_names_the_limit():
    with pytest.raises(InvalidArgument, match=r"vcpus=65: must be in 1\.\.64 \(the machine's limit\)"):
        Machine("8M", 65)
