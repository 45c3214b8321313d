"""The host-side importers (trace-cmd report, perf script) and the pieces every importer shares:
the registry, dedup, threads to vCPUs, layout inference, the spool."""

import gzip
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmem import InvalidArgument, TraceError
from privmem.memmap import GuestMemoryMap
from privmem.workload import IMPORTERS, Op, import_file, import_trace, read_trace
from privmem.workload.importers import Conversion, Dropped, Malformed, Skipped, Thread
from privmem.workload.importers.dedup import WINDOW, Deduplicator
from privmem.workload.importers.kvm_events import parse_payload
from privmem.workload.importers.layout import guest_map
from privmem.workload.importers.perf_script import parse_line as perf_line
from privmem.workload.importers.spool import Spool
from privmem.workload.importers.threads import MAX_THREADS, NO_THREAD, ThreadMap
from privmem.workload.importers.trace_cmd import parse_line as trace_cmd_line

MiB, GiB = 1 << 20, 1 << 30
DATA = Path(__file__).parent / "data"
Q35_8G = "q35: [0x0, 0x80000000) [0x100000000, 0x280000000) (8.0 GiB RAM)"


def test_registry_lists_every_source_in_cli_order():
    assert list(IMPORTERS) == ["qemu-log", "trace-cmd", "perf-script"]
    assert all(entry.summary and callable(entry.parse) for entry in IMPORTERS.values())
    with pytest.raises(InvalidArgument, match="from='vmware'"):
        import_trace("vmware", [])


# -- trace-cmd -------------------------------------------------------------------------------------

def test_trace_cmd_recording():
    """Two vCPU threads and QEMU's main thread, a zero printed without 0x, an EVENTS DROPPED
    line, SNP page-state requests (one PSC, one CPUID) and the renamed tracepoint."""
    trace, report = import_trace("trace-cmd", DATA / "trace-cmd-q35-8g.txt")
    assert trace.memory_map.describe() == Q35_8G and report.inferred == "layout and memory"
    assert trace.vcpus == 2
    assert trace.ops[0] == Op("convert", 0, 2 * GiB, vcpu=0, to="private", t=0.0)       # 0000000000000000 -- ...
    assert Op("convert", 0, 0x1000, vcpu=0, to="shared", t=0.1044) in trace.ops
    assert trace.ops[5] == Op("convert", 0x9F000, 0x1000, vcpu=1, to="shared", t=0.1999)  # the PSC request
    assert Op("convert", 0x7C000000, 64 * MiB, vcpu=1, to="shared", t=0.2999) in trace.ops
    assert (report.events, report.conversions, report.deduplicated, report.noop) == (12, 10, 2, 4)
    assert report.by_event == {"kvm_vm_set_mem_attributes": 9, "kvm_vmgexit_msr_protocol_enter": 2,
                               "kvm_set_vm_mem_attributes": 1}
    assert report.skipped == {"trace-cmd report header": 3, "other event": 1,
                              "SNP MSR-protocol request other than a page-state change": 1,
                              "SNP GHCB page-state change (its entries are not traced)": 1}
    assert (report.dropped_reports, report.dropped_events, report.lost) == (1, 12, True)
    assert report.problems == [(13, "the tracer dropped 12 events on CPU 2: the recording is incomplete")]
    assert [(row["tid"], row["comm"], row["vcpu"]) for row in report.threads] == \
        [(4321, "qemu-system-x86", 0), (4330, "CPU 0/KVM", 0), (4331, "CPU 1/KVM", 1)]
    with pytest.raises(TraceError, match="line 13: dropped"):
        import_trace("trace-cmd", DATA / "trace-cmd-q35-8g.txt", strict=True)


