"""The machine: one KVM VM with guest_memfd private memory, a shared alias, vCPU threads,
an exit loop, the PSC doorbell and the trace player.

Memory (docs/design.md, "vmm/"):

* private: ONE guest_memfd of ``memory`` bytes created with MMAP | INIT_SHARED, bound with
  KVM_SET_USER_MEMORY_REGION2 (KVM_MEM_GUEST_MEMFD) at GPA 0, slot 0.  With FLAG_MMAP the
  slot is guest_memfd-only, so every guest access to GPA P is served from it (the default VM
  type has no PRIVATE attribute; a flags-0 guest_memfd would not be used).  The VMM writes it
  only before launch (the player code); ``launch`` seals it.
* shared: one memfd mapped MAP_SHARED, bound as slot 1 at ``shared_bit`` (the smallest power
  of two >= memory), so the guest reaches the shared view of page P at P | shared_bit, and
  the host (device) reaches it through the mapping.  ``shared_read``/``shared_write`` refuse
  pages the attribute store says are private.

Conversion state lives in the engine's store (``privmem.convert``); where the host has
KVM_CAP_MEMORY_ATTRIBUTES, KVM_SET_MEMORY_ATTRIBUTES is issued as a commit hook.  The engine
is thread-safe and owns the one rule for host access (``engine.check_device_access``): the machine
takes no lock of its own around conversions or device accesses.

Guest data work is sampled (``data_check``, layout.py): on this host the guest is emulated
(~0.6-1.7 µs per instruction), so the player's WRITE / VERIFY touch the first and the last
qword of each page unless ``data_check="full"``.  Device work is host work: DMA_IN writes
every byte; DMA_OUT checks every byte under "full" and every byte of the sample under
"sampled" (the only bytes a sampled guest WRITE defines; a guest WRITE of every byte of a
bounce buffer costs ~400 µs per page here).

The PSC doorbell is the hot path: the handler works on a memoryview of the vCPU's comm page
(no copies), takes ``psc.serve_in_place``'s short path for one-entry requests, and its time
is measured (``psc_handler_ns``, ``measure_conversion_cost``).

Threads: one per vCPU while ``run_ops`` runs (KVM_RUN releases the GIL).  An exception in a
handler is recorded, every vCPU is kicked out of KVM_RUN (immediate_exit + signal), all are
joined, and the exception is re-raised to the caller of ``run_ops``.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time

from ..errors import AccessDenied, Busy, GuestError, InvalidArgument, InvalidState, Unsupported
from ..kvm import Kvm, uapi
from ..kvm.kick import ensure_kick_handler, kick
from ..kvm.slotmap import SlotMapping
from ..kvm.system import DEV_KVM
from ..units import GiB, PAGE_SHIFT, PAGE_SIZE, HUGE_PAGE_SIZE, parse_size
from ..convert.drainer import Drainer
from . import layout, program, psc
from .guest import load as load_guest
from .result import OpsResult

MAX_MEMORY = 2 * GiB
MIN_MEMORY = layout.RESERVED_BYTES + HUGE_PAGE_SIZE
SLOT_PRIVATE, SLOT_SHARED = 0, 1
ATTR_PRIVATE = uapi.KVM_MEMORY_ATTRIBUTE_PRIVATE
MAX_FAULT_REPEATS = 1000
MAX_FAILURES = 100
_MASK64 = (1 << 64) - 1
_EXIT_NAMES = uapi.EXIT_REASON_NAMES
_MAILBOX_UNPACK = layout.MAILBOX_FORMAT.unpack_from


def _backing_classes():
    """(SharedBacking, PrivateBacking) from privmem.backing (imported late: a separate layer)."""
    from ..backing import PrivateBacking, SharedBacking
    return SharedBacking, PrivateBacking


_SAMPLE_QWORDS = PAGE_SIZE // 8


def _sample_mismatch(data: bytes, pattern: int) -> tuple[int, int, int] | None:
    """None if every sampled byte of the pages in ``data`` (first and last qword of each page)
    is ``pattern``; else (offset of the first differing byte, its value, differing bytes)."""
    qwords = memoryview(data).cast("Q")
    want = bytes((pattern,)) * (8 * (len(data) // PAGE_SIZE))
    if qwords[::_SAMPLE_QWORDS].tobytes() == want and qwords[_SAMPLE_QWORDS - 1::_SAMPLE_QWORDS].tobytes() == want:
        return None
    offsets = [page + start + i for page in range(0, len(data), PAGE_SIZE)
               for start, size in layout.SAMPLE_OFFSETS for i in range(size)]
    wrong = [offset for offset in offsets if data[offset] != pattern]
    return wrong[0], data[wrong[0]], len(wrong)


def _flat_segment(seg, selector: int, type_: int) -> None:
    seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, selector, type_
    seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g, seg.avl, seg.unusable = 1, 0, 1, 1, 0, 1, 0, 0


class _VcpuStats:
    """Per-vCPU counters: each is written only by its vCPU's thread (no locks on the hot path)."""

    __slots__ = ("exits", "conversions", "pages_converted", "psc_requests", "psc_errors", "psc_retries",
                 "data_errors", "dma_errors", "unhandled_io", "mmio", "done", "last_fault", "fault_repeats",
                 "psc_ns")

    def __init__(self):
        self.exits = [0] * 256
        self.psc_ns = 0                 # time spent handling PSC exits (perf_counter_ns)
        self.conversions = self.pages_converted = self.psc_requests = self.psc_errors = 0
        self.psc_retries = self.data_errors = self.dma_errors = self.unhandled_io = self.mmio = 0
        self.done = False
        self.last_fault = None
        self.fault_repeats = 0


