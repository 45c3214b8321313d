"""Guest memory maps: layouts, translation to backing offsets, holes named with their regions."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmem.errors import InvalidArgument
from privmem.memmap import LAYOUTS, GpaRange, GuestMemoryMap, infer_layout
from privmem.units import GiB, MiB

PAGE = 4096


@pytest.mark.parametrize("name, ram, regions", [
    ("flat", 1 * GiB, [(0, 1 * GiB)]),
    ("q35", 2 * GiB, [(0, 2 * GiB)]),
    ("q35", 0xAFFFF000, [(0, 0xAFFFF000)]),                     # just below 2.75 GiB: all low
    ("q35", 0xB0000000, [(0, 2 * GiB), (4 * GiB, 0x30000000)]),  # 2.75 GiB: splits at 2 GiB
    ("q35", 16 * GiB, [(0, 2 * GiB), (4 * GiB, 14 * GiB)]),
    ("q35", 4 * MiB, [(0, 4 * MiB)]),
    ("cloud-hypervisor", 3 * GiB, [(0, 3 * GiB)]),
    ("cloud-hypervisor", 8 * GiB, [(0, 3 * GiB), (4 * GiB, 5 * GiB)]),
])
def test_layouts(name, ram, regions):
    memory_map = GuestMemoryMap.from_layout(name, ram)
    assert [(r.gpa, r.size) for r in memory_map] == regions
    assert memory_map.ram_bytes == ram and memory_map.name == name
    memory_map.check()


def test_every_layout_is_registered_with_a_summary():
    assert {"flat", "q35", "cloud-hypervisor"} <= set(LAYOUTS)
    assert all(layout.summary for layout in LAYOUTS.values())
    with pytest.raises(InvalidArgument, match="layout='pc': unknown"):
        GuestMemoryMap.from_layout("pc", GiB)


def test_offsets_are_packed_and_translate_both_ways():
    memory_map = GuestMemoryMap.from_layout("q35", 16 * GiB)
    low, high = memory_map.regions
    assert (low.offset, high.offset) == (0, 2 * GiB)
    assert memory_map.offset(4 * GiB + PAGE) == 2 * GiB + PAGE
    assert memory_map.gpa_of(2 * GiB + PAGE) == 4 * GiB + PAGE
    assert list(memory_map.pieces(2 * GiB - PAGE, PAGE)) == [(2 * GiB - PAGE, PAGE)]
    assert memory_map.boundaries() == [0, 2 * GiB - PAGE, 4 * GiB, 18 * GiB - PAGE]


def test_adjacent_regions_are_one_range_split_in_pieces():
    memory_map = GuestMemoryMap([(2 * MiB, 2 * MiB), (0, 2 * MiB)])      # given out of order
    assert [r.gpa for r in memory_map] == [0, 2 * MiB]
    assert memory_map.range(MiB, 2 * MiB) == GpaRange(MiB, 2 * MiB)
    assert list(memory_map.pieces(MiB, 2 * MiB)) == [(MiB, MiB), (2 * MiB, MiB)]


@pytest.mark.parametrize("gpa, size, message", [
    (3 * GiB, PAGE, r"gpa=0xc0000000: \[0xc0000000, 0xc0001000\) is not all guest RAM: 0xc0000000 is in the hole "
                    r"between RAM regions \[0x0, 0x80000000\) and \[0x100000000, 0x480000000\)"),
    (2 * GiB - PAGE, 2 * PAGE, r"0x80000000 is in the hole between"),
    (18 * GiB, PAGE, r"0x480000000 is past the last RAM region \[0x100000000, 0x480000000\) \(q35: "),
    (PAGE + 1, PAGE, r"gpa=0x1001: must be 4 KiB aligned"),
    (0, 0, r"size=0x0: must be > 0"),
    (-PAGE, PAGE, r"gpa=-0x1000: must not be negative"),
    (0, 100, r"size=0x64: must be a multiple of 4 KiB"),
    (True, PAGE, r"gpa=True: must be an integer"),
])
def test_range_refuses_with_the_address_and_regions(gpa, size, message):
    with pytest.raises(InvalidArgument, match=message):
        GuestMemoryMap.from_layout("q35", 16 * GiB).range(gpa, size)


def test_below_the_first_region():
    memory_map = GuestMemoryMap([(MiB, MiB)])
    with pytest.raises(InvalidArgument, match=r"0x0 is below the first RAM region \[0x100000, 0x200000\)"):
        memory_map.range(0, PAGE)


@pytest.mark.parametrize("regions, field", [
    ([], "regions"),
    ([(0, 0)], "regions[0].size"),
    ([(0, 100)], "regions[0].size"),
    ([(1, PAGE)], "regions[0].gpa"),
    ([(0, 2 * PAGE), (PAGE, PAGE)], "regions"),
    ([((1 << 64) - PAGE, 2 * PAGE)], "regions[0].gpa"),
    ([(0, 4096.0)], "regions[0].size"),
])
def test_bad_regions(regions, field):
    with pytest.raises(InvalidArgument) as info:
        GuestMemoryMap(regions)
    assert info.value.field == field


def test_infer_layout():
    assert infer_layout([(0x80000, PAGE), (0x9F000, PAGE)]) == GuestMemoryMap.flat(2 * MiB)
    inferred = infer_layout([(0x80000, PAGE), (17 * GiB, PAGE)])
    assert inferred.name == "q35" and inferred.contains(17 * GiB, PAGE) and inferred.contains(0, PAGE)
    assert inferred.ram_bytes == 2 * GiB + 13 * GiB + 2 * MiB
    assert infer_layout([(4 * GiB, PAGE)]).ram_bytes == 0xB0000000        # at least 2.75 GiB
    assert infer_layout([(0, PAGE)], ram=16 * GiB) == GuestMemoryMap.flat(16 * GiB)
    assert infer_layout([(5 * GiB, PAGE)], ram=16 * GiB) == GuestMemoryMap.from_layout("q35", 16 * GiB)


@st.composite
def maps(draw):
    spans, gpa = [], draw(st.integers(0, 8)) * PAGE
    for _ in range(draw(st.integers(1, 4))):
        size = draw(st.integers(1, 16)) * PAGE
        spans.append((gpa, size))
        gpa += size + draw(st.integers(0, 4)) * PAGE
    return GuestMemoryMap(spans)


@settings(max_examples=200, deadline=None)
@given(maps(), st.integers(0, 100), st.integers(1, 40))
def test_contains_and_pieces_match_a_page_by_page_model(memory_map, first, pages):
    gpa, size = first * PAGE, pages * PAGE
    ram = {r.gpa + k * PAGE: r.offset + k * PAGE for r in memory_map for k in range(r.size // PAGE)}
    inside = all(gpa + k * PAGE in ram for k in range(pages))
    assert memory_map.contains(gpa, size) == inside
    if inside:
        offsets = [o + k for o, n in memory_map.pieces(gpa, size) for k in range(0, n, PAGE)]
        assert offsets == [ram[gpa + k * PAGE] for k in range(pages)]
        assert all(memory_map.gpa_of(ram[a]) == a for a in (gpa, gpa + size - PAGE))
    else:
        with pytest.raises(InvalidArgument, match="is not all guest RAM"):
            memory_map.range(gpa, size)
    memory_map.check()