def test_trace_cmd_line_layouts():
    event = "kvm_vm_set_mem_attributes: 0x00000000000080 -- 0x00000000000082 [0x8]"
    micro = trace_cmd_line(f"       CPU 12/KVM-999   [003]   1234.567890: {event}")
    assert micro == Conversion("kvm_vm_set_mem_attributes", 0x80000, 0x2000, True,
                               Thread(999, "CPU 12/KVM", 12), 1234_567890000)
    nano = trace_cmd_line(f"  qemu-kvm-worker-7  [000] d..1. 5.000000001: {event}")      # -t, latency flags
    assert nano.stamp_ns == 5_000_000_001 and nano.thread == Thread(7, "qemu-kvm-worker", None)
    assert trace_cmd_line(f"  <...>-7  [000]  123456789: {event}").stamp_ns is None        # a counter clock
    assert trace_cmd_line("CPU:3 [EVENTS DROPPED]") == Dropped(None, "CPU 3")
    assert trace_cmd_line("cpus=8") == Skipped("trace-cmd report header")
    assert trace_cmd_line("some banner") == Skipped("not a trace-cmd report event line")
    with pytest.raises(Malformed, match="not a trace-cmd report event line"):
        trace_cmd_line(f"kvm_vm_set_mem_attributes cut short {event}")


@pytest.mark.parametrize("info, fragment", [
    ("0x10 -- 0x10 [0x8]", "is not after start gfn"),
    ("0x10 -- 0x20 [0x4]", "unknown memory attributes 0x4"),
    ("0x10 -- 0x20", "expected 'START -- END [ATTR]'"),
    ("0000000000000010 -- 0x20 [0x8]", "start gfn '0000000000000010' is not 0x-prefixed hex"),
    ("0x0 -- 0x10000000000001 [0x8]", "past the 64-bit guest-physical space"),
])
def test_set_mem_attributes_malformed(info, fragment):
    with pytest.raises(Malformed, match=re.escape(fragment)):
        parse_payload("kvm_vm_set_mem_attributes", info, Thread(1), None)


def test_msr_protocol_page_state_requests():
    thread = Thread(5, "qemu-system-x86")
    to_private = parse_payload("kvm_vmgexit_msr_protocol_enter", "vcpu 3, ghcb_gpa 0010000123456014", thread, 7)
    assert to_private == Conversion("kvm_vmgexit_msr_protocol_enter", 0x123456000, 0x1000, True,
                                    thread._replace(vcpu=3), 7, announces=True)
    shared = parse_payload("kvm_vmgexit_msr_protocol_enter", "vcpu 0, ghcb_gpa 0020000000000014", thread, None)
    assert shared.gpa == 0 and shared.to_private is False
    assert parse_payload("kvm_vmgexit_msr_protocol_enter", "vcpu 0, ghcb_gpa 0000000000000100", thread, None) == \
        Skipped("SNP MSR-protocol request other than a page-state change")
    with pytest.raises(Malformed, match="unknown page-state operation 3"):
        parse_payload("kvm_vmgexit_msr_protocol_enter", "vcpu 0, ghcb_gpa 0030000000001014", thread, None)
    assert parse_payload("kvm_vmgexit_enter", "vcpu 0, exit_reason 7b, exit_info1 0, exit_info2 0",
                         thread, None) == Skipped("other event")


def test_a_psc_request_and_its_set_attributes_are_one_conversion():
    lines = ["CPU 0/KVM-10 [000] 1.000000: kvm_vmgexit_msr_protocol_enter: vcpu 0, ghcb_gpa 0020000000080014",
             "CPU 0/KVM-10 [000] 1.000010: kvm_vm_set_mem_attributes: 0x00000000000080 -- 0x00000000000081 [0x0]",
             "CPU 0/KVM-10 [000] 1.000020: kvm_vm_set_mem_attributes: 0x00000000000080 -- 0x00000000000081 [0x0]"]
    trace, report = import_trace("trace-cmd", lines)
    assert len(trace.ops) == 2 and report.deduplicated == 1 and report.noop == 1   # the repeat is a no-op


# -- perf script -----------------------------------------------------------------------------------

