"""The player's records, programs, rings, page tables and firmware layout (pure logic), and
that the assembly agrees with all of them."""

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmem import InvalidArgument
from privmem.memmap import GuestMemoryMap
from privmem.ops import Op
from privmem.units import GiB, MiB, TiB
from privmem.vmm import firmware, paging, program, psc
from privmem.vmm.firmware import SHARED_VA, FirmwareLayout
from privmem.vmm.ring import OpRing

PAGE = 4096
FLAT = GuestMemoryMap.flat(64 * MiB)
Q35 = GuestMemoryMap.from_layout("q35", 16 * GiB)
SHARED_BIT = 1 << 47


def unpack(op: Op) -> tuple:
    return tuple(program.decode(program.encode(op)))


def test_encode_records():
    """The encoder does the player's arithmetic: view-resolved address, end, pattern qword,
    PSC bits, the whole entry of a one-page conversion."""
    assert unpack(Op("convert", 0, 8192, to="private")) == (1, 1, 0, 0, 0, 8192, 1 << 52)
    assert unpack(Op("convert", 4096, 4096, to="shared")) == \
        (program.K_CONVERT_PAGE, 0, 0, 0, 4096, 8192, 4096 | 2 << 52)
    assert unpack(Op("write", 0, 4096, view="shared", pattern=0xAB)) == \
        (2, 2, 0xAB, 0, SHARED_VA, SHARED_VA + 4096, 0xABABABABABABABAB)
    assert unpack(Op("verify", 8192, 4096, view="private", pattern=7)) == (3, 0, 7, 0, 8192, 12288, 0x0707070707070707)
    assert unpack(Op("touch", 0, 4096, view="shared"))[:5] == (4, 2, 0, 0, SHARED_VA)
    assert unpack(Op("dma_in", 4096, 4096, pattern=9)) == (5, 0, 9, 0, 4096, 8192, 0)     # the device uses the gpa
    assert unpack(Op("dma_out", 0, 4096, pattern=9))[:5] == (6, 0, 9, 0, 0)
    assert program.decode(program.exits_record(5)) == (7, 0, 0, 5, 0, 0, 0)
    assert program.view_of(SHARED_VA + 4096) == ("shared", 4096) and program.view_of(4096) == ("private", 4096)
    with pytest.raises(InvalidArgument, match="count"):
        program.exits_record(1 << 32)


def _player_constants() -> dict:
    from privmem.vmm.guest import assemble
    source = (assemble.HERE / "player.S").read_text()
    return {m[0]: eval(m[1], {}) for m in re.findall(r"^\s*\.equ (\w+), ([^/\n]+?)\s*(?:/\*.*)?$", source, re.M)}


def test_player_agrees_with_firmware_psc_and_program():
    equ = _player_constants()
    assert equ["OP_SIZE"] == program.RECORD.size == firmware.RECORD_BYTES
    for name in ("DONE", "PSC", "DMA_IN", "DMA_OUT", "VERIFY_FAIL", "NOP", "REFILL", "DELAY"):
        assert equ[f"PORT_{name}"] == getattr(firmware, f"PORT_{name}"), name
    for kind, code in program.KIND_CODES.items():
        assert equ[f"K_{kind.upper()}"] == code, kind
    assert equ["K_COUNT"] == len(program.KIND_CODES)
    assert equ["PSC_ENTRIES"] == psc.ENTRIES_OFFSET and equ["PSC_STATUS"] == psc.STATUS_OFFSET
    assert equ["PSC_MAX_ENTRIES"] == psc.MAX_ENTRIES and equ["PSC_STATUS_RETRY"] == psc.STATUS_RETRY
    assert 1 << equ["PSC_SIZE_2M_BIT"] == 1 << 56
    assert (equ["MB_RECORD"], equ["MB_ADDRESS"], equ["MB_ACTUAL"], equ["MB_COUNT"]) == \
        tuple(firmware.MAILBOX + 8 * k for k in range(4))
    assert equ["PARAM_VCPU"] == firmware.PARAM_VCPU
    from privmem.vmm.device import SAMPLE_OFFSETS
    assert [(0, 8), (equ["SAMPLE_LAST"], 8)] == list(SAMPLE_OFFSETS)


def test_player_binary_matches_sources_and_ends_with_its_dispatch_table():
    from privmem.vmm.guest import assemble, load
    if not assemble.have_toolchain():
        pytest.skip("GNU as / objcopy not installed")
    for source in assemble.sources():
        assert assemble.assemble(source) == source.with_suffix(".bin").read_bytes(), source.name
    code = load("player")
    table = struct.unpack_from("<256Q", code, len(code) - 256 * 8)
    assert table[program.K_END] == table[255] and all(0 < entry < len(code) - 2048 for entry in table[1:13])


# -- programs --------------------------------------------------------------------------------

BAD = [
    (Op("write", 64 * MiB - 4096, 8192, 0, view="private", pattern=1), "op.gpa", "past the last RAM region"),
    (Op("write", 0, 4096, 3, view="private", pattern=1), "op.vcpu", "must be < vcpus"),
    (Op("dma_in", 0, 512 * MiB, 0, pattern=1), "op.size", "one device request moves at most"),
]


