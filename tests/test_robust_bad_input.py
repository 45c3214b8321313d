"""Bad input from every door (issue 6): the Python API, the PSC doorbell, trace files and the
command line.  Every case must

* fail with a clear error whose message names the field and the value,
* leave the process up (the error is an exception or an exit status, never a crash), and
* leave every piece of state exactly as it was: the attributes, the requests in flight, the
  backings' allocation as the kernel measures it, the engine's counters, its held runs and
  journal (``snapshot``), and the process's fds and threads (``resources``).

The two long-lived machines below carry real state (private and shared runs, held memory,
allocated pages) so that "unchanged" means something.
"""

from __future__ import annotations

import gc
import inspect
import re
import struct
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from privmem import AccessDenied, Busy, InvalidArgument, InvalidState, TraceError
from privmem.attrs import MemoryAttributes
from privmem.backing import PrivateBacking, SharedBacking
from privmem.cli import main as cli_main
from privmem.convert import ConversionEngine, ConversionTracker, make_policy
from privmem.errors import KvmError
from privmem.kvm import uapi
from privmem.units import MiB
from privmem.ops import Op as GuestOp
from privmem.vmm import Machine, firmware, psc
from privmem.vmm.host import HostMachine

from .resources import resources
from privmem.vmm.psc import OP_PRIVATE, OP_SHARED, encode_entry, encode_request
from privmem.workload import read_trace

PAGE = 4096
HOST_MEMORY = 8 * MiB
KVM_MEMORY = 16 * MiB
BASE = 4 * MiB          # workload pages used by the state-building ops (above the 2 MiB reserve)


# ---- the one snapshot helper every robustness test reuses -------------------------------

def snapshot(target) -> dict:
    """All conversion state of a machine (or an engine): attributes, requests in flight, both
    backings' allocated ranges (measured from the kernel), engine counters, held runs and the
    journal length.  Two equal snapshots mean nothing observable changed."""
    engine = getattr(target, "engine", target)
    shared, private = engine.shared, engine.private
    return {
        "attributes": list(engine.store.ranges()),
        "in_flight": engine.tracker.in_flight(),
        "shared_allocated": shared.allocated_ranges(),
        "private_allocated": private.allocated_ranges(),
        "stats": engine.stats.as_dict(),
        "held": engine.held.runs(),
        "journal": None if engine.journal is None else len(engine.journal),
    }


def full_data_checks() -> dict:
    """Machine keyword arguments for byte-exact guest WRITE/VERIFY, for tests whose host side
    reads back every byte a guest wrote (a machine that samples guest data work by default
    takes data_check="full"; one that does not needs nothing)."""
    return {"data_check": "full"} if "data_check" in inspect.signature(Machine).parameters else {}


def journaled_engine(policy: str, memory: int, **kwargs) -> Callable:
    """A Machine(engine=...) factory: a ConversionEngine that keeps its journal."""
    def factory(shared, private, memory_map=None):
        return ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy(policy, memory, **kwargs),
                                shared, private, journal=True, memory_map=memory_map)
    return factory


def _build_state(machine) -> None:
    """Leave private and shared runs, held memory and allocated pages behind."""
    ops = [GuestOp("convert", BASE, 8 * PAGE, 0, to="shared"),
           GuestOp("dma_in", BASE, 8 * PAGE, 0, pattern=0x5A),
           GuestOp("convert", BASE + 2 * PAGE, 2 * PAGE, 0, to="private"),
           GuestOp("write", BASE + 2 * PAGE, 2 * PAGE, 0, view="private", pattern=0x21),
           GuestOp("convert", BASE + 64 * PAGE, 4 * PAGE, 1, to="shared")]
    result = machine.run_ops(ops, timeout=30)
    assert result.data_errors == 0 and result.dma_errors == 0
    engine = machine.engine
    assert engine.held.runs() and len(list(engine.store.ranges())) > 2


@pytest.fixture(scope="module")
def host():
    # budget and max_age large: held runs stay put between the snapshots
    with HostMachine(HOST_MEMORY, 2, engine=None, initial="private") as machine:
        machine.engine = journaled_engine("lazy", HOST_MEMORY, budget=4 * MiB, max_age=3600)(
            machine.shared, machine.private)
        machine.engine.set_initial(0, HOST_MEMORY, True)
        _build_state(machine)
        yield machine