def test_perf_script_recording():
    trace, report = import_trace("perf-script", DATA / "perf-script-q35-8g.txt")
    assert trace.memory_map.describe() == Q35_8G and trace.vcpus == 2
    assert (report.events, report.conversions, report.deduplicated, report.lost) == (11, 9, 2, False)
    assert report.skipped == {"perf script header": 5}
    assert trace.ops[2] == Op("convert", 0x80000, 0x1000, vcpu=0, to="shared", t=0.103909708)  # nanoseconds
    assert [row["comm"] for row in report.threads] == ["qemu-system-x86", "CPU 0/KVM", "CPU 1/KVM"]
    # The same recording through trace-cmd and perf gives the same ops, bar the lines perf lacks.
    trace_cmd, _ = import_trace("trace-cmd", DATA / "trace-cmd-q35-8g.txt")
    assert [(op.gpa, op.size, op.to, op.vcpu) for op in trace.ops] == \
        [(op.gpa, op.size, op.to, op.vcpu) for op in trace_cmd.ops if op.gpa != 0 or op.size != 0x1000]


def test_perf_script_line_layouts():
    info = "0x00000000000080 -- 0x00000000000081 [0x8]"
    assert perf_line(f"   CPU 0/KVM 4330/4331 [001] 512.104010: kvm:kvm_vm_set_mem_attributes: {info}").thread == \
        Thread(4331, "CPU 0/KVM", 0)                                   # pid/tid: the thread is the tid
    assert perf_line(f"   fc_vcpu 0  599499 512.104010: kvm:kvm_set_vm_mem_attributes: {info}").thread == \
        Thread(599499, "fc_vcpu 0", None)                              # no [cpu]: a per-process recording
    assert perf_line("   perf  1234 [002]  1.0: PERF_RECORD_LOST lost 7") == Dropped(7, "CPU 002")
    assert perf_line("PERF_RECORD_LOST lost 3") == Dropped(3, "the ring buffer")
    with pytest.raises(Malformed, match="not a perf script event line"):
        perf_line(f"kvm:kvm_vm_set_mem_attributes: {info}")


# -- shared pieces ---------------------------------------------------------------------------------

def conversion(gpa, announces=False, tid=None, to_private=True):
    return Conversion("e", gpa, 0x1000, to_private, Thread(tid) if tid is not None else None, None, announces)


def test_dedup_per_thread_and_windowed_without_threads():
    dedup = Deduplicator()
    assert dedup.admit(conversion(0x1000, True, tid=1))
    assert dedup.admit(conversion(0x1000, tid=2))                      # another thread's conversion
    assert not dedup.admit(conversion(0x1000, tid=1)) and dedup.dropped == 1
    assert dedup.admit(conversion(0x1000, tid=1))                      # the request was used up
    assert dedup.admit(conversion(0x2000, True, tid=1)) and dedup.admit(conversion(0x3000, tid=1))
    assert dedup.admit(conversion(0x2000, tid=1))                      # cleared by the other conversion
    for page in range(WINDOW + 1):
        dedup.admit(conversion(page << 12, True))
    assert dedup.admit(conversion(0))                                  # pushed out of the window
    assert not dedup.admit(conversion(WINDOW << 12))


def test_threads_named_vcpus_win_and_others_go_to_vcpu_0():
    threads = ThreadMap()
    assert threads.index(None) == NO_THREAD
    seen = [(1, "qemu-system-x86", None), (2, "CPU 0/KVM", 0), (3, "CPU 2/KVM", 2), (1, "renamed", None)]
    assert [threads.index(Thread(tid, comm, vcpu)) for tid, comm, vcpu in seen] == [0, 1, 2, 0]
    mapping, vcpus = threads.vcpus()
    assert mapping == [0, 0, 2] and vcpus == 3
    assert threads.vcpus(2) == ([0, 0, 0], 2)
    assert threads.rows(mapping)[0] == {"tid": 1, "comm": "renamed", "events": 2, "vcpu": 0}
    many = ThreadMap()
    assert all(many.index(Thread(tid)) == tid for tid in range(MAX_THREADS))
    assert many.index(Thread(MAX_THREADS)) is None and many.index(Thread(5)) == 5


