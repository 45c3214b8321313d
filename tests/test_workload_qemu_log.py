"""QEMU trace-log importer: kvm_convert_memory, kvm_hc_map_gpa_range and kvm_memory_fault lines
(accel/kvm/trace-events, target/i386/kvm/trace-events) in each of the log's line prefixes."""

from pathlib import Path

import pytest

from privmem import InvalidArgument, TraceError
from privmem.workload import Op, import_qemu_log, read_trace, write_trace
from privmem.workload.importers import Conversion, Skipped, Thread, import_trace
from privmem.workload.importers.qemu_log import parse_line
from privmem.workload.trace import MAX_LINE_BYTES

MiB, GiB = 1 << 20, 1 << 30
DATA = Path(__file__).parent / "data"

# The log backend's form, with and without the "tid@seconds.micros:" prefix, mixed with other events.
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
        Op("convert", 0x1234000, 0x1000, to="shared", t=0.0),      # the fault; its own convert line is dropped
        Op("convert", 0x1234000, 0x1000, to="private", t=0.099998),
        Op("convert", 0x2000000, 0x200000, to="shared"),           # no prefix: no time, no thread
        Op("convert", 0x3000000, 0x1000, to="private", t=0.199998),  # a fault alone (convert event not enabled)
        Op("convert", 0x4000000, 0x400000, to="private", t=0.299998),
    )
    assert (report.lines, report.events, report.conversions, report.deduplicated) == (9, 6, 5, 1)
    assert report.skipped == {"other trace event": 2, "not a trace event (other QEMU output)": 1}
    assert (report.to_private, report.to_shared, report.problems, report.lost) == (3, 2, [], False)
    assert report.by_event == {"kvm_convert_memory": 4, "kvm_memory_fault": 2}
    assert report.noop == 2                       # to private, never converted: already private
    assert trace.memory == 0x4400000 and report.inferred == "layout and memory"     # 68 MiB, 2 MiB aligned
    assert trace.vcpus == 1 and report.threads == [{"tid": 12345, "comm": None, "events": 5, "vcpu": 0}]
    assert report.as_dict()["conversions"] == 5 and report.as_dict()["bytes_to_shared"] == 0x201000


def test_memory_inferred_rounds_up_to_2mib():
    trace, _ = import_qemu_log(["kvm_convert_memory start 0x1001000 size 0x1000 shared_to_private"])
    assert trace.memory == 18 * MiB and trace.memory_map.name == "flat"
    trace, report = import_qemu_log([])
    assert trace.memory == 2 * MiB and trace.ops == () and report.lines == 0


def test_page_zero_is_guest_ram():
    """A trace owns every page of RAM: conversions at GPA 0 and below 1 MiB are imported."""
    trace, report = import_qemu_log(["kvm_convert_memory start 0x0 size 0x1000 private_to_shared",
                                     "kvm_convert_memory start 0x9f000 size 0x1000 private_to_shared"])
    assert [op.gpa for op in trace.ops] == [0, 0x9f000] and not report.lost


def test_simpletrace_format():
    lines = [
        "kvm_convert_memory 12.345 pid=4242 start=0x100000 size=0x2000 msg=private_to_shared",
        "kvm_memory_fault 0.400 pid=4242 start=0x100000 size=0x1000 flags=0x8",
    ]
    trace, report = import_qemu_log(lines)
    assert trace.ops == (Op("convert", 0x100000, 0x2000, to="shared"), Op("convert", 0x100000, 0x1000, to="private"))
    assert report.timed == 0


def test_the_three_prefix_forms_give_the_same_trace():
    """A 16 GiB q35 guest: OVMF pages at 0x80000 and 0x9f000, a SWIOTLB range below 2 GiB, lazy
    acceptance above 4 GiB, an MMIO page in the hole, announcements paired with conversions."""
    traces = {form: import_qemu_log(DATA / f"qemu-q35-16g-{form}.log") for form in ("tid", "iso", "none")}
    tid, iso, none = (traces[form][0] for form in ("tid", "iso", "none"))
    assert tid.memory_map == iso.memory_map == none.memory_map
    assert tid.memory_map.describe() == "q35: [0x0, 0x80000000) [0x100000000, 0x480000000) (16.0 GiB RAM)"
    assert tid.ops == iso.ops                                      # times included
    assert [(op.kind, op.gpa, op.size, op.vcpu, op.to) for op in tid.ops] == \
        [(op.kind, op.gpa, op.size, op.vcpu, op.to) for op in none.ops]
    assert all(op.t is None for op in none.ops) and all(op.t is not None for op in tid.ops)
    assert tid.vcpus == iso.vcpus == none.vcpus == 1
    assert len(tid.ops) == 10 and tid.ops[0] == Op("convert", 0x80000, 0x1000, to="shared", t=0.0)
    assert Op("convert", 0x7C000000, 64 * MiB, to="shared", t=0.23) in tid.ops
    assert tid.ops[-1] == Op("convert", 0x9F000, 0x1000, to="private", t=0.78)
    for _, report in traces.values():
        assert (report.events, report.conversions, report.deduplicated, report.outside) == (19, 10, 8, 1)
        assert report.problems[0][0] == 13 and "hole between RAM regions" in report.problems[0][1]
        assert report.noop == 3 and report.lost