@pytest.fixture(scope="module")
def kvm():
    with Machine(KVM_MEMORY, 2, engine=journaled_engine("lazy", KVM_MEMORY, budget=8 * MiB, max_age=3600)) as m:
        _build_state(m)
        yield m


# ---- 1. the Python API -----------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    env: str                        # "host" or "kvm": the machine whose state must not change
    call: Callable[[Any], Any]
    error: type
    message: str                    # a regex the message must match: the field and its value


def _busy_overlap(m):
    tracker = m.engine.tracker
    held = tracker.request(BASE + 32 * PAGE, 4 * PAGE, True, vcpu=0)
    try:
        tracker.request(BASE + 34 * PAGE, PAGE, False, vcpu=1)
    finally:
        tracker.abort(held)


def _complete_twice(m):
    tracker = m.engine.tracker
    request = tracker.request(BASE + 32 * PAGE, PAGE, True)
    tracker.abort(request)
    tracker.complete(request)


def _abort_twice(m):
    tracker = m.engine.tracker
    request = tracker.request(BASE + 32 * PAGE, PAGE, True)
    tracker.abort(request)
    tracker.abort(request)


def _closed_backing(m):
    backing = SharedBacking.create(16 * PAGE)
    backing.close()
    backing.discard(0, PAGE)


def _fresh_engine_after_launch(what):
    def call(m):
        shared, private = SharedBacking.create(16 * PAGE), PrivateBacking.standin(16 * PAGE)
        with shared, private:
            engine = ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy("eager", 16 * PAGE),
                                      shared, private)
            engine.launch()
            if what == "populate":
                engine.populate(0, PAGE)
            elif what == "set_initial":
                engine.set_initial(0, PAGE, True)
            else:
                engine.launch()
    return call


def _machine(**kwargs):
    return lambda m: Machine(**kwargs).close()


def _host_machine(**kwargs):
    return lambda m: HostMachine(**kwargs).close()