@pytest.mark.parametrize("op, field, message", BAD, ids=[b[1] for b in BAD])
def test_bad_ops_are_refused_before_anything_runs(op, field, message):
    big = GuestMemoryMap.flat(GiB) if op.kind == "dma_in" else FLAT
    with pytest.raises(InvalidArgument, match=message) as info:
        program.Program.compile([Op("touch", 0, 4096, 0, view="private"), op], big, 2)
    assert info.value.field == f"ops[1].{field.removeprefix('op.')}"


def test_ops_in_a_hole_are_refused_with_the_regions_named():
    with pytest.raises(InvalidArgument, match=r"ops\[0\].gpa=0xc0000000: .* is in the hole between RAM regions"):
        program.Program.compile([Op("convert", 3 * GiB, PAGE, to="shared")], Q35, 1)


def test_programs_spool_per_vcpu_and_stream_back():
    ops = [Op("touch", (i % 16) * PAGE, PAGE, i % 3, view="private") for i in range(50_000)]
    with program.Program.compile(ops, FLAT, 3) as compiled:
        assert compiled.ops == 50_000 and compiled.records == [16667, 16667, 16666]
        back = list(compiled.spools[1])
        assert len(back) == 16667 and back[0] == program.decode(program.encode(ops[1]))
        assert list(compiled.spools[1]) == back          # iterable again (rewinds)


def test_recorded_timing_adds_delays_for_gaps():
    ops = [Op("convert", 0, PAGE, to="shared", t=0.0), Op("convert", 0, PAGE, to="private", t=0.00005),
           Op("convert", 0, PAGE, to="shared", t=0.5)]
    with program.Program.compile(ops, FLAT, 1, timing="recorded") as compiled:
        kinds = [r.kind for r in compiled.spools[0]]
        assert kinds == [program.K_CONVERT_PAGE, program.K_CONVERT_PAGE, program.K_DELAY, program.K_CONVERT_PAGE]
        assert [r.arg for r in compiled.spools[0] if r.kind == program.K_DELAY] == [500_000]
    with program.Program.compile(ops, FLAT, 1) as untimed:
        assert untimed.records == [3]
    with pytest.raises(InvalidArgument, match="timing"):
        program.Program(FLAT, 1, timing="real")


# -- the op ring ----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.integers(0, 5000))
def test_the_ring_delivers_every_record_once_in_order(count):
    """Walk the ring as the player does: records in order, refills when a segment ends,
    END after the last record."""
    ops = [Op("touch", (i % 256) * PAGE, PAGE, view="private") for i in range(count)]
    with program.Program.compile(ops, FLAT, 1) as compiled:
        memory = bytearray(firmware.RING_BYTES)
        ring = OpRing(memoryview(memory), va=0x1000_0000)
        ring.prime(compiled.spools[0])
        seen, position = [], 0
        while True:
            record = program.decode(memory, position)
            if record.kind == program.K_END:
                break
            if record.kind == program.K_REFILL:
                ring.refill()
                position = record.addr - ring.va
                continue
            seen.append(record)
            position += firmware.RECORD_BYTES
        assert seen == list(compiled.spools[0])
        assert ring.refills == count // (firmware.RING_HALF_RECORDS - 1)     # one per full segment


def test_ring_record_lookup_refuses_addresses_outside_or_between_records():
    ring = OpRing(memoryview(bytearray(firmware.RING_BYTES)), va=0x10000)
    assert ring.record_at(0x10000 + 64) == 64
    assert ring.record_at(0x10000 + 65) is None
    assert ring.record_at(0x10000 - 32) is None and ring.record_at(0x10000 + firmware.RING_BYTES) is None


# -- page tables and the firmware layout -----------------------------------------------------------

@pytest.mark.parametrize("huge", [False, True])
@pytest.mark.parametrize("memory_map", [FLAT, Q35, GuestMemoryMap.from_layout("q35", TiB)],
                         ids=["flat 64M", "q35 16G", "q35 1T"])
def test_page_tables_map_both_views_and_the_firmware(memory_map, huge):
    layout = FirmwareLayout.plan(memory_map, 2, SHARED_BIT, huge)
    pages = list(layout.page_tables(memory_map))
    assert len(pages) <= layout.table_pages
    walk = lambda va: paging.translate(pages, layout.cr3, va)  # noqa: E731
    for gpa in memory_map.boundaries():
        assert walk(gpa) == gpa
        assert walk(SHARED_VA + gpa + 8) == SHARED_BIT + gpa + 8
    assert walk(layout.va) == layout.gpa and walk(layout.va_of(layout.ring(1))) == layout.gpa + layout.ring(1)
    assert layout.gpa + layout.size == SHARED_BIT and layout.size % firmware.ALIGN == 0
    if memory_map is not FLAT:
        assert walk(3 * GiB) is None                       # the q35 hole is not mapped


def test_page_tables_for_a_terabyte_stay_small():
    memory_map = GuestMemoryMap.from_layout("q35", TiB)
    assert FirmwareLayout.plan(memory_map, 64, SHARED_BIT, False).table_pages <= 2 * 1026 + 8
    assert FirmwareLayout.plan(memory_map, 64, SHARED_BIT, True).table_pages <= 16


def test_ram_must_end_below_the_firmware_region():
    with pytest.raises(InvalidArgument, match="RAM must end below"):
        FirmwareLayout.plan(GuestMemoryMap.flat(64 * MiB), 1, 64 * MiB, False)
