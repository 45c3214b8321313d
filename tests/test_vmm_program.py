"""Op-list encoding for the trace player (pure logic) and its layout invariants."""

import re
import struct

import pytest

from privmem import InvalidArgument
from privmem.units import MiB
from privmem.vmm import GuestOp, Machine, layout, program, psc
from privmem.workload import Op

MEM = 64 << 20
BASE = layout.RESERVED_BYTES


def test_layout_is_consistent():
    assert layout.CODE_GPA < layout.CODE_LIMIT <= layout.STACKS_GPA
    assert layout.PRIVATE_RESERVED_END == layout.COMM_GPA
    assert layout.OPS_GPA == layout.COMM_GPA + layout.MAX_VCPUS * layout.COMM_SIZE < layout.OPS_END
    assert layout.MAILBOX >= 2036 and layout.PARAMS >= layout.MAILBOX + layout.MAILBOX_FORMAT.size
    assert [layout.shared_bit_for(m) for m in (4 << 20, 6 << 20, 1 << 30, 2 << 30)] == \
        [4 << 20, 8 << 20, 1 << 30, 2 << 30]


def test_encode_records():
    """The encoder does the player's arithmetic: view-resolved address, pattern dword, PSC bits."""
    shared_bit = 1 << 26
    unpack = lambda op, **kw: struct.unpack("<BBBxIII", program.encode_op(op, shared_bit, **kw))  # noqa: E731
    assert unpack(Op("convert", BASE, 8192, 0, to="private")) == (1, 1, 0, BASE, 8192, 1 << 20)
    assert unpack(Op("convert", BASE, 4096, 0, to="shared")) == (program.K_CONVERT_PAGE, 0, 0, BASE, 4096, 2 << 20)
    assert unpack(Op("write", BASE, 4096, 1, view="shared", pattern=0xAB)) == \
        (2, 2, 0xAB, BASE | shared_bit, 4096, 0xABABABAB)
    assert unpack(Op("verify", BASE, 4096, view="private", pattern=7)) == (3, 0, 7, BASE, 4096, 0x07070707)
    assert unpack(Op("write", BASE, 4096, view="private", pattern=7), data_check="full")[0] == program.K_WRITE_FULL
    assert unpack(Op("verify", BASE, 4096, view="shared", pattern=7), data_check="full")[:4] == \
        (program.K_VERIFY_FULL, 2, 7, BASE | shared_bit)
    assert unpack(Op("touch", BASE, 4096, view="shared"))[:4] == (4, 2, 0, BASE | shared_bit)
    assert unpack(Op("dma_in", BASE, 4096, pattern=9)) == (5, 0, 9, BASE, 4096, 0)     # the device uses the gpa
    assert unpack(Op("dma_out", BASE, 4096, pattern=9))[:4] == (6, 0, 9, BASE)
    assert unpack(GuestOp("exits", count=5)) == (7, 0, 0, 0, 0, 5)
    with pytest.raises(InvalidArgument, match="shared_bit"):
        program.encode_op(Op("touch", BASE, 4096, view="shared"))
    with pytest.raises(InvalidArgument, match="data_check"):
        program.encode_op(Op("write", BASE, 4096, view="private", pattern=1), shared_bit, data_check="most")


def _player_constants() -> dict:
    from privmem.vmm.guest import assemble
    source = (assemble.HERE / "player.S").read_text()
    return {m[0]: eval(m[1], {}) for m in re.findall(r"^\s*\.equ (\w+), ([^/\n]+?)\s*(?:/\*.*)?$", source, re.M)}


def test_player_agrees_with_layout_psc_and_program():
    equ = _player_constants()
    assert equ["LOAD_ADDR"] == layout.CODE_GPA and equ["OP_SIZE"] == program.RECORD.size
    for name in ("DONE", "PSC", "DMA_IN", "DMA_OUT", "VERIFY_FAIL", "NOP"):
        assert equ[f"PORT_{name}"] == getattr(layout, f"PORT_{name}"), name
    for kind, code in program.KIND_CODES.items():
        assert equ[f"K_{kind.upper()}"] == code, kind
    assert (equ["K_CONVERT_PAGE"], equ["K_WRITE_FULL"], equ["K_VERIFY_FULL"]) == \
        (program.K_CONVERT_PAGE, program.K_WRITE_FULL, program.K_VERIFY_FULL)
    assert equ["PSC_ENTRIES"] == psc.ENTRIES_OFFSET and equ["PSC_STATUS"] == psc.STATUS_OFFSET
    assert equ["PSC_MAX_ENTRIES"] == psc.MAX_ENTRIES and equ["PSC_STATUS_RETRY"] == psc.STATUS_RETRY
    assert equ["PSC_SIZE_2M"] << 32 == 1 << 56
    assert (equ["MB_GPA"], equ["MB_COUNT"], equ["PARAM_VCPU"]) == (layout.MAILBOX, layout.MAILBOX + 16,
                                                                  layout.PARAMS + 4)
    assert [(0, 8), (equ["SAMPLE_LAST"], 8)] == list(layout.SAMPLE_OFFSETS)


BAD = [
    (Op("write", 0, 4096, 0, view="private", pattern=1), "inside the reserved region"),
    (Op("write", MEM - 4096, 8192, 0, view="private", pattern=1), "past memory"),
    (Op("write", BASE, 4096, 3, view="private", pattern=1), "vcpu out of range"),
    (GuestOp("write", BASE + 1, 4096, 0, view="private", pattern=1), "unaligned"),
    (GuestOp("write", BASE, 0, 0, view="private", pattern=1), "empty"),
    (GuestOp("write", BASE, 4096, 0, view="private", pattern=256), "pattern"),
    (GuestOp("convert", BASE, 4096, 0, to="sideways"), "to"),
    (GuestOp("touch", BASE, 4096, 0, view="middle"), "view"),
    (GuestOp("end"), "kind"),
    (GuestOp("jump", BASE, 4096), "kind"),
]


@pytest.mark.parametrize("op,why", BAD, ids=[w for _, w in BAD])
def test_bad_ops_are_refused_before_running(op, why):
    with pytest.raises(InvalidArgument):
        program.split_by_vcpu([Op("touch", BASE, 4096, 0, view="private"), op], MEM, 2)


def test_rounds_split_long_lists_and_end_each():
    vcpus = 32
    cap = program.capacity(vcpus)
    per = [[GuestOp("touch", BASE, 4096, 0, view="private")] * (cap + 5)] + [[] for _ in range(vcpus - 1)]
    rounds = program.rounds(per, vcpus)
    assert len(rounds) == 2
    assert len(rounds[0][0]) == (cap + 1) * 16 and len(rounds[1][0]) == 6 * 16
    assert all(blob[-16:] == program.END_RECORD for r in rounds for blob in r)
    for v in range(vcpus):
        assert program.list_gpa(v, vcpus) + (cap + 1) * 16 <= \
            (program.list_gpa(v + 1, vcpus) if v + 1 < vcpus else layout.OPS_END)


def test_memory_limits_rejected():
    with pytest.raises(InvalidArgument):
        Machine("3G")
    with pytest.raises(InvalidArgument):
        Machine(3 * MiB)
    with pytest.raises(InvalidArgument):
        Machine("64M", vcpus=0)


def test_player_binary_matches_sources():
    from privmem.vmm.guest import assemble
    if not assemble.have_toolchain():
        pytest.skip("GNU as / objcopy not installed")
    for source in assemble.sources():
        assert assemble.assemble(source) == source.with_suffix(".bin").read_bytes(), source.name