API_CASES = {
    # attribute store (the engine's own store: a failed set must not touch it)
    "store.set misaligned address": Case("host", lambda m: m.engine.store.set(BASE + 1, PAGE, 8),
                                         InvalidArgument, r"address=0x400001: must be 4 KiB aligned"),
    "store.set size 0": Case("host", lambda m: m.engine.store.set(BASE, 0, 8),
                             InvalidArgument, r"size=0x0: must not be 0"),
    "store.set partial page": Case("host", lambda m: m.engine.store.set(BASE, 100, 8),
                                   InvalidArgument, r"size=0x64: must be a multiple of 4 KiB"),
    "store.set unsupported attribute": Case("host", lambda m: m.engine.store.set(BASE, PAGE, 1 << 4),
                                            InvalidArgument, r"attributes=0x10: has bits outside"),
    "store.set flags": Case("host", lambda m: m.engine.store.set(BASE, PAGE, 8, flags=1),
                            InvalidArgument, r"flags=0x1: must be 0"),
    "store.set past 2**64": Case("host", lambda m: m.engine.store.set((1 << 64) - PAGE, 2 * PAGE, 8),
                                 InvalidArgument, r"size=0x2000: address 0xfffffffffffff000 \+ size runs past"),
    "store.set negative address": Case("host", lambda m: m.engine.store.set(-PAGE, PAGE, 8),
                                       InvalidArgument, r"address=-0x1000: must fit in an unsigned 64-bit"),
    "store.set address not an int": Case("host", lambda m: m.engine.store.set("0x1000", PAGE, 8),
                                         InvalidArgument, r"address='0x1000': must be an integer"),
    # tracker
    "tracker.request misaligned size": Case("host", lambda m: m.engine.tracker.request(BASE, PAGE + 1, True),
                                            InvalidArgument, r"size=0x1001: must be a multiple of 4 KiB"),
    "tracker.request overlapping in-flight": Case("host", _busy_overlap, Busy,
                                                  r"\[0x422000, 0x423000\) overlaps request \d+ of vCPU 0 "
                                                  r"\[0x420000, 0x424000\)"),
    "tracker.complete after abort": Case("host", _complete_twice, InvalidState,
                                         r"cannot commit request \d+: it is not in flight"),
    "tracker.abort twice": Case("host", _abort_twice, InvalidState, r"cannot abort request \d+: it is not in flight"),
    # engine
    "engine.convert misaligned gpa": Case("host", lambda m: m.engine.convert(BASE + 512, PAGE, True),
                                          InvalidArgument, r"gpa=0x400200: must be 4 KiB aligned"),
    "engine.convert size 0": Case("host", lambda m: m.engine.convert(BASE, 0, False),
                                  InvalidArgument, r"size=0x0: must be > 0"),
    "engine.convert side not a bool": Case("host", lambda m: m.engine.convert(BASE, PAGE, "yes"),
                                           InvalidArgument, r"to_private='yes': must be True or False"),
    "engine.convert side 1": Case("host", lambda m: m.engine.convert(BASE, PAGE, 1),
                                  InvalidArgument, r"to_private=1: must be True or False"),
    "engine.convert vcpu not an int": Case("host", lambda m: m.engine.convert(BASE, PAGE, True, "0"),
                                           InvalidArgument, r"vcpu='0': must be an integer >= 0"),
    "engine.convert size a float": Case("host", lambda m: m.engine.convert(BASE, 4096.0, True),
                                        InvalidArgument, r"size=4096.0: must be an integer"),
    "engine.populate after launch": Case("host", _fresh_engine_after_launch("populate"), InvalidState,
                                         r"populate is refused after launch"),
    "engine.set_initial after launch": Case("host", _fresh_engine_after_launch("set_initial"), InvalidState,
                                            r"set_initial is refused after launch"),
    "engine.launch twice": Case("host", _fresh_engine_after_launch("launch"), InvalidState,
                                r"launch is refused after launch"),
    "engine.require_shared on private": Case("host", lambda m: m.engine.require_shared(BASE + 2 * PAGE, PAGE),
                                             AccessDenied, r"page 0x402000 is private"),
    # policies
    "make_policy unknown name": Case("host", lambda m: make_policy("sometimes", HOST_MEMORY),
                                     InvalidArgument, r"policy='sometimes': unknown \(choose from never, eager"),
    "make_policy zero budget": Case("host", lambda m: make_policy("lazy", HOST_MEMORY, budget=0),
                                    InvalidArgument, r"budget=0x0: must be positive"),
    "make_policy negative max_age": Case("host", lambda m: make_policy("lazy", HOST_MEMORY, max_age=-1.0),
                                         InvalidArgument, r"max_age=-1.0: must be positive"),
    # backings
    "SharedBacking.create unaligned": Case("host", lambda m: SharedBacking.create(PAGE + 1),
                                           InvalidArgument, r"size=0x1001: must be a positive multiple"),
    "PrivateBacking.standin size 0": Case("host", lambda m: PrivateBacking.standin(0),
                                          InvalidArgument, r"size=0x0: must be a positive multiple"),
    "backing.discard misaligned": Case("host", lambda m: m.shared.discard(BASE + 8, PAGE),
                                       InvalidArgument, r"offset=0x400008: must be page aligned"),
    "backing.discard past the end": Case("host", lambda m: m.shared.discard(HOST_MEMORY - PAGE, 2 * PAGE),
                                         InvalidArgument, r"offset \+ size=0x801000: past the end of the backing"),
    "backing.allocate negative": Case("host", lambda m: m.private.allocate(-PAGE, PAGE),
                                      InvalidArgument, r"offset=-0x1000: must be page aligned and non-negative"),
    "backing.read past the end": Case("host", lambda m: m.shared.read(HOST_MEMORY - 2, 4),
                                      InvalidArgument, r"offset=0x7ffffe: range of 4 bytes is outside"),
    "backing.fill byte 256": Case("host", lambda m: m.shared.fill(BASE, PAGE, 256),
                                  InvalidArgument, r"byte=0x100: must be 0\.\.255"),
    "backing.allocated_ranges past the end": Case("host", lambda m: m.shared.allocated_ranges(0, 2 * HOST_MEMORY),
                                                  InvalidArgument, r"offset \+ size=0x1000000: past the end"),
    "sealed private backing read": Case("host", lambda m: m.private.read(BASE, 1), AccessDenied,
                                        r"memfd-standin backing is sealed \(launched\)"),
    "closed backing discard": Case("host", _closed_backing, InvalidState, r"memfd backing is closed"),
    # HostMachine
    "HostMachine memory not whole pages": Case("host", _host_machine(memory=6000), InvalidArgument,
                                               r"memory=0x1770: must be a positive multiple of 4 KiB"),
    "HostMachine memory above the limit": Case("host", _host_machine(memory="8T"), InvalidArgument,
                                               r"memory=0x80000000000: 8.0 TiB is more than the 4.0 TiB of RAM the "
                                               r"host machine takes"),
    "HostMachine vcpus 0": Case("host", _host_machine(memory="8M", vcpus=0), InvalidArgument,
                                r"vcpus=0: must be in 1\.\.64"),
    "HostMachine unknown policy": Case("host", _host_machine(memory="8M", policy="sometimes"), InvalidArgument,
                                       r"policy='sometimes': unknown"),
    "HostMachine initial": Case("host", _host_machine(memory="8M", initial="maybe"), InvalidArgument,
                                r"initial='maybe': must be 'private' or 'shared'"),
    "HostMachine shared_read past memory": Case("host", lambda m: m.shared_read(HOST_MEMORY - PAGE, 2 * PAGE),
                                                InvalidArgument, r"gpa=0x7ff000: \[0x7ff000, 0x801000\) is not all guest "
                                                r"RAM: 0x800000 is past the last RAM region"),
    "HostMachine shared_write negative": Case("host", lambda m: m.shared_write(-1, b"x"),
                                              InvalidArgument, r"gpa=-0x1: must be a non-negative integer"),
    "HostMachine shared_read private page": Case("host", lambda m: m.shared_read(BASE + 2 * PAGE, 16),
                                                 AccessDenied, r"page 0x402000 is private"),
    "HostMachine run_ops vcpu past vcpus": Case("host", lambda m: m.run_ops([GuestOp("touch", BASE, PAGE, 2,
                                                                                     view="private")]),
                                                InvalidArgument, r"ops\[0\]\.vcpu=2: must be < vcpus \(2\)"),
    "HostMachine run_ops past memory": Case("host", lambda m: m.run_ops([GuestOp("touch", HOST_MEMORY, PAGE, 0,
                                                                                 view="private")]),
                                            InvalidArgument, r"ops\[0\]\.gpa=0x800000: \[0x800000, 0x801000\) is not "
                                            r"all guest RAM"),
    # Machine (real KVM): constructor arguments, device access, ops
    "Machine memory 1Q": Case("kvm", _machine(memory="1Q"), InvalidArgument, r"memory='1Q': not a size"),
    "Machine memory 0": Case("kvm", _machine(memory=0), InvalidArgument, r"memory=0x0: must be > 0"),
    "Machine memory not whole pages": Case("kvm", _machine(memory="5000"), InvalidArgument,
                                           r"memory=0x1388: must be a positive multiple of 4 KiB"),
    "Machine memory above the limit": Case("kvm", _machine(memory="5T"), InvalidArgument,
                                           r"memory=0x50000000000: 5.0 TiB is more than the 4.0 TiB of RAM"),
    "Machine unknown layout": Case("kvm", _machine(memory="8M", layout="pc"), InvalidArgument, r"layout='pc': unknown"),
    "Machine vcpus 0": Case("kvm", _machine(memory="8M", vcpus=0), InvalidArgument, r"vcpus=0: must be in 1\.\.64"),
    "Machine vcpus 65": Case("kvm", _machine(memory="8M", vcpus=65), InvalidArgument,
                             r"vcpus=65: must be in 1\.\.64 \(the machine's limit\)"),
    "Machine initial": Case("kvm", _machine(memory="8M", initial="maybe"), InvalidArgument,
                            r"initial='maybe': must be 'private' or 'shared'"),
    "Machine unknown policy (after the VM exists)": Case("kvm", _machine(memory="8M", policy="sometimes"),
                                                         InvalidArgument, r"policy='sometimes': unknown"),
    "Machine engine factory raising": Case("kvm", _machine(memory="8M", engine=lambda s, p, mm: make_policy("x", 1)),
                                           InvalidArgument, r"policy='x': unknown"),
    "Machine missing kvm device": Case("kvm", _machine(memory="8M", kvm_path="/nonexistent/kvm"), KvmError,
                                       r"ENOENT"),
    "Machine shared_read past memory": Case("kvm", lambda m: m.shared_read(KVM_MEMORY, 1), InvalidArgument,
                                            r"gpa=0x1000000: \[0x1000000, 0x1000001\) is not all guest RAM"),
    "Machine shared_read negative": Case("kvm", lambda m: m.shared_read(-PAGE, 1), InvalidArgument,
                                         r"gpa=-0x1000: must be a non-negative integer"),
    "Machine shared_write across the end": Case("kvm", lambda m: m.shared_write(KVM_MEMORY - 1, b"ab"),
                                                InvalidArgument, r"gpa=0xffffff: \[0xffffff, 0x1000001\) is not all guest RAM"),
    "Machine shared_write private page": Case("kvm", lambda m: m.shared_write(BASE + 2 * PAGE, b"x"),
                                              AccessDenied, r"host access to \[0x402000, 0x40[23]00[01]\) refused: .*0x402000.* private"),
    "Machine run_ops vcpu past vcpus": Case("kvm", lambda m: m.run_ops([GuestOp("touch", BASE, PAGE, 2,
                                                                                view="private")]),
                                            InvalidArgument, r"ops\[0\]\.vcpu=2: must be < vcpus \(2\)"),
    "Machine run_ops in the firmware region": Case("kvm", lambda m: m.run_ops([GuestOp(
        "write", m.layout.gpa, PAGE, 0, view="private", pattern=1)]), InvalidArgument,
        r"ops\[0\]\.gpa=0x7fffffe00000: .* is past the last RAM region"),
    "Machine run_ops past memory": Case("kvm", lambda m: m.run_ops([GuestOp("convert", KVM_MEMORY - PAGE, 2 * PAGE,
                                                                            0, to="shared")]),
                                        InvalidArgument, r"ops\[0\]\.gpa=0xfff000: \[0xfff000, 0x1001000\)"),
}