def test_layout_inference():
    assert guest_map(None) == (GuestMemoryMap.flat(2 * MiB), "layout and memory")
    assert guest_map((0x47FE00000, 0x200000))[0] == GuestMemoryMap.from_layout("q35", 16 * GiB)
    assert guest_map((0x1000, 0x1000), memory=64 * MiB) == (GuestMemoryMap.flat(64 * MiB), "layout")
    assert guest_map((0x1000, 0x1000), layout="q35") == (GuestMemoryMap.from_layout("q35", 2 * MiB), "memory")
    assert guest_map((0x100000000, 0x1000), layout="q35")[0].describe() == \
        "q35: [0x0, 0x80000000) [0x100000000, 0x130000000) (2.8 GiB RAM)"        # q35 splits from 2.75 GiB
    assert guest_map(None, 3 * GiB, "q35") == (GuestMemoryMap.from_layout("q35", 3 * GiB), None)


def test_spool_round_trip(tmp_path):
    with Spool(str(tmp_path)) as spool:
        spool.append(1, 0, 1 << 64, True, NO_THREAD, None)             # a size of 2**64 bytes fits
        spool.append(2, 0x1000, 0x2000, False, 3, 0.25)
        assert [tuple(record) for record in spool] == [(1, 0, 1 << 64, True, NO_THREAD, None),
                                                       (2, 0x1000, 0x2000, False, 3, 0.25)]
    assert list(tmp_path.iterdir()) == []                              # anonymous: nothing left behind


def test_import_file_is_atomic_and_reads_compressed_recordings(tmp_path):
    log = tmp_path / "qemu.log.gz"
    with gzip.open(log, "wt") as out:
        out.write("kvm_convert_memory start 0x1000 size 0x1000 private_to_shared\n"
                  "kvm_convert_memory start 0x1000 size 0x1000 shared_to_private\n")
    dest = tmp_path / "t.jsonl"
    report = import_file("qemu-log", log, dest)
    trace = read_trace(dest)
    assert len(trace.ops) == 2 and report.conversions == 2 and trace.name == "qemu.log.gz"
    bad = tmp_path / "bad.log"
    bad.write_text("kvm_convert_memory start 0x1001 size 0x1000 private_to_shared\n")
    with pytest.raises(TraceError):
        import_file("qemu-log", bad, tmp_path / "never.jsonl", strict=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.log", "qemu.log.gz", "t.jsonl"]


# -- robustness ------------------------------------------------------------------------------------

_SAMPLES = [line for name in ("qemu-q35-16g-tid.log", "qemu-q35-16g-iso.log", "trace-cmd-q35-8g.txt",
                              "perf-script-q35-8g.txt") for line in (DATA / name).read_text().splitlines()]


@st.composite
def mangled_lines(draw):
    """A recorded line with a few characters replaced, cut or doubled, or plain noise."""
    if draw(st.booleans()):
        return draw(st.text(max_size=120))
    line = draw(st.sampled_from(_SAMPLES))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.sampled_from(["", "0", "x", " ", "-", ":", "[", "]", "\x00", "9" * 20,
                                                 line[at:at + 8]])) + line[at + draw(st.integers(0, 3)):]
    return line


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(IMPORTERS)), st.lists(mangled_lines(), max_size=12))
def test_any_line_is_read_reported_or_skipped_never_a_crash(source, lines):
    trace, report = import_trace(source, lines)
    trace.validate()
    assert len(trace.ops) == report.conversions
    assert len(report.problems) == min(report.malformed + report.outside + report.dropped_reports, 100)
    assert report.lost == bool(report.problems)
