"""QEMU trace-log importer: kvm_convert_memory / kvm_memory_fault lines (accel/kvm/trace-events)."""

import pytest

from privmem import InvalidArgument, TraceError
from privmem.workload import Op, import_qemu_log, read_trace, write_trace
from privmem.workload.qemu_log import parse_line

MiB = 1 << 20

# The log backend's form, with and without the "pid@seconds.micros:" prefix, mixed with other events.
LOG = """\
qemu-system-x86_64: -accel kvm: info: some banner
12345@1700000000.123456:kvm_set_user_memory AddrSpace#0 Slot#0 flags=0x4 gpa=0x0 size=0x80000000 ua=0x7f0000000000 ret=0 restricted_fd=23 restricted_offset=0x0
12345@1700000000.200001:kvm_run_exit cpu_index 0, reason 39
12345@1700000000.200002:kvm_memory_fault start 0x1234000 size 0x1000 flags 0x0
12345@1700000000.200003:kvm_convert_memory start 0x1234000 size 0x1000 private_to_shared
12345@1700000000.300000:kvm_convert_memory start 0x1234000 size 0x1000 shared_to_private
kvm_convert_memory start 0x2000000 size 0x200000 private_to_shared
12345@1700000000.400000:kvm_memory_fault start 0x3000000 size 0x1000 flags 0x8
12345@1700000000.500000:kvm_convert_memory start 0x4000000 size 0x400000 shared_to_private
"""


def test_realistic_log():
    trace, report = import_qemu_log(LOG.splitlines())
    assert trace.ops == (
        Op("convert", 0x1234000, 0x1000, to="shared"),      # the fault; its own convert line is merged
        Op("convert", 0x1234000, 0x1000, to="private"),
        Op("convert", 0x2000000, 0x200000, to="shared"),
        Op("convert", 0x3000000, 0x1000, to="private"),     # a fault alone (convert event not enabled)
        Op("convert", 0x4000000, 0x400000, to="private"),
    )
    assert (report.lines, report.converted, report.faults, report.deduplicated, report.skipped) == (9, 5, 2, 1, 3)
    assert (report.to_private, report.to_shared, report.errors) == (3, 2, [])
    assert report.memory == trace.memory == 0x4400000 and report.memory_inferred        # 68 MiB, 2 MiB aligned
    assert report.below_reserved == 0 and trace.vcpus == 1
    assert report.as_dict()["converted"] == 5


def test_memory_inferred_rounds_up_to_2mib():
    trace, _ = import_qemu_log(["kvm_convert_memory start 0x1001000 size 0x1000 shared_to_private"])
    assert trace.memory == 18 * MiB
    trace, report = import_qemu_log([])
    assert trace.memory == 2 * MiB and trace.ops == () and report.lines == 0


def test_simpletrace_format():
    lines = [
        "kvm_convert_memory 12.345 pid=4242 start=0x100000 size=0x2000 msg=private_to_shared",
        "kvm_memory_fault 0.400 pid=4242 start=0x100000 size=0x1000 flags=0x8",
    ]
    trace, report = import_qemu_log(lines)
    assert trace.ops == (Op("convert", 0x100000, 0x2000, to="shared"), Op("convert", 0x100000, 0x1000, to="private"))
    assert report.below_reserved == 0          # nothing is reserved: a trace owns page 0 too


# (line, message fragment)
MALFORMED = [
    ("kvm_convert_memory start 0x1001 size 0x1000 shared_to_private", "start 0x1001 not aligned"),
    ("kvm_convert_memory start 0x1000 size 0x800 shared_to_private", "size 0x800 not a multiple"),
    ("kvm_convert_memory start 0x1000 size 0x0 private_to_shared", "size 0x0: empty range"),
    ("kvm_convert_memory start 0x1000 size 0x1000", "missing direction"),
    ("kvm_convert_memory start 0x1000 size 0x1000 to_encrypted", "missing direction"),
    ("kvm_convert_memory 1.0 pid=1 start=0x1000 size=0x1000 msg=sideways", "unknown direction 'sideways'"),
    ("kvm_convert_memory start 0x1000 shared_to_private", "missing size"),
    ("kvm_convert_memory size 0x1000 shared_to_private", "missing start"),
    ("kvm_convert_memory start 0xg000 size 0x1000 shared_to_private", "start '0xg000' is not 0x-prefixed hex"),
    ("kvm_convert_memory start 4096 size 0x1000 shared_to_private", "start '4096' is not 0x-prefixed hex"),
    ("kvm_memory_fault start 0x1000 size 0x1000", "missing flags"),
    ("kvm_memory_fault start 0x1000 size 0x1000 flags 0x9", "unknown memory-fault flags 0x9"),
    ("12@1.2:kvm_memory_fault start 0x1000 size 0x1000 flags zz", "flags 'zz' is not 0x-prefixed hex"),
]


@pytest.mark.parametrize("line, fragment", MALFORMED)
def test_malformed_lines_reported_and_skipped(line, fragment):
    good = "kvm_convert_memory start 0x200000 size 0x1000 private_to_shared"
    trace, report = import_qemu_log([good, "other", line, good])
    assert len(trace.ops) == 2 and report.converted == 2
    assert len(report.errors) == 1
    number, message = report.errors[0]
    assert number == 3 and fragment in message
    with pytest.raises(TraceError) as info:
        import_qemu_log([good, "other", line, good], strict=True)
    assert info.value.line == 3 and fragment in str(info.value)


def test_past_given_memory():
    lines = ["kvm_convert_memory start 0xfee00000 size 0x1000 private_to_shared",        # MMIO: APIC page
             "kvm_convert_memory start 0x3ff000 size 0x1000 private_to_shared",
             "kvm_convert_memory start 0x400000 size 0x1000 private_to_shared"]
    trace, report = import_qemu_log(lines, memory=4 * MiB, vcpus=2)
    assert trace.memory == 4 * MiB and trace.vcpus == 2 and not report.memory_inferred
    assert trace.ops == (Op("convert", 0x3ff000, 0x1000, to="shared"),)
    assert [n for n, _ in report.errors] == [1, 3] and "past guest memory" in report.errors[0][1]
    with pytest.raises(InvalidArgument):
        import_qemu_log(lines, memory=4097)


def test_not_an_event_name_prefix():
    assert parse_line("my_kvm_convert_memory start 0x1000 size 0x1000 shared_to_private") is None
    assert parse_line("kvm_convert_memory_x start 0x1000") is None
    assert parse_line("x kvm_convert_memory start 0x1000 size 0x1000 shared_to_private") == \
        ("kvm_convert_memory", 0x1000, 0x1000, "private")


def test_repeated_faults_merge_one_for_one():
    fault = "kvm_memory_fault start 0x5000 size 0x1000 flags 0x8"
    conv = "kvm_convert_memory start 0x5000 size 0x1000 shared_to_private"
    trace, report = import_qemu_log([fault, fault, conv, conv, conv])
    assert len(trace.ops) == 3 and report.deduplicated == 2 and report.faults == 2


def test_from_path_and_round_trip(tmp_path):
    log = tmp_path / "qemu.log"
    log.write_text(LOG)
    trace, report = import_qemu_log(log, memory=128 * MiB)
    assert report.converted == 5 and trace.memory == 128 * MiB
    out = tmp_path / "t.jsonl"
    write_trace(trace, out)
    assert read_trace(out) == trace
    with open(log, "rb") as binary:
        assert import_qemu_log(binary, memory=128 * MiB)[0] == trace