def _marks(case: Case):
    return [pytest.mark.kvm] if case.env == "kvm" else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(c)) for n, c in API_CASES.items()])
def test_api_bad_input_is_refused_and_changes_nothing(name, request):
    case = API_CASES[name]
    machine = request.getfixturevalue(case.env)
    before, held_before = snapshot(machine), resources()
    with pytest.raises(case.error, match=case.message):
        case.call(machine)
    assert snapshot(machine) == before
    assert resources() == held_before
    machine.engine.check()


def test_engine_convert_past_guest_memory_is_refused_before_commit():
    """engine.convert validates only the range's shape (tracker.request -> check_range), never
    that it lies inside the backings, so a range past guest memory is committed to the store
    and the journal first; eager then fails in backing.discard with InvalidArgument
    ("offset + size"), never then books held bytes that do not exist."""
    for policy in ("eager", "never"):
        shared, private = SharedBacking.create(HOST_MEMORY), PrivateBacking.standin(HOST_MEMORY)
        with shared, private:
            engine = ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy(policy, HOST_MEMORY),
                                      shared, private, journal=True)
            before = snapshot(engine)
            with pytest.raises(InvalidArgument):
                engine.convert(HOST_MEMORY - PAGE, 2 * PAGE, True)
            assert snapshot(engine) == before, policy