def test_threads_become_vcpus_in_order_of_appearance():
    lines = ["7@1.000000:kvm_convert_memory start 0x1000 size 0x1000 private_to_shared",
             "9@1.000100:kvm_convert_memory start 0x2000 size 0x1000 private_to_shared",
             "7@1.000200:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private"]
    trace, report = import_qemu_log(lines)
    assert [op.vcpu for op in trace.ops] == [0, 1, 0] and trace.vcpus == 2
    assert [row["tid"] for row in report.threads] == [7, 9]
    trace, report = import_qemu_log(lines, vcpus=1)
    assert [op.vcpu for op in trace.ops] == [0, 0, 0] and not report.vcpus_inferred


def test_map_gpa_range_attributes_and_iso_zones():
    assert parse_line("kvm_hc_map_gpa_range gpa 0x200000 size 0x200000 attributes 0x11 flags 0x0") == \
        Conversion("kvm_hc_map_gpa_range", 0x200000, 0x200000, True, announces=True)
    assert parse_line("kvm_hc_map_gpa_range gpa 0x1000 size 0x1000 attributes 0x0 flags 0x0").to_private is False
    east = parse_line("2026-12-01T11:00:00.5+01:00 kvm_convert_memory start 0x1000 size 0x1000 private_to_shared")
    utc = parse_line("2026-12-01T10:00:00.500000Z kvm_convert_memory start 0x1000 size 0x1000 private_to_shared")
    assert east.stamp_ns == utc.stamp_ns and utc.thread is None
    both = parse_line("2026-12-01T10:00:00.500000Z 77@5.000000:kvm_convert_memory start 0x1000 size 0x1000 "
                      "private_to_shared")
    assert both.thread == Thread(77) and both.stamp_ns == utc.stamp_ns


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
    ("kvm_convert_memory start 0xfffffffffffff000 size 0x2000 shared_to_private", "wraps past 2**64"),
    ("kvm_memory_fault start 0x1000 size 0x1000", "missing flags"),
    ("kvm_memory_fault start 0x1000 size 0x1000 flags 0x9", "unknown memory-fault flags 0x9"),
    ("12@1.2:kvm_memory_fault start 0x1000 size 0x1000 flags zz", "flags 'zz' is not 0x-prefixed hex"),
    ("kvm_hc_map_gpa_range gpa 0x1000 size 0x1000 attributes 0x3 flags 0x0", "unknown MAP_GPA_RANGE attributes 0x3"),
    ("kvm_hc_map_gpa_range gpa 0x1000 size 0x1000 attributes 0x20 flags 0x0", "unknown MAP_GPA_RANGE attributes"),
    ("kvm_hc_map_gpa_range gpa 0x1000 size 0x1000 flags 0x0", "missing attributes"),
    ("2026-13-01T10:00:00Z kvm_convert_memory start 0x1000 size 0x1000 shared_to_private", "not a valid date"),
]


@pytest.mark.parametrize("line, fragment", MALFORMED)
def test_malformed_lines_reported_and_skipped(line, fragment):
    good = "kvm_convert_memory start 0x200000 size 0x1000 private_to_shared"
    seen = []
    trace, report = import_trace("qemu-log", [good, "other", line, good], on_problem=lambda *p: seen.append(p))
    assert len(trace.ops) == 2 and report.conversions == 2
    assert report.malformed == 1 and report.lost and len(report.problems) == 1 and seen == report.problems
    number, message = report.problems[0]
    assert number == 3 and fragment in message
    with pytest.raises(TraceError) as info:
        import_qemu_log([good, "other", line, good], strict=True)
    assert info.value.line == 3 and fragment in str(info.value)


def test_outside_given_memory_is_reported_per_line():
    lines = ["kvm_convert_memory start 0xfee00000 size 0x1000 private_to_shared",        # MMIO: APIC page
             "kvm_convert_memory start 0x3ff000 size 0x1000 private_to_shared",
             "kvm_convert_memory start 0x400000 size 0x1000 private_to_shared"]
    trace, report = import_qemu_log(lines, memory=4 * MiB, vcpus=2)
    assert trace.memory == 4 * MiB and trace.vcpus == 2 and report.inferred == "layout"
    assert trace.ops == (Op("convert", 0x3ff000, 0x1000, to="shared"),)
    assert [n for n, _ in report.problems] == [1, 3] and report.outside == 2
    assert "past the last RAM region" in report.problems[0][1]
    with pytest.raises(TraceError) as info:
        import_qemu_log(lines, memory=4 * MiB, strict=True)
    assert info.value.line == 1 and info.value.field == "line 1: gpa"
    with pytest.raises(InvalidArgument):
        import_qemu_log(lines, memory=4097)
    with pytest.raises(InvalidArgument, match="layout"):
        import_qemu_log(lines, layout="pc")


