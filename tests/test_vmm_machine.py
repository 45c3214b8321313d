"""The machine on real KVM: boot, the trace player, PSC doorbell, host access rules,
exit handlers (including the exits this host never delivers, driven through kvm_run),
error propagation, timeouts and resource hygiene."""

import errno
import gc
import struct
import threading
import time

import pytest

from privmem import AccessDenied, Busy, GuestError, InvalidArgument
from privmem.attrs import MemoryAttributes
from privmem.bench.roundtrip import conversion_cost, exit_roundtrip
from privmem.convert import ConversionEngine, ConversionTracker, make_policy
from privmem.errors import Interrupted
from privmem.kvm import uapi
from privmem.ops import Op
from privmem.units import MiB
from privmem.vmm import Machine, Program, firmware, psc
from privmem.vmm.psc import OP_PRIVATE, OP_SHARED, encode_entry, encode_request

from .resources import resources

pytestmark = pytest.mark.kvm

BASE = 4 * MiB
PAGE = 4096
TIMEOUT = 30


def W(kind, gpa, size, vcpu=0, **kw):
    return Op(kind, gpa, size, vcpu, **kw)


def spinning(m, counts: dict[int, int]) -> Program:
    """A program in which vCPU v takes counts[v] bare exits."""
    program = Program(m.memory_map, m.vcpus)
    for vcpu, count in counts.items():
        program.add_exits(vcpu, count)
    return program


class FlakyEngine(ConversionEngine):
    """Fault injection: the first ``busy`` conversions raise Busy; ``boom`` raises in convert."""

    def __init__(self, shared, private, memory_map, busy=0, boom=None):
        super().__init__(ConversionTracker(MemoryAttributes()), make_policy("never", memory_map.ram_bytes), shared,
                         private, memory_map=memory_map)
        self.busy, self.boom = busy, boom

    def convert_range(self, where, to_private, vcpu=0):
        if self.boom is not None:
            raise self.boom
        if self.busy > 0:
            self.busy -= 1
            raise Busy("injected")
        return super().convert_range(where, to_private, vcpu)