_COUNTERS = ("conversions", "pages_converted", "psc_requests", "psc_errors", "psc_retries", "data_errors",
             "dma_errors", "unhandled_io", "mmio")


class Machine:
    """``Machine(memory, vcpus=1, engine=None, policy="never", initial="private", data_check="sampled")``.

    ``memory``: bytes or a size string, a multiple of 2 MiB in [4 MiB, 2 GiB].
    ``engine``: None (a ``ConversionEngine`` with ``policy`` is built), an engine object, or a
    factory ``engine(shared_backing, private_backing) -> engine``.
    ``initial``: the state of workload memory ``[reserved_bytes, memory)`` at launch.
    ``data_check``: how the guest player writes and verifies data: "sampled" (default: the
    first and the last qword of every 4 KiB page, ``layout.SAMPLE_OFFSETS``) or "full" (every
    byte).  Sampling exists because this host emulates the guest at ~0.6-1.7 µs per
    instruction (``rep stos`` ~0.1 µs per byte): full checks would drown the conversion,
    discard and re-fault costs the machine measures, while a sample still tells a page with
    the pattern from a discarded (zero) page or one with another pattern.  A sampled verify
    failure counts differing sampled dwords in ``mismatched_words``.  The device side is host
    work: DMA_IN writes every byte; DMA_OUT compares every byte ("full") or every byte of
    each page's sample ("sampled": what a sampled guest WRITE defines).  May be changed
    between runs.
    Owns every fd, mapping and thread; a context manager; ``close()`` is idempotent.
    """

    def __init__(self, memory: int | str = "64M", vcpus: int = 1, engine=None, policy: str = "never", *,
                 initial: str = "private", kvm_path: str = DEV_KVM, data_check: str = "sampled"):
        memory = parse_size(memory, "memory")
        if memory > MAX_MEMORY:
            raise InvalidArgument("memory", memory, f"above {MAX_MEMORY:#x}: the 32-bit player reaches the "
                                  "shared alias only below 4 GiB")
        if memory < MIN_MEMORY or memory % HUGE_PAGE_SIZE:
            raise InvalidArgument("memory", memory, f"must be a multiple of 2 MiB, at least {MIN_MEMORY:#x}")
        if not isinstance(vcpus, int) or not 1 <= vcpus <= layout.MAX_VCPUS:
            raise InvalidArgument("vcpus", vcpus, f"must be in 1..{layout.MAX_VCPUS}", hex_value=False)
        if initial not in ("private", "shared"):
            raise InvalidArgument("initial", initial, "must be 'private' or 'shared'", hex_value=False)
        self._data_check = program.check_data_check(data_check)
        self.memory = memory
        self.vcpus = vcpus
        self.shared_bit = layout.shared_bit_for(memory)
        self.reserved_bytes = layout.RESERVED_BYTES
        self.launched = False
        self._closed = False
        self._kvm = self._vm = self._slot_map = None
        self._vcpus: list = []
        self.shared = self.private = None
        self.engine = None
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._comm: list[memoryview] = []       # each vCPU's comm page, zero-copy (released at close)
        self._in_loop = [False] * vcpus
        self._stopping = False
        self._running = False
        self._error: BaseException | None = None
        self._stats = [_VcpuStats() for _ in range(vcpus)]
        self.failures: list[dict] = []
        try:
            self._build(engine, policy, initial, kvm_path)
        except BaseException:
            self.close()
            raise

    # -- construction -----------------------------------------------------------------

    def _build(self, engine, policy: str, initial: str, kvm_path: str) -> None:
        ensure_kick_handler()
        self._kvm = Kvm(kvm_path)
        vm = self._vm = self._kvm.create_vm(uapi.KVM_X86_DEFAULT_VM)
        if not vm.check_extension(uapi.KVM_CAP_USER_MEMORY2):
            raise Unsupported("KVM_CAP_USER_MEMORY2 is missing: cannot bind guest_memfd")
        gmem_flags = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
        if vm.check_extension(uapi.KVM_CAP_GUEST_MEMFD_FLAGS) & gmem_flags != gmem_flags:
            raise Unsupported("guest_memfd flags MMAP | INIT_SHARED are not supported by this host")
        shared_cls, private_cls = _backing_classes()
        gmem = vm.create_guest_memfd(self.memory, gmem_flags)
        try:
            self.private = private_cls.from_guest_memfd(gmem, self.memory, mmap_flag=True)
        except BaseException:
            os.close(gmem)
            raise
        self.shared = shared_cls.create(self.memory)
        # KVM on this host reaches a guest_memfd-only slot through userspace_addr (kvm/slotmap.py):
        # give it a mapping of its own that sealing the private backing does not revoke.
        self._slot_map = SlotMapping(self.private.fd, self.memory)
        vm.set_user_memory_region2(SLOT_PRIVATE, uapi.KVM_MEM_GUEST_MEMFD, 0, self.memory,
                                   self._slot_map.addr, self.private.fd, 0)
        vm.set_user_memory_region2(SLOT_SHARED, 0, self.shared_bit, self.memory, self.shared.hva)
        self.has_memory_attributes = bool(vm.check_extension(uapi.KVM_CAP_MEMORY_ATTRIBUTES) & ATTR_PRIVATE)

        self.engine = self._make_engine(engine, policy)
        self.store = getattr(self.engine, "store", None) or self.engine.tracker.store
        if self.has_memory_attributes and hasattr(self.engine, "commit_hooks"):
            self.engine.commit_hooks.append(self._set_attributes_hook)

        for index in range(self.vcpus):
            vcpu = vm.create_vcpu(index)
            self._vcpus.append(vcpu)
            sregs = vcpu.get_sregs()
            for name in ("ds", "es", "fs", "gs", "ss"):
                _flat_segment(getattr(sregs, name), layout.DATA_SELECTOR, 3)
            _flat_segment(sregs.cs, layout.CODE_SELECTOR, 11)
            sregs.cr0 = (sregs.cr0 | uapi.X86_CR0_PE) & ~(1 << 31)
            vcpu.set_sregs(sregs)
            self.shared.write(layout.comm_gpa(index) + layout.PARAMS,
                              layout.PARAMS_FORMAT.pack(self.shared_bit, index))

        code = load_guest("player")
        if layout.CODE_GPA + len(code) > layout.CODE_LIMIT:
            raise InvalidState(f"player code is {len(code)} bytes, more than the layout reserves")
        self.private.write(layout.CODE_GPA, code)          # pre-launch population
        self.engine.set_initial(0, layout.PRIVATE_RESERVED_END, True)
        self.engine.set_initial(self.reserved_bytes, self.memory - self.reserved_bytes, initial == "private")
        if self.has_memory_attributes:
            vm.set_memory_attributes(0, layout.PRIVATE_RESERVED_END, ATTR_PRIVATE)
            if initial == "private":
                vm.set_memory_attributes(self.reserved_bytes, self.memory - self.reserved_bytes, ATTR_PRIVATE)

        self._port_handlers = {
            layout.PORT_DONE: self._on_done, layout.PORT_PSC: self._on_psc,
            layout.PORT_DMA_IN: self._on_dma_in, layout.PORT_DMA_OUT: self._on_dma_out,
            layout.PORT_VERIFY_FAIL: self._on_verify_fail,
        }
        self._handlers = {
            uapi.KVM_EXIT_IO: self._on_io, uapi.KVM_EXIT_HLT: self._on_hlt, uapi.KVM_EXIT_MMIO: self._on_mmio,
            uapi.KVM_EXIT_HYPERCALL: self._on_hypercall, uapi.KVM_EXIT_MEMORY_FAULT: self._on_memory_fault,
            uapi.KVM_EXIT_SHUTDOWN: self._on_shutdown, uapi.KVM_EXIT_FAIL_ENTRY: self._on_fail_entry,
            uapi.KVM_EXIT_INTERNAL_ERROR: self._on_internal_error, uapi.KVM_EXIT_INTR: self._on_intr,
        }
        self._converters = [self._converter(i) for i in range(self.vcpus)]
        self._comm = [self.shared.view(layout.comm_gpa(i), layout.COMM_SIZE) for i in range(self.vcpus)]

    def _make_engine(self, engine, policy: str):
        if engine is None:
            from ..attrs import MemoryAttributes
            from ..convert import ConversionEngine, ConversionTracker, make_policy
            return ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy(policy, self.memory),
                                    self.shared, self.private)
        if hasattr(engine, "convert"):
            return engine
        return engine(self.shared, self.private)

    def _set_attributes_hook(self, request) -> None:
        self._vm.set_memory_attributes(request.gpa, request.size, ATTR_PRIVATE if request.private else 0)

    def _converter(self, index: int):
        """vCPU ``index``'s ``convert(gpa, size, to_private)`` for the PSC handler: the same
        ``_convert`` every exit kind uses (one path, so a subclass that wraps conversions,
        like MemslotMachine, wraps them all)."""
        convert = self._convert

        def convert_for_vcpu(gpa: int, size: int, to_private: bool):
            return convert(gpa, size, to_private, index)
        return convert_for_vcpu

    # -- public state -----------------------------------------------------------------

    def vcpu(self, index: int):
        """The ``privmem.kvm.Vcpu`` of vCPU ``index`` (its ``kvm_run`` is the exit record)."""
        return self._vcpus[index]

    @property
    def exits(self) -> int:
        return sum(sum(s.exits) for s in self._stats)

    @property
    def exit_counts(self) -> dict[str, int]:
        """Exits per reason name (only reasons seen)."""
        out: dict[str, int] = {}
        for stats in self._stats:
            for reason, count in enumerate(stats.exits):
                if count:
                    name = _EXIT_NAMES.get(reason, str(reason))
                    out[name] = out.get(name, 0) + count
        return out

    def _total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self._stats)

    psc_errors = property(lambda self: self._total("psc_errors"), doc="malformed PSC requests refused")
    psc_retries = property(lambda self: self._total("psc_retries"), doc="PSC requests answered 'retry'")
    data_errors = property(lambda self: self._total("data_errors"), doc="verify / dma_out mismatches")
    dma_errors = property(lambda self: self._total("dma_errors"), doc="DMA refused (private page, bad range)")
    conversions = property(lambda self: self._total("conversions"), doc="engine.convert calls that succeeded")
    psc_handler_ns = property(lambda self: self._total("psc_ns"),
                              doc="nanoseconds spent handling PSC exits (parse, validate, convert, write back)")

    @property
    def data_check(self) -> str:
        """"sampled" or "full": how the player writes and verifies data (see the class doc)."""
        return self._data_check

    @data_check.setter
    def data_check(self, value: str) -> None:
        self._data_check = program.check_data_check(value)

    # -- host (device) access to shared memory ----------------------------------------

    def shared_read(self, gpa: int, n: int) -> bytes:
        """Device read of guest memory through the shared view (memfd); AccessDenied if any
        touched page is private.  ``gpa`` is without the shared bit."""
        self.engine.check_device_access(gpa, n)
        return self.shared.read(gpa, n)

    def shared_write(self, gpa: int, data: bytes) -> None:
        """Device write through the shared view; AccessDenied if any touched page is private."""
        self.engine.check_device_access(gpa, len(data))
        self.shared.write(gpa, data)

    # -- running ----------------------------------------------------------------------

    def run_ops(self, ops, timeout: float | None = None) -> OpsResult:
        """Run ``ops`` (``privmem.workload.Op``-like objects) with the trace player; every
        vCPU runs its own ops in order.  Returns what happened; raises what a handler raised
        (GuestError for a guest crash, ...), or GuestError on ``timeout`` seconds."""
        ops = list(ops)
        per_vcpu = program.split_by_vcpu(ops, self.memory, self.vcpus, self.reserved_bytes)
        before = self._snapshot()
        failures_before = len(self.failures)
        start = time.perf_counter()
        with Drainer.for_engine(self.engine):
            for lists in program.rounds(per_vcpu, self.vcpus, self.shared_bit, self._data_check):
                for index, blob in enumerate(lists):
                    self.shared.write(program.list_gpa(index, self.vcpus), blob)
                self._run(timeout)
        wall = time.perf_counter() - start
        after = self._snapshot()
        exits_by_reason = {k: v - before["exit_counts"].get(k, 0) for k, v in after["exit_counts"].items()
                           if v - before["exit_counts"].get(k, 0)}
        return OpsResult(ops=len(ops), wall_time=wall, exits=sum(exits_by_reason.values()),
                         exits_by_reason=exits_by_reason,
                         failures=list(self.failures[failures_before:]),
                         **{name: after[name] - before[name] for name in
                            ("conversions", "pages_converted", "psc_requests", "psc_errors", "psc_retries",
                             "data_errors", "dma_errors")})

    def measure_exit_roundtrip(self, n: int = 20000) -> float:
        """Seconds per bare port-I/O exit round trip (guest OUT to a no-op port, KVM_RUN
        returns, the loop re-enters), from the difference of n exits and none."""
        empty = self.run_ops([program.GuestOp("exits", vcpu=0, count=0)]).wall_time
        full = self.run_ops([program.GuestOp("exits", vcpu=0, count=n)]).wall_time
        return max(full - empty, 0.0) / max(n, 1)

    def measure_conversion_cost(self, n: int = 10000) -> dict:
        """What one conversion costs on this machine, under its policy, all measured in this
        one call: ``exit_roundtrip_us`` (a bare port-I/O exit round trip, as
        ``measure_exit_roundtrip``), ``conversion_roundtrip_us`` (wall time per conversion
        while the guest flip-flops one page through the PSC doorbell, less an empty run) and
        ``vmm_us_per_conversion`` (the PSC handler's own time per conversion: parse,
        validate, ``engine.convert``, write back), plus ``ratio`` (VMM time / exit round
        trip), ``conversions`` and ``policy``.  The page flipped is the first workload page
        (``reserved_bytes``); it ends in the state it started in (its contents depend on the
        policy)."""
        if not isinstance(n, int) or n < 2:
            raise InvalidArgument("n", n, "must be an integer >= 2", hex_value=False)
        exit_s = self.measure_exit_roundtrip(n)
        page = self.reserved_bytes
        first, second = ("shared", "private") if self.store.has(page, PAGE_SIZE, ATTR_PRIVATE) else \
            ("private", "shared")
        flips = [program.GuestOp("convert", page, PAGE_SIZE, to=to) for _ in range(n // 2) for to in (first, second)]
        self.run_ops(flips[:2])             # warm up: the player's and the comm page's pages
        empty = self.run_ops([program.GuestOp("exits", vcpu=0, count=0)]).wall_time
        handler_before = self.psc_handler_ns
        result = self.run_ops(flips)
        handler_ns = self.psc_handler_ns - handler_before
        conversions = max(result.conversions, 1)
        exit_us = exit_s * 1e6
        vmm_us = handler_ns / conversions / 1e3
        return {"exit_roundtrip_us": exit_us,
                "conversion_roundtrip_us": max(result.wall_time - empty, 0.0) / conversions * 1e6,
                "vmm_us_per_conversion": vmm_us, "ratio": vmm_us / exit_us if exit_us else None,
                "conversions": result.conversions, "policy": getattr(getattr(self.engine, "policy", None), "name",
                                                                      None)}

    def _snapshot(self) -> dict:
        snap = {name: self._total(name) for name in _COUNTERS}
        snap["exit_counts"] = self.exit_counts
        return snap

    def launch(self) -> None:
        """Seal private memory (the engine seals the private backing); done by the first run."""
        if not self.launched:
            self.engine.launch()
            self.launched = True

    def _run(self, timeout: float | None) -> None:
        if self._closed:
            raise InvalidState("machine is closed")
        with self._lock:
            if self._running:
                raise InvalidState("run_ops is already running on this machine")
            self._running = True
        try:
            self.launch()
            self._stopping = False
            self._error = None
            for index, vcpu in enumerate(self._vcpus):
                vcpu.kvm_run.immediate_exit = 0
                self._stats[index].done = False
                self._stats[index].last_fault = None
                vcpu.set_regs(uapi.kvm_regs(
                    rip=layout.CODE_GPA, rflags=uapi.X86_RFLAGS_RESERVED, rsp=layout.stack_top(index),
                    rsi=program.list_gpa(index, self.vcpus) | self.shared_bit,
                    rbx=layout.comm_gpa(index) | self.shared_bit, rbp=self.shared_bit))
            self._threads = [threading.Thread(target=self._vcpu_main, args=(i,), name=f"privmem-vcpu{i}",
                                              daemon=True) for i in range(self.vcpus)]
            for index, thread in enumerate(self._threads):
                self._in_loop[index] = True
                thread.start()
            deadline = None if timeout is None else time.monotonic() + timeout
            timed_out = None
            for thread in self._threads:
                while thread.is_alive():
                    wait = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
                    thread.join(wait)
                    if deadline is not None and time.monotonic() >= deadline and thread.is_alive():
                        deadline = None
                        with self._lock:
                            if self._error is None:     # the timeout wins over errors the kick causes
                                self._error = timed_out = GuestError(f"run timed out after {timeout} s")
                        self._stop_all()
            self._threads = []
            if timed_out is not None and self._error is timed_out:
                # registers only now: KVM_GET_REGS waits for a KVM_RUN in progress to return
                self._error = GuestError(f"run timed out after {timeout} s; vCPU 0 stopped at",
                                         self._vcpus[0].registers())
            error, self._error = self._error, None
            if error is not None:
                raise error
        finally:
            with self._lock:
                self._running = False

    def _stop_all(self) -> None:
        """Kick every vCPU thread out of KVM_RUN; safe from any thread, idempotent."""
        self._stopping = True
        with self._lock:
            for index, vcpu in enumerate(self._vcpus):
                if vcpu.kvm_run is not None:
                    vcpu.kvm_run.immediate_exit = 1
                if self._in_loop[index] and index < len(self._threads) and self._threads[index].ident:
                    kick(self._threads[index].ident)

    def _vcpu_main(self, index: int) -> None:
        try:
            self._loop(index)
        except BaseException as exc:
            with self._lock:
                if self._error is None:
                    self._error = exc
            self._stop_all()
        finally:
            with self._lock:
                self._in_loop[index] = False

    def _loop(self, index: int) -> None:
        """The hot path: KVM_RUN, count, dispatch.  The no-op port is answered inline."""
        vcpu = self._vcpus[index]
        io = vcpu.kvm_run.io
        counts = self._stats[index].exits
        ports = self._port_handlers
        handlers = self._handlers
        run = vcpu.run
        exit_io, port_nop = uapi.KVM_EXIT_IO, layout.PORT_NOP
        while not self._stopping:
            reason = run()
            counts[reason & 0xFF] += 1
            if reason == exit_io:
                port = io.port
                if port == port_nop:
                    continue
                handler = ports.get(port)
                if handler is None:
                    self._on_unknown_io(index)
                elif handler(index):
                    return
                continue
            handler = handlers.get(reason)
            if handler is None:
                self._unhandled(index, reason)
            if handler(index):
                return

    def dispatch(self, index: int, reason: int | None = None) -> bool:
        """Handle the exit recorded in vCPU ``index``'s kvm_run (counted like a real one);
        True when the vCPU is finished.  The exit loop does the same; tests use this for
        exits this host never delivers (hypercall, memory fault)."""
        if reason is None:
            reason = self._vcpus[index].kvm_run.exit_reason
        self._stats[index].exits[reason & 0xFF] += 1
        handler = self._handlers.get(reason)
        if handler is None:
            self._unhandled(index, reason)
        return handler(index)

    # -- exit handlers (return True when the vCPU is done) ----------------------------

    def _regs(self, index: int) -> dict:
        return self._vcpus[index].registers()

    def _unhandled(self, index: int, reason: int):
        raise GuestError(f"vCPU {index}: unhandled exit {_EXIT_NAMES.get(reason, reason)} ({reason})",
                         self._regs(index))

    def _on_io(self, index: int) -> bool:
        port = self._vcpus[index].kvm_run.io.port
        if port == layout.PORT_NOP:
            return False
        handler = self._port_handlers.get(port)
        if handler is None:
            self._on_unknown_io(index)
            return False
        return handler(index)

    def _on_unknown_io(self, index: int) -> None:
        """No device on the port: OUT is ignored, IN reads all-ones (a floating bus)."""
        self._stats[index].unhandled_io += 1
        vcpu = self._vcpus[index]
        if vcpu.kvm_run.io.direction == uapi.KVM_EXIT_IO_IN:
            data = vcpu.io_data()
            data[:] = b"\xff" * len(data)

    def _on_intr(self, index: int) -> bool:
        return False

    def _on_hlt(self, index: int) -> bool:
        self._stats[index].done = True
        return True

    _on_done = _on_hlt

    def _on_mmio(self, index: int) -> bool:
        """No MMIO devices: reads return all-ones, writes are dropped (counted)."""
        self._stats[index].mmio += 1
        mmio = self._vcpus[index].kvm_run.mmio
        if not mmio.is_write:
            for i in range(8):
                mmio.data[i] = 0xFF
        return False

    def _on_shutdown(self, index: int) -> bool:
        raise GuestError(f"vCPU {index}: guest shut down (triple fault)", self._regs(index))

    def _on_fail_entry(self, index: int) -> bool:
        fail = self._vcpus[index].kvm_run.fail_entry
        raise GuestError(f"vCPU {index}: VM entry failed, hardware reason {fail.hardware_entry_failure_reason:#x}"
                         f" on cpu {fail.cpu}", self._regs(index))

    def _on_internal_error(self, index: int) -> bool:
        internal = self._vcpus[index].kvm_run.internal
        data = [hex(internal.data[i]) for i in range(min(internal.ndata, 16))]
        raise GuestError(f"vCPU {index}: KVM internal error, suberror {internal.suberror} data {data}",
                         self._regs(index))

    def _convert(self, gpa: int, size: int, to_private: bool, index: int):
        conversion = self.engine.convert(gpa, size, to_private, index)
        stats = self._stats[index]
        stats.conversions += 1
        stats.pages_converted += size >> PAGE_SHIFT
        return conversion

    def _on_hypercall(self, index: int) -> bool:
        """KVM_HC_MAP_GPA_RANGE(gpa, npages, attrs): convert, answer in hypercall.ret
        (0, -KVM_EINVAL for a bad range, -EAGAIN when busy, -KVM_ENOSYS for other calls)."""
        hypercall = self._vcpus[index].kvm_run.hypercall
        if hypercall.nr != uapi.KVM_HC_MAP_GPA_RANGE:
            hypercall.ret = -uapi.KVM_ENOSYS & _MASK64
            return False
        gpa, npages, attrs = hypercall.args[0], hypercall.args[1], hypercall.args[2]
        size = npages << PAGE_SHIFT
        if gpa % PAGE_SIZE or npages == 0 or gpa + size > self.memory:
            hypercall.ret = -uapi.KVM_EINVAL & _MASK64
            return False
        try:
            self._convert(gpa, size, bool(attrs & uapi.KVM_MAP_GPA_RANGE_ENCRYPTED), index)
        except Busy:
            hypercall.ret = -errno.EAGAIN & _MASK64
            return False
        except InvalidArgument:
            hypercall.ret = -uapi.KVM_EINVAL & _MASK64
            return False
        hypercall.ret = 0
        return False

    def _on_memory_fault(self, index: int) -> bool:
        """KVM_EXIT_MEMORY_FAULT: convert [gpa, gpa + size) to the access's type (flags
        PRIVATE -> private, else shared) as QEMU does, then re-enter.  An address in the
        shared alias is taken without the shared bit.  The same fault MAX_FAULT_REPEATS times
        in a row, or one outside guest memory, is a GuestError."""
        fault = self._vcpus[index].kvm_run.memory_fault
        flags, gpa, size = fault.flags, fault.gpa, fault.size
        stats = self._stats[index]
        key = (flags, gpa, size)
        if key == stats.last_fault:
            stats.fault_repeats += 1
            if stats.fault_repeats >= MAX_FAULT_REPEATS:
                raise GuestError(f"vCPU {index}: memory fault at {gpa:#x} (+{size:#x}, flags {flags:#x}) "
                                 f"repeated {stats.fault_repeats} times", self._regs(index))
        else:
            stats.last_fault, stats.fault_repeats = key, 0
        if self.shared_bit <= gpa < 2 * self.shared_bit:
            gpa -= self.shared_bit
        if gpa % PAGE_SIZE or size == 0 or size % PAGE_SIZE or gpa + size > self.memory:
            raise GuestError(f"vCPU {index}: memory fault outside guest memory: gpa {fault.gpa:#x} size {size:#x}",
                             self._regs(index))
        try:
            self._convert(gpa, size, bool(flags & uapi.KVM_MEMORY_EXIT_FLAG_PRIVATE), index)
        except Busy:
            pass            # re-enter: the guest faults again and we retry
        return False

    def _on_psc(self, index: int, _clock=time.perf_counter_ns, _serve=psc.serve_in_place) -> bool:
        """The PSC doorbell: serve the request in vCPU ``index``'s comm page in place (the
        status word is always written).  Timed into ``psc_handler_ns``."""
        start = _clock()
        stats = self._stats[index]
        stats.psc_requests += 1
        status, error = _serve(self._comm[index], self.memory, self._converters[index])
        if status:
            if status == psc.STATUS_INVALID:
                stats.psc_errors += 1
                self._failure(index, "psc", error=error)
            else:
                stats.psc_retries += 1
        stats.psc_ns += _clock() - start
        return False

    def _mailbox(self, index: int) -> tuple[int, int, int, int, int]:
        return _MAILBOX_UNPACK(self._comm[index], layout.MAILBOX)

    def _failure(self, index: int, kind: str, **details) -> None:
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(dict(vcpu=index, kind=kind, **details))

    def _on_dma_in(self, index: int) -> bool:
        """Device writes ``pattern`` over [gpa, gpa + size) (shared pages only)."""
        gpa, size, pattern, _, _ = self._mailbox(index)
        try:
            self.engine.check_device_access(gpa, size)
            self.shared.fill(gpa, size, pattern & 0xFF)
        except (AccessDenied, InvalidArgument) as exc:
            self._stats[index].dma_errors += 1
            self._failure(index, "dma_in", gpa=gpa, size=size, error=str(exc))
        return False

    def _on_dma_out(self, index: int) -> bool:
        """Device reads [gpa, gpa + size) and checks it holds ``pattern`` (``_mismatch``)."""
        gpa, size, pattern, _, _ = self._mailbox(index)
        pattern &= 0xFF
        try:
            data = self.shared_read(gpa, size)
        except (AccessDenied, InvalidArgument) as exc:
            self._stats[index].dma_errors += 1
            self._failure(index, "dma_out", gpa=gpa, size=size, error=str(exc))
            return False
        mismatch = self._mismatch(gpa, data, pattern)
        if mismatch is not None:
            first, actual, mismatched = mismatch
            self._stats[index].data_errors += 1
            self._failure(index, "dma_out", gpa=gpa + first, expected=pattern, actual=actual,
                          mismatched_bytes=mismatched)
        return False

    def _mismatch(self, gpa: int, data: bytes, pattern: int) -> tuple[int, int, int] | None:
        """None if ``data`` (read at ``gpa``) holds ``pattern``: every byte under
        ``data_check="full"`` (or for a range that is not whole pages); every byte of each
        page's sample under "sampled", the only bytes a sampled guest WRITE defines.  Else
        (offset of the first differing byte, its value, differing bytes)."""
        if self._data_check == "full" or (gpa | len(data)) % PAGE_SIZE:
            if data.count(pattern) == len(data):
                return None
            first = next(i for i, b in enumerate(data) if b != pattern)
            return first, data[first], len(data) - data.count(pattern)
        return _sample_mismatch(data, pattern)

    def shared_matches(self, gpa: int, size: int, pattern: int) -> bool:
        """True if the shared view of [gpa, gpa + size) holds ``pattern`` by the rule DMA_OUT
        uses: every byte under ``data_check="full"``, the sample bytes of each page under
        "sampled" (what a sampled guest WRITE defines).  Raises like ``shared_read``."""
        if not isinstance(pattern, int) or not 0 <= pattern <= 0xFF:
            raise InvalidArgument("pattern", pattern, "must be in 0..255", hex_value=False)
        return self._mismatch(gpa, self.shared_read(gpa, size), pattern) is None

    def _on_verify_fail(self, index: int) -> bool:
        """The guest found a byte that is not the pattern (first address and count reported)."""
        address, size, pattern32, actual, count = self._mailbox(index)
        view = "shared" if address & self.shared_bit else "private"
        gpa = address & ~self.shared_bit
        actual_bytes = struct.pack("<I", actual)
        expected = pattern32 & 0xFF
        offset = next((i for i, b in enumerate(actual_bytes) if b != expected), 0)
        self._stats[index].data_errors += 1
        self._failure(index, "verify", gpa=gpa + offset, view=view, expected=expected,
                      actual=actual_bytes[offset], mismatched_words=count)
        return False

    # -- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop vCPU threads and release every fd and mapping; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._threads:
            self._stop_all()
            for thread in self._threads:
                thread.join()
            self._threads = []
        for view in self._comm:
            view.release()
        self._comm = []
        for vcpu in self._vcpus:
            vcpu.close()
        for part in (self._vm, self._slot_map, self.private, self.shared, self._kvm):
            if part is not None:
                part.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Machine memory={self.memory:#x} vcpus={self.vcpus} shared_bit={self.shared_bit:#x}"
                f"{' closed' if self._closed else ''}>")