# ---- 2. the PSC doorbell (real Machine, exit delivered through kvm_run) ------------------

def ring_psc(machine, vcpu: int, page: bytes) -> tuple[bytes, int]:
    """Write a request into vCPU's comm page (shared memory, as the guest would) and deliver
    the doorbell exit (OUT to PORT_PSC) through kvm_run and the machine's own dispatch."""
    comm = machine.comm[vcpu]
    comm[:len(page)] = page
    run = machine.vcpu(vcpu).kvm_run
    run.exit_reason = uapi.KVM_EXIT_IO
    run.io.direction, run.io.size, run.io.port, run.io.count = uapi.KVM_EXIT_IO_OUT, 4, firmware.PORT_PSC, 1
    run.io.data_offset = 4096
    assert machine.dispatch(vcpu) is False          # the vCPU goes on
    head = bytes(comm[:psc.REQUEST_BYTES])
    return head[:psc.STATUS_OFFSET], struct.unpack_from("<I", head, psc.STATUS_OFFSET)[0]


GFN = BASE >> 12
LIMIT_GFN = KVM_MEMORY >> 12
PSC_CASES = {
    "entry outside guest memory": (encode_request([encode_entry(LIMIT_GFN, OP_PRIVATE)]),
                                   r"psc\.entry\[0\]=0x10000001000000: not guest RAM \(\[0x1000000, 0x1001000\) is "
                                   r"not all guest RAM: 0x1000000 is past the last RAM region"),
    "entry far outside (gfn 2**40-1)": (encode_request([encode_entry((1 << 40) - 1, OP_SHARED)]),
                                        r"psc\.entry\[0\]=0x2ffffffffff000: not guest RAM"),
    "2 MiB entry running past memory": (encode_request([encode_entry(LIMIT_GFN - 512, OP_SHARED, huge=True),
                                                         encode_entry(LIMIT_GFN, OP_SHARED, huge=True)]),
                                        r"psc\.entry\[1\]=0x120000001000000: not guest RAM"),
    "unknown operation 0": (encode_request([encode_entry(GFN, 0)]), r"psc\.entry\[0\]=0x400000: unknown operation 0"),
    "unknown operation 3": (encode_request([encode_entry(GFN, 3)]),
                            r"psc\.entry\[0\]=0x30000000400000: unknown operation 3"),
    "current entry past the end": (encode_request([encode_entry(GFN, OP_PRIVATE)] * 2, cur_entry=3, end_entry=1),
                                   r"psc\.cur_entry=3: beyond end_entry 1"),
    "more than 253 entries": (encode_request([encode_entry(GFN + i, OP_PRIVATE) for i in range(253)], end_entry=253),
                              r"psc\.end_entry=253: more entries than fit \(253\)"),
    "end_entry 0xffff": (encode_request([encode_entry(GFN, OP_PRIVATE)], end_entry=0xFFFF),
                         r"psc\.end_entry=65535: more entries than fit"),
    "overlapping entries": (encode_request([encode_entry(GFN, OP_PRIVATE, huge=True),
                                            encode_entry(GFN + 7, OP_SHARED)]),
                            r"psc\.entry\[1\]=0x407000: overlaps entry 0"),
    "same page twice": (encode_request([encode_entry(GFN + 1, OP_PRIVATE), encode_entry(GFN + 1, OP_PRIVATE)]),
                        r"psc\.entry\[1\]=0x401000: overlaps entry 0"),
    "reserved entry bit 57": (encode_request([encode_entry(GFN, OP_PRIVATE) | 1 << 57]),
                              r"psc\.entry\[0\]=0x210000000400000: reserved bits 57-63 set"),
    "reserved entry bit 63": (encode_request([encode_entry(GFN, OP_SHARED) | 1 << 63]),
                              r"psc\.entry\[0\]=0x8020000000400000: reserved bits 57-63 set"),
    "reserved header field": (encode_request([encode_entry(GFN, OP_PRIVATE)], reserved=0xDEAD),
                              r"psc\.reserved=0xdead: header reserved field must be 0"),
    "misaligned 2 MiB entry": (encode_request([encode_entry(GFN + 1, OP_PRIVATE, huge=True)]),
                               r"psc\.entry\[0\]=0x110000000401000: 2 MiB entry not 2 MiB aligned"),
    "cur_page past the entry": (encode_request([encode_entry(GFN, OP_PRIVATE, cur_page=2)]),
                                r"psc\.entry\[0\]=0x10000000400002: cur_page 2 beyond the entry's 1 pages"),
    "good entries then a bad one": (encode_request([encode_entry(GFN + 16, OP_PRIVATE),
                                                    encode_entry(GFN + 17, OP_PRIVATE), encode_entry(GFN + 18, 9)]),
                                    r"psc\.entry\[2\]=0x90000000412000: unknown operation 9"),
}