def test_mmio_below_4g_does_not_stretch_an_inferred_guest():
    lines = ["kvm_convert_memory start 0x3ff000 size 0x1000 private_to_shared",
             "kvm_convert_memory start 0xfee00000 size 0x1000 private_to_shared"]       # the local APIC
    trace, report = import_qemu_log(lines)
    assert trace.memory == 4 * MiB and report.outside == 1 and report.problems[0][0] == 2
    assert import_qemu_log(lines, memory=4 * GiB)[1].outside == 0                   # unless asked for


def test_layout_given_without_memory_takes_the_least_ram_that_reaches():
    lines = ["kvm_convert_memory start 0x1fff000 size 0x1000 private_to_shared",
             "kvm_convert_memory start 0x13fe00000 size 0x200000 shared_to_private"]
    trace, report = import_qemu_log(lines, layout="cloud-hypervisor")
    assert trace.memory_map.describe() == \
        "cloud-hypervisor: [0x0, 0xc0000000) [0x100000000, 0x140000000) (4.0 GiB RAM)"
    assert report.inferred == "memory" and len(trace.ops) == 2


def test_not_an_event_name_prefix():
    other = Skipped("other trace event")
    assert parse_line("my_kvm_convert_memory start 0x1000 size 0x1000 shared_to_private") == other
    assert parse_line("kvm_convert_memory_x start 0x1000") == other
    assert parse_line("x kvm_convert_memory start 0x1000 size 0x1000 shared_to_private") == \
        Conversion("kvm_convert_memory", 0x1000, 0x1000, True)


def test_repeated_faults_merge_one_for_one():
    """Without thread ids, the vCPUs' lines interleave: a window of pending requests."""
    fault = "kvm_memory_fault start 0x5000 size 0x1000 flags 0x8"
    conv = "kvm_convert_memory start 0x5000 size 0x1000 shared_to_private"
    trace, report = import_qemu_log([fault, fault, conv, conv, conv])
    assert len(trace.ops) == 3 and report.deduplicated == 2 and report.by_event["kvm_memory_fault"] == 2


def test_on_one_thread_a_request_waits_for_its_own_conversion_only():
    fault = "3@1.0:kvm_memory_fault start 0x5000 size 0x1000 flags 0x8"
    other = "3@1.1:kvm_convert_memory start 0x6000 size 0x1000 shared_to_private"
    late = "3@1.2:kvm_convert_memory start 0x5000 size 0x1000 shared_to_private"
    trace, report = import_qemu_log([fault, other, late])
    assert len(trace.ops) == 3 and report.deduplicated == 0


def test_times_start_at_the_first_event_and_never_go_negative():
    trace, _ = import_qemu_log(["5@100.500000:kvm_convert_memory start 0x1000 size 0x1000 private_to_shared",
                                "6@100.499990:kvm_convert_memory start 0x2000 size 0x1000 private_to_shared",
                                "5@101.000001:kvm_convert_memory start 0x1000 size 0x1000 shared_to_private"])
    assert [op.t for op in trace.ops] == [0.0, 0.0, 0.500001]


def test_a_line_longer_than_the_cap_is_reported(tmp_path):
    log = tmp_path / "long.log"
    log.write_text("kvm_convert_memory start 0x1000 size 0x1000 private_to_shared " + "x" * MAX_LINE_BYTES + "\n"
                   "kvm_convert_memory start 0x2000 size 0x1000 private_to_shared\n")
    trace, report = import_qemu_log(log)
    assert [op.gpa for op in trace.ops] == [0x2000] and report.problems == [(1, f"longer than {MAX_LINE_BYTES} bytes")]
    assert report.lines == 2


def test_from_path_and_round_trip(tmp_path):
    log = tmp_path / "qemu.log"
    log.write_text(LOG)
    trace, report = import_qemu_log(log, memory=128 * MiB)
    assert report.conversions == 5 and trace.memory == 128 * MiB and report.file == str(log)
    out = tmp_path / "t.jsonl"
    write_trace(trace, out)
    assert read_trace(out) == trace
    with open(log, "rb") as binary:
        assert import_qemu_log(binary, memory=128 * MiB)[0] == trace
    with open(log) as text:
        assert import_qemu_log(text, memory=128 * MiB)[0] == trace