@pytest.mark.parametrize("data_check", ["sampled", "full"])
def test_ops_roundtrip_and_data_errors(data_check):
    with Machine("16M", 1, data_check=data_check) as m:
        assert m.shared_bit == 1 << (m.gpa_width - 1) == 1 << 47
        assert m.store.has(0, 16 * MiB, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)   # initial="private": all RAM
        r = m.run_ops([
            W("write", BASE, 2 * PAGE, view="private", pattern=0x11),
            W("verify", BASE, 2 * PAGE, view="private", pattern=0x11),
            W("verify", BASE, 2 * PAGE, view="private", pattern=0x12),      # data error, guest goes on
            W("touch", BASE, 4 * MiB, view="private"),
            W("convert", BASE, 4 * MiB, to="shared"),
            W("write", BASE, 2 * PAGE, view="shared", pattern=0x33),
            W("dma_out", BASE, 2 * PAGE, pattern=0x33),
            W("dma_in", BASE + PAGE, PAGE, pattern=0x44),
            W("verify", BASE + PAGE, PAGE, view="shared", pattern=0x44),
            W("dma_out", BASE, PAGE, pattern=0x99),                           # device-side data error
        ], timeout=TIMEOUT)
        assert r.data_errors == 2 and m.data_errors == 2
        verify_fail, dma_fail = r.failures
        assert verify_fail == dict(vcpu=0, kind="verify", gpa=BASE, view="private", expected=0x12,
                                   actual=0x11, mismatched_words=2 * (PAGE // 8 if data_check == "full" else 2))
        assert dma_fail["kind"] == "dma_out" and dma_fail["expected"] == 0x99 and dma_fail["actual"] == 0x33
        assert r.conversions == 1 and r.pages_converted == 1024 and r.psc_requests == 1
        assert r.exits == r.exits_by_reason["io"] and m.exits >= r.exits
        written = m.shared_read(BASE, PAGE)
        if data_check == "full":
            assert written == b"\x33" * PAGE
        else:                               # the first and the last qword of the page
            assert written == b"\x33" * 8 + bytes(PAGE - 16) + b"\x33" * 8
        assert m.shared_read(BASE + PAGE, PAGE) == b"\x44" * PAGE
        assert m.store.has(BASE, 4 * MiB, 0)


def test_shared_access_refused_on_private_pages():
    with Machine("16M", 1, initial="shared") as m:
        m.shared_write(BASE, b"abc")
        assert m.shared_read(BASE, 3) == b"abc"
        m.run_ops([W("convert", BASE + PAGE, PAGE, to="private")], timeout=TIMEOUT)
        for gpa, n in ((BASE + PAGE, 1), (BASE + PAGE - 1, 2), (BASE, 2 * PAGE), (BASE + 2 * PAGE - 1, 1)):
            with pytest.raises(AccessDenied):
                m.shared_read(gpa, n)
            with pytest.raises(AccessDenied):
                m.shared_write(gpa, b"x" * n)
        assert m.shared_read(BASE + PAGE - 1, 1) == b"\0"        # the neighbour stays readable
        assert m.shared_read(BASE + 2 * PAGE, 1) == b"\0"
        with pytest.raises(InvalidArgument, match="not all guest RAM"):
            m.shared_read(m.memory - 1, 2)
        with pytest.raises(InvalidArgument, match="not all guest RAM"):     # the firmware is not RAM
            m.shared_read(m.layout.gpa, 1)
        # a DMA from the guest on a private page is refused, counted, and the guest goes on
        r = m.run_ops([W("dma_in", BASE + PAGE, PAGE, pattern=1), W("dma_out", BASE + PAGE, PAGE, pattern=1),
                       W("dma_in", BASE, PAGE, pattern=7)], timeout=TIMEOUT)
        assert r.dma_errors == 2 and m.shared_read(BASE, PAGE) == b"\7" * PAGE


def test_psc_2m_entries_and_busy_retry():
    holder = {}

    def factory(shared, private, memory_map):
        holder["engine"] = FlakyEngine(shared, private, memory_map, busy=3)
        return holder["engine"]

    with Machine("32M", 1, engine=factory, initial="shared") as m:
        # [BASE + 4K, BASE + 8M + 8K): 4K entries up to the 2M boundary, 2M entries, then 4K
        gpa, size = BASE + PAGE, 8 * MiB + PAGE
        r = m.run_ops([W("convert", gpa, size, to="private")], timeout=TIMEOUT)
        assert r.psc_retries == 3 and r.psc_errors == 0
        assert m.store.has(gpa, size, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
        assert m.store.has(BASE, PAGE, 0) and m.store.has(gpa + size, PAGE, 0)
        # 511 + 3 + 2 = 516 entries -> 3 requests; adjacent same-op entries merged per request
        assert r.psc_requests == 3 + 3 and r.conversions == 3


def _ring_psc(m, vcpu, page_bytes):
    """Put a request in vCPU's comm page and deliver a PSC doorbell exit through kvm_run."""
    comm = m.comm[vcpu]
    comm[:len(page_bytes)] = page_bytes
    run = m.vcpu(vcpu).kvm_run
    run.exit_reason = uapi.KVM_EXIT_IO
    run.io.direction, run.io.size, run.io.port, run.io.count = uapi.KVM_EXIT_IO_OUT, 4, firmware.PORT_PSC, 1
    run.io.data_offset = 4096
    assert m.dispatch(vcpu) is False
    head = bytes(comm[:psc.REQUEST_BYTES])
    return head[:psc.STATUS_OFFSET], struct.unpack_from("<I", head, psc.STATUS_OFFSET)[0]


MEM = 16 * MiB
MALFORMED = {
    "gfn outside memory": encode_request([encode_entry(MEM >> 12, OP_PRIVATE)]),
    "2M unaligned": encode_request([encode_entry((BASE >> 12) + 1, OP_PRIVATE, huge=True)]),
    "2M past memory": encode_request([encode_entry((MEM >> 12) - 256, OP_PRIVATE, huge=True)]),
    "unknown op": encode_request([encode_entry(BASE >> 12, 5)]),
    "reserved bits": encode_request([encode_entry(BASE >> 12, OP_PRIVATE) | 1 << 60]),
    "cur_entry > end_entry": encode_request([encode_entry(BASE >> 12, OP_PRIVATE)] * 2, cur_entry=2, end_entry=1),
    "end_entry too big": encode_request([encode_entry(BASE >> 12, OP_PRIVATE)], end_entry=253),
    "overlap": encode_request([encode_entry(BASE >> 12, OP_PRIVATE, huge=True),
                               encode_entry((BASE >> 12) + 5, OP_SHARED)]),
    "good then bad": encode_request([encode_entry(BASE >> 12, OP_PRIVATE), encode_entry(BASE >> 12 + 1, 0)]),
}


def test_psc_malformed_requests_from_the_guest_page():
    with Machine(MEM, 1, initial="shared") as m:
        before = list(m.store.ranges())
        for count, (name, page) in enumerate(MALFORMED.items(), 1):
            head, status = _ring_psc(m, 0, page)
            assert status == psc.STATUS_INVALID, name
            assert head == page[:psc.STATUS_OFFSET], name            # nothing written back
            assert m.psc_errors == count, name
            assert list(m.store.ranges()) == before, name            # state unchanged
        assert m.conversions == 0
        # a good request through the same path works and reports progress
        head, status = _ring_psc(m, 0, encode_request([encode_entry(BASE >> 12, OP_PRIVATE),
                                                       encode_entry((BASE >> 12) + 1, OP_PRIVATE)]))
        assert status == psc.STATUS_OK and struct.unpack_from("<H", head)[0] == 2
        assert m.store.has(BASE, 2 * PAGE, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
        assert m.conversions == 1


def test_hypercall_map_gpa_range_handler():
    with Machine(MEM, 1, initial="shared") as m:
        hc = m.vcpu(0).kvm_run.hypercall

        def call(nr, gpa, npages, attrs):
            run = m.vcpu(0).kvm_run
            run.exit_reason = uapi.KVM_EXIT_HYPERCALL
            hc.nr, hc.args[0], hc.args[1], hc.args[2], hc.ret = nr, gpa, npages, attrs, 0
            assert m.dispatch(0) is False
            return hc.ret - (1 << 64) if hc.ret >> 63 else hc.ret

        enc = uapi.KVM_MAP_GPA_RANGE_ENCRYPTED
        assert call(12, BASE, 512, enc | uapi.KVM_MAP_GPA_RANGE_PAGE_SZ_2M) == 0
        assert m.store.has(BASE, 2 * MiB, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)
        assert call(12, BASE + PAGE, 1, 0) == 0
        assert m.store.has(BASE + PAGE, PAGE, 0) and m.store.has(BASE, PAGE, 8)
        assert call(12, BASE + 1, 1, enc) == -uapi.KVM_EINVAL
        assert call(12, BASE, 0, enc) == -uapi.KVM_EINVAL
        assert call(12, MEM - PAGE, 2, enc) == -uapi.KVM_EINVAL
        assert call(11, BASE, 1, enc) == -uapi.KVM_ENOSYS
        assert m.exit_counts["hypercall"] == 6 and m.conversions == 2


def test_hypercall_busy_answers_eagain():
    with Machine(MEM, 1, engine=lambda s, p, mm: FlakyEngine(s, p, mm, busy=1), initial="shared") as m:
        run = m.vcpu(0).kvm_run
        run.exit_reason = uapi.KVM_EXIT_HYPERCALL
        run.hypercall.nr, run.hypercall.args[0], run.hypercall.args[1], run.hypercall.args[2] = 12, BASE, 1, 0x10
        m.dispatch(0)
        assert run.hypercall.ret == (-errno.EAGAIN) & ((1 << 64) - 1)
        m.dispatch(0)
        assert run.hypercall.ret == 0 and m.store.has(BASE, PAGE, 8)


def test_memory_fault_handler():
    with Machine(MEM, 1, initial="shared") as m:
        run = m.vcpu(0).kvm_run

        def fault(flags, gpa, size=PAGE):
            run.exit_reason = uapi.KVM_EXIT_MEMORY_FAULT
            run.memory_fault.flags, run.memory_fault.gpa, run.memory_fault.size = flags, gpa, size
            return m.dispatch(0)

        assert fault(uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE, BASE) is False
        assert m.store.has(BASE, PAGE, 8)
        assert fault(0, BASE) is False
        assert m.store.has(BASE, PAGE, 0)
        assert fault(uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE, (BASE + PAGE) | m.shared_bit) is False   # alias address
        assert m.store.has(BASE + PAGE, PAGE, 8)
        with pytest.raises(GuestError, match="outside guest RAM"):
            fault(0, MEM)
        with pytest.raises(GuestError, match="repeated"):
            for _ in range(2000):
                fault(uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE, BASE + 2 * PAGE)
        assert m.exit_counts["memory_fault"] >= 1000


def test_fatal_exits_raise_guest_error_with_registers():
    with Machine(MEM, 1) as m:
        run = m.vcpu(0).kvm_run
        for reason, text in ((uapi.KVM_EXIT_SHUTDOWN, "shut down"), (uapi.KVM_EXIT_FAIL_ENTRY, "entry failed"),
                             (uapi.KVM_EXIT_INTERNAL_ERROR, "internal error"), (77, "unhandled exit")):
            run.exit_reason = reason
            with pytest.raises(GuestError, match=text) as info:
                m.dispatch(0)
            assert "rip" in info.value.registers


def test_handler_exception_stops_every_vcpu_and_is_reraised():
    boom = RuntimeError("engine exploded")
    baseline = threading.active_count()
    with Machine(MEM, 3, engine=lambda s, p, mm: FlakyEngine(s, p, mm, boom=boom)) as m:
        program = spinning(m, {1: 10 ** 9, 2: 10 ** 9})
        program.extend([W("convert", BASE, PAGE, vcpu=0, to="shared")])
        start = time.monotonic()
        with pytest.raises(RuntimeError, match="exploded"):
            m.run_ops(program, timeout=TIMEOUT)
        assert time.monotonic() - start < 5
        assert threading.active_count() == baseline
        # the machine is still usable afterwards
        r = m.run_ops([W("write", BASE, PAGE, view="private", pattern=3)], timeout=TIMEOUT)
        assert r.data_errors == 0


def test_timeout_kicks_a_guest_spinning_in_the_kernel():
    """Both vCPUs scan memory for seconds without a single exit: only the kick (immediate_exit
    plus a signal) gets their threads out of KVM_RUN."""
    baseline = threading.active_count()
    with Machine(MEM, 2) as m:
        spin = [W("verify", BASE, 8 * MiB, vcpu=v, view="private", pattern=0) for v in (0, 1) for _ in range(2000)]
        start = time.monotonic()
        with pytest.raises(Interrupted, match="timed out") as info:
            m.run_ops(spin, timeout=0.3)
        assert info.value.reason == "timeout"
        assert time.monotonic() - start < 3
        assert threading.active_count() == baseline
        assert m.exits < 10                      # it really was spinning in the guest
        r = m.run_ops([W("verify", BASE, PAGE, view="private", pattern=0)], timeout=TIMEOUT)
        assert r.data_errors == 0


def test_exit_roundtrip_measurement():
    with Machine(MEM, 1) as m:
        per_exit = exit_roundtrip(m, 2000)
        assert 0 < per_exit < 1e-3
        assert m.exit_counts["io"] >= 2000


def test_twenty_machines_leak_nothing():
    with Machine(MEM, 2) as m:            # warm up: imports, signal handler, libc
        m.run_ops([W("write", BASE, PAGE, view="private", pattern=1)], timeout=TIMEOUT)
    before = resources()
    for i in range(20):
        with Machine(MEM, 2) as m:
            m.run_ops([W("convert", BASE, PAGE, vcpu=i % 2, to="shared"),
                       W("write", BASE + PAGE, PAGE, vcpu=1 - i % 2, view="private", pattern=i)],
                      timeout=TIMEOUT)
        m.close()                          # idempotent
    machine_without_context = Machine(MEM, 1)
    machine_without_context.close()
    forgotten = Machine(MEM, 2)             # never closed: weakref.finalize fallbacks release it
    forgotten.run_ops([W("write", BASE, PAGE, view="private", pattern=1)], timeout=TIMEOUT)
    del forgotten
    gc.collect()
    assert resources() == before


def test_more_ops_than_a_ring_holds_stream_through_refills():
    with Machine(MEM, 4) as m:
        n = 5 * firmware.RING_HALF_RECORDS
        r = m.run_ops([W("touch", BASE, PAGE, vcpu=1, view="private")] * n +
                      [W("verify", BASE, PAGE, vcpu=3, view="private", pattern=0)], timeout=TIMEOUT)
        assert r.ops == n + 1 and r.data_errors == 0
        assert m.stats[1].refills == n // (firmware.RING_HALF_RECORDS - 1)
        assert r.exits_by_reason["io"] == 4 + m.stats[1].refills      # one DONE per vCPU, plus the refills


def test_private_view_lands_in_guest_memfd_and_eager_discard_zeroes_it():
    with Machine(MEM, 1, policy="eager") as m:
        assert m.private.kind == "guest_memfd" and m.private.sealed is False
        before = m.private.allocated_bytes()
        r = m.run_ops([W("write", BASE, 16 * PAGE, view="private", pattern=0x22)], timeout=TIMEOUT)
        assert m.private.sealed
        assert m.private.allocated_bytes() >= before + 16 * PAGE      # measured from the kernel
        assert m.shared.read(BASE, 16 * PAGE) == bytes(16 * PAGE)     # nothing reached the memfd
        with pytest.raises(AccessDenied):
            m.private.read(BASE, 1)                                    # sealed at launch
        r = m.run_ops([W("convert", BASE, 16 * PAGE, to="shared"),    # eager: punch guest_memfd
                       W("convert", BASE, 16 * PAGE, to="private"),
                       W("verify", BASE, 16 * PAGE, view="private", pattern=0)], timeout=TIMEOUT)
        assert r.data_errors == 0 and r.conversions == 2
        assert m.engine.stats.discards >= 2


def test_sampled_checks_see_the_first_and_last_qword_of_every_page():
    """Sampled verify (the default) catches a wrong or zero sample byte and names it; a byte
    outside the sample is seen only with data_check="full".  DMA_OUT checks the same sample."""
    with Machine(MEM, 1, initial="shared") as m:
        assert m.data_check == "sampled"
        r = m.run_ops([W("write", BASE, 4 * PAGE, view="shared", pattern=0x5C)], timeout=TIMEOUT)
        for page in range(4):          # exactly the sample bytes were written
            assert m.shared_read(BASE + page * PAGE, PAGE) == b"\x5c" * 8 + bytes(PAGE - 16) + b"\x5c" * 8
        m.shared_write(BASE + 2 * PAGE + PAGE - 1, b"\0")          # last byte of page 2
        m.shared_write(BASE + 3 * PAGE + 5, b"\x77")               # inside page 3's first qword
        m.shared_write(BASE + PAGE + 2048, b"\x01")                # page 1, outside the sample
        r = m.run_ops([W("verify", BASE, 4 * PAGE, view="shared", pattern=0x5C),
                       W("dma_out", BASE, 4 * PAGE, pattern=0x5C)], timeout=TIMEOUT)
        verify, dma = r.failures
        assert verify == dict(vcpu=0, kind="verify", gpa=BASE + 3 * PAGE - 1, view="shared", expected=0x5C,
                              actual=0, mismatched_words=2)                    # two differing qwords
        assert dma == dict(vcpu=0, kind="dma_out", gpa=BASE + 3 * PAGE - 1, expected=0x5C, actual=0,
                           mismatched_bytes=2)
        m.data_check = "full"
        r = m.run_ops([W("dma_in", BASE, PAGE, pattern=3), W("verify", BASE, 2 * PAGE, view="shared", pattern=3),
                       W("dma_out", BASE, 2 * PAGE, pattern=3)], timeout=TIMEOUT)
        verify, dma = r.failures
        assert verify["gpa"] == BASE + PAGE and verify["mismatched_words"] == PAGE // 8
        assert dma["gpa"] == BASE + PAGE and dma["mismatched_bytes"] == PAGE
        with pytest.raises(InvalidArgument, match="data_check"):
            m.data_check = "most"
    with pytest.raises(InvalidArgument, match="data_check"):
        Machine(MEM, 1, data_check="every other byte")


def test_sampled_verify_sees_a_discarded_page():
    with Machine(MEM, 1, policy="eager") as m:
        r = m.run_ops([W("write", BASE, 2 * PAGE, view="private", pattern=0x42),
                       W("convert", BASE + PAGE, PAGE, to="shared"),      # eager: the private page is punched
                       W("convert", BASE + PAGE, PAGE, to="private"),
                       W("verify", BASE, 2 * PAGE, view="private", pattern=0x42)], timeout=TIMEOUT)
        assert r.data_errors == 1 and r.conversions == 2
        assert r.failures[0]["gpa"] == BASE + PAGE and r.failures[0]["actual"] == 0
        assert r.failures[0]["mismatched_words"] == 2


@pytest.mark.parametrize("policy", ["never", "eager"])
def test_measure_conversion_cost(policy):
    with Machine(MEM, 1, policy=policy) as m:
        assert m.psc_handler_ns == 0
        cost = conversion_cost(m, 400)
        assert cost["conversions"] == 400 and cost["policy"] == policy
        assert 0 < cost["exit_roundtrip_us"] < 1000 and 0 < cost["vmm_us_per_conversion"] < 1000
        assert cost["conversion_roundtrip_us"] > cost["vmm_us_per_conversion"]
        assert cost["ratio"] == pytest.approx(cost["vmm_us_per_conversion"] / cost["exit_roundtrip_us"])
        assert m.psc_handler_ns >= 400 * cost["vmm_us_per_conversion"] * 1e3
        assert m.store.has(0, PAGE, uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE)   # flipped back
        with pytest.raises(InvalidArgument):
            conversion_cost(m, 1)


def test_shared_matches_follows_data_check():
    with Machine(MEM, 1, initial="shared") as m:
        m.run_ops([W("write", BASE, 2 * PAGE, view="shared", pattern=9)], timeout=TIMEOUT)
        assert m.shared_matches(BASE, 2 * PAGE, 9) and not m.shared_matches(BASE, 2 * PAGE, 8)
        assert m.shared_matches(BASE, 8, 9) and not m.shared_matches(BASE, 16, 9)   # partial: every byte
        m.data_check = "full"
        assert not m.shared_matches(BASE, 2 * PAGE, 9)
        with pytest.raises(InvalidArgument, match="pattern"):
            m.shared_matches(BASE, PAGE, 256)
        with pytest.raises(AccessDenied):
            m.run_ops([W("convert", BASE, PAGE, to="private")], timeout=TIMEOUT)
            m.shared_matches(BASE, PAGE, 0)