@pytest.mark.kvm
@pytest.mark.parametrize("name", list(PSC_CASES))
def test_psc_malformed_request_is_refused_whole(name, kvm):
    page, message = PSC_CASES[name]
    before, held_before = snapshot(kvm), resources()
    errors_before, conversions_before, failures_before = kvm.psc_errors, kvm.conversions, len(kvm.failures)
    head, status = ring_psc(kvm, 1, page)
    assert status == psc.STATUS_INVALID
    assert head == page[:psc.STATUS_OFFSET]                 # no progress written back
    assert kvm.psc_errors == errors_before + 1 and kvm.conversions == conversions_before
    failure = kvm.failures[failures_before]
    assert failure["kind"] == "psc" and failure["vcpu"] == 1
    assert re.search(message, failure["error"]), failure["error"]
    assert snapshot(kvm) == before
    assert resources() == held_before
    # the machine still serves guests afterwards
    result = kvm.run_ops([GuestOp("verify", BASE + 2 * PAGE, 2 * PAGE, 0, view="private", pattern=0x21)],
                         timeout=30)
    assert result.data_errors == 0 and result.psc_errors == 0


# ---- 3. trace files ----------------------------------------------------------------------

HEADER = '{"privmem_trace": 1, "memory": 16777216, "vcpus": 2, "name": "t"}'
TRACE_CASES = {
    "bad JSON": (HEADER + '\n{"op": "convert", "gpa": 4096,,}\n', 2, "json", r"line 2: json='.*': not valid JSON"),
    "header not JSON": ("privmem trace v1\n", 1, "json", r"line 1: json='privmem trace v1': not valid JSON"),
    "no header": ('{"op": "touch", "gpa": 0, "size": 4096, "view": "shared"}\n', 1, "privmem_trace",
                  r"line 1: privmem_trace=None: missing header"),
    "header version 2": ('{"privmem_trace": 2, "memory": 16777216, "vcpus": 1}\n', 1, "privmem_trace",
                         r"line 1: privmem_trace=2: unsupported version"),
    "header memory not a multiple of 4 KiB": ('{"privmem_trace": 1, "memory": 5000, "vcpus": 1}\n', 1, "memory",
                                              r"line 1: memory=5000: not a multiple of 4096"),
    "header vcpus 0": ('{"privmem_trace": 1, "memory": 16777216, "vcpus": 0}\n', 1, "vcpus",
                       r"line 1: vcpus=0: must be in 1\.\.4096"),
    "unknown op": (HEADER + '\n{"op": "flip", "gpa": 4096, "size": 4096}\n', 2, "op",
                   r"line 2: op='flip': unknown op"),
    "missing size": (HEADER + '\n{"op": "convert", "gpa": 4096, "to": "shared"}\n', 2, "size",
                     r"line 2: size=None: missing field"),
    "negative gpa": (HEADER + '\n{"op": "convert", "gpa": -4096, "size": 4096, "to": "shared"}\n', 2, "gpa",
                     r"line 2: gpa=-4096: must not be negative"),
    "negative vcpu": (HEADER + '\n{"op": "convert", "gpa": 4096, "size": 4096, "vcpu": -1, "to": "shared"}\n',
                      2, "vcpu", r"line 2: vcpu=-1: must not be negative"),
    "size past guest memory": (HEADER + '\n\n{"op": "convert", "gpa": 16773120, "size": 8192, "to": "shared"}\n',
                               3, "gpa", r"line 3: gpa=16773120: \[0xfff000, 0x1001000\) is not all guest RAM: "
                               r"0x1000000 is past the last RAM region \[0x0, 0x1000000\)"),
    "header lies about memory": ('{"privmem_trace": 1, "memory": 8388608, "vcpus": 1}\n'
                                 '{"op": "convert", "gpa": 4194304, "size": 4096, "to": "shared"}\n'
                                 '{"op": "touch", "gpa": 12582912, "size": 4096, "view": "private"}\n',
                                 3, "gpa", r"line 3: gpa=12582912: \[0xc00000, 0xc01000\) is not all guest RAM: "
                                 r"0xc00000 is past the last RAM region \[0x0, 0x800000\)"),
    "vcpu past header vcpus": (HEADER + '\n{"op": "touch", "gpa": 4096, "size": 4096, "vcpu": 2, "view": "shared"}\n',
                               2, "vcpu", r"line 2: vcpu=2: must be < vcpus \(2\)"),
    "pattern 256": (HEADER + '\n{"op": "dma_in", "gpa": 4096, "size": 4096, "pattern": 256}\n', 2, "pattern",
                    r"line 2: pattern=256: must be in 0\.\.255"),
    "misaligned size": (HEADER + '\n{"op": "convert", "gpa": 4096, "size": 100, "to": "shared"}\n', 2, "size",
                        r"line 2: size=100: not a multiple of 4096"),
}


