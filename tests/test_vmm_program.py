"""Op-list encoding for the trace player (pure logic) and its layout invariants."""

import struct

import pytest

from privmem import InvalidArgument
from privmem.units import MiB
from privmem.vmm import GuestOp, Machine, layout, program
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
    rec = program.encode_op(Op("convert", BASE, 8192, 0, to="private"))
    assert struct.unpack("<BBBxIII", rec) == (1, 1, 0, BASE, 8192, 0)
    rec = program.encode_op(Op("write", BASE, 4096, 1, view="shared", pattern=0xAB))
    assert struct.unpack("<BBBxIII", rec) == (2, 2, 0xAB, BASE, 4096, 0)
    rec = program.encode_op(Op("verify", BASE, 4096, view="private", pattern=7))
    assert struct.unpack("<BBBxIII", rec) == (3, 0, 7, BASE, 4096, 0)
    rec = program.encode_op(Op("touch", BASE, 4096, view="shared"))
    assert struct.unpack("<BBBxIII", rec)[:2] == (4, 2)
    assert program.encode_op(Op("dma_in", BASE, 4096, pattern=9))[:3] == bytes([5, 0, 9])
    assert program.encode_op(Op("dma_out", BASE, 4096, pattern=9))[:3] == bytes([6, 0, 9])
    assert struct.unpack("<BBBxIII", program.encode_op(GuestOp("exits", count=5))) == (7, 0, 0, 0, 0, 5)


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