@pytest.mark.parametrize("name", list(TRACE_CASES))
def test_bad_trace_file_names_line_field_and_value(name, tmp_path, host):
    text, line, field, message = TRACE_CASES[name]
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    before, held_before = snapshot(host), resources()
    with pytest.raises(TraceError, match=message) as info:
        read_trace(path)
    assert info.value.line == line and info.value.field == f"line {line}: {field}"
    assert snapshot(host) == before
    del info
    gc.collect()
    assert resources() == held_before          # the file is closed (at the latest once the error is gone)


def test_trace_reader_closes_the_file_when_the_header_is_bad(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(TRACE_CASES["header version 2"][0])
    fds = resources()["fds"]
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert resources()["fds"] == fds, f"{info.value} left its file open"


# ---- 4. the command line -----------------------------------------------------------------

CLI_CASES = {
    "unknown policy": (["run", "--backend", "host", "--policy", "sometimes"], 2, r"policy='sometimes': unknown"),
    "unknown workload": (["run", "--backend", "host", "--workload", "fortnite"], 2,
                         r"workload='fortnite': unknown \(choose from boot"),
    "bad size 1Q": (["run", "--backend", "host", "--memory", "1Q"], 2, r"memory='1Q': not a size"),
    "bad size in trace generate": (["trace", "generate", "random", "-o", "/dev/null", "--memory", "12 parsecs"], 2,
                                   r"memory='12 parsecs': not a size"),
    "unknown backend": (["run", "--backend", "qemu"], 2, r"backend='qemu': unknown \(choose from kvm, host\)"),
    "vcpus 0": (["run", "--backend", "host", "--vcpus", "0"], 2, r"vcpus=0: must be at least 1"),
    "vcpus not a number": (["bench", "--vcpus", "two"], 2, r"vcpus='two': not an integer"),
    "missing trace file": (["run", "--backend", "host", "--trace", "/nonexistent/t.jsonl"], 2,
                           r"trace='/nonexistent/t\.jsonl': no such file"),
    "memory too small for the workload": (["run", "--backend", "host", "--workload", "random", "--memory", "2M"], 2,
                                          r"privmem: memory=2.0 MiB: too small for workload 'random'"),
}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_bad_arguments_exit_2_with_the_field_and_value(name, capsys, host):
    argv, code, message = CLI_CASES[name]
    before, held_before = snapshot(host), resources()
    try:
        status = cli_main(argv)
    except SystemExit as exit_info:         # argparse's own exit for a bad argument
        status = exit_info.code
    assert status == code
    captured = capsys.readouterr()
    assert re.search(message, captured.err), captured.err
    assert "Traceback" not in captured.err
    assert snapshot(host) == before
    assert resources() == held_before


def test_cli_bad_trace_file_names_its_line(tmp_path, capsys):
    path = tmp_path / "lying.jsonl"
    path.write_text(TRACE_CASES["header lies about memory"][0])
    assert cli_main(["run", "--backend", "host", "--trace", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"privmem: {path}:3: gpa=12582912: [0xc00000, 0xc01000) is not all guest RAM")


def test_bad_input_matrix_has_at_least_40_cases():
    total = len(API_CASES) + len(PSC_CASES) + len(TRACE_CASES) + len(CLI_CASES) + 1
    assert total >= 40
