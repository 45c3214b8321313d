"""The machine: one KVM VM whose RAM follows a guest memory map, a shared alias at the
TDX-style shared bit, a firmware region with the trace player, and one thread per vCPU.

Memory (docs/design.md, "vmm/"):

* private: ONE guest_memfd holding all RAM (created with MMAP | INIT_SHARED, so each slot is
  guest_memfd-only: every guest access to GPA P is served from it; the default VM type has no
  PRIVATE attribute), bound region by region with KVM_SET_USER_MEMORY_REGION2: region k at
  its GPA, at its offset in the file.  The VMM never writes it after launch.
* shared: one memfd holding all RAM, bound region by region at ``shared_bit + gpa``, so the
  guest reaches the shared view of page P at P | shared_bit and the host (the device model)
  through the mapping.  ``shared_bit`` is ``1 << (gpa_width - 1)`` with ``gpa_width`` the
  guest physical width KVM_GET_SUPPORTED_CPUID reports (48 here: bit 47).
* firmware: a memfd of its own, just below the shared bit (firmware.py): the player's code
  and page tables, per-vCPU stacks, comm pages and op rings.  Not RAM: a trace owns every
  RAM page, page 0 included.

Conversion state lives in the engine's store (``privmem.convert``); where the host has
KVM_CAP_MEMORY_ATTRIBUTES, KVM_SET_MEMORY_ATTRIBUTES is issued as a commit hook.  The vCPUs
run in long mode (KVM_SET_CPUID2 with the supported CPUID; 1 GiB pages where offered, else
2 MiB; paging.py), the exits are handled by exits.py and device.py, the threads and every
way a run stops by vcpus.py.

Sizes: RAM from one page to ``MAX_MEMORY`` in any layout (both backings are sparse: only
pages touched cost host memory); up to ``MAX_VCPUS`` vCPUs.  Ops come as a ``Program``
(program.py) or any iterable of ops, compiled on the way in and streamed through each vCPU's
op ring, so a run's memory does not grow with the trace.
"""

from __future__ import annotations

import os
import threading
import time

from ..attrs.validate import ATTR_PRIVATE
from ..convert.drainer import Drainer
from ..errors import InvalidArgument, InvalidState, Unsupported
from ..kvm import Kvm, uapi
from ..kvm.kick import ensure_kick_handler
from ..kvm.probe import cpu_features
from ..kvm.slotmap import SlotMapping
from ..kvm.system import DEV_KVM
from ..memmap import GpaRange, GuestMemoryMap
from ..units import PAGE_SIZE, TiB, format_size, parse_size
from . import firmware, program
from .device import DeviceModel
from .exits import ExitHandlers
from .firmware import FirmwareLayout
from .front import MachineFront
from .guest import load as load_guest
from .result import OpsResult
from .ring import OpRing
from .vcpus import VcpuRunner, VcpuStats

MAX_MEMORY = 4 * TiB
MAX_VCPUS = 64
_DISPATCH_ENTRIES = 256
_EXIT_NAMES = uapi.EXIT_REASON_NAMES


def _backing_classes():
    """(SharedBacking, PrivateBacking) from privmem.backing (imported late: a separate layer)."""
    from ..backing import PrivateBacking, SharedBacking
    return SharedBacking, PrivateBacking


def resolve_memory_map(memory, layout: str | None, memory_map: GuestMemoryMap | None) -> GuestMemoryMap:
    """The map a machine gets from ``memory`` (bytes or a size string) laid out by ``layout``
    (default flat), or ``memory_map`` itself."""
    if memory_map is not None:
        if not isinstance(memory_map, GuestMemoryMap):
            raise InvalidArgument("memory_map", memory_map, "must be a GuestMemoryMap", hex_value=False)
        return memory_map
    ram = parse_size(memory, "memory")
    if ram <= 0:
        raise InvalidArgument("memory", ram, "must be > 0")
    return GuestMemoryMap.from_layout(layout or "flat", ram)


def check_machine_size(memory_map: GuestMemoryMap, vcpus: object, backend: str = "kvm") -> None:
    """The limits both machines share: RAM up to MAX_MEMORY, vCPUs 1..MAX_VCPUS."""
    if memory_map.ram_bytes > MAX_MEMORY:
        raise InvalidArgument("memory", memory_map.ram_bytes, f"{format_size(memory_map.ram_bytes)} is more than "
                              f"the {format_size(MAX_MEMORY)} of RAM the {backend} machine takes")
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= MAX_VCPUS:
        raise InvalidArgument("vcpus", vcpus, f"must be in 1..{MAX_VCPUS} (the machine's limit)", hex_value=False)


BACKINGS = ("two-file", "in-place")


def check_backing(backing: str) -> str:
    if backing not in BACKINGS:
        raise InvalidArgument("backing", backing, f"unknown (choose from {', '.join(BACKINGS)})", hex_value=False)
    return backing


def make_in_place_engine(backing, memory_map: GuestMemoryMap, policy: str = "never", native=None):
    """The in-place engine over ``backing``; ``policy`` must be "never" (nothing is discarded,
    so no discard policy applies)."""
    from ..attrs import MemoryAttributes
    from ..convert import ConversionTracker
    from ..convert.inplace import InPlaceEngine

    if policy not in ("never", "in-place"):
        raise InvalidArgument("policy", policy, "in-place conversion discards nothing: no discard policy applies "
                              "(use never, or the two-file backing)", hex_value=False)
    return InPlaceEngine(ConversionTracker(MemoryAttributes()), backing, memory_map, native=native)


def _segment(seg, selector: int, type_: int, long_mode: bool) -> None:
    seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFFFFFF, selector, type_
    seg.present, seg.dpl, seg.s, seg.g, seg.avl, seg.unusable = 1, 0, 1, 1, 0, 0
    seg.l, seg.db = (1, 0) if long_mode else (0, 1)


class Machine(MachineFront):
    """``Machine(memory="64M", vcpus=1, engine=None, policy="never", *, layout="flat",
    memory_map=None, initial="private", data_check="sampled")``.

    ``memory``: RAM in bytes or a size string, laid out by ``layout`` (``privmem.memmap``),
    or ``memory_map`` given whole.  ``engine``: None (a ``ConversionEngine`` with ``policy``
    is built), an engine object, or a factory ``engine(shared_backing, private_backing,
    memory_map) -> engine``.  ``initial``: the state of all RAM at launch.  ``data_check``:
    how the player writes and verifies data: "sampled" (default: the first and the last
    qword of every 4 KiB page) or "full" (every byte); on this host the guest is emulated
    (~1 µs per instruction), so full checks would drown the costs the machine measures.
    May be changed between runs.  Owns every fd, mapping and thread; a context manager;
    ``close()`` is idempotent and may be called from another thread during a run (the run
    stops and raises ``Interrupted``; close returns once everything is released).
    ``guest_program`` names the guest to load from ``vmm/guest`` (default the trace player;
    the robustness tests load a hostile one).  ``backing``: "two-file" (default: a
    guest_memfd for private memory, a memfd for shared memory, a discard policy between
    them) or "in-place" (one guest_memfd serves both views; conversions change the shared
    view's protections and zero the pages that change hands, and never allocate or discard:
    ``privmem.convert.inplace``).
    """

    backend = "kvm"

    def __init__(self, memory: int | str = "64M", vcpus: int = 1, engine=None, policy: str = "never", *,
                 layout: str | None = None, memory_map: GuestMemoryMap | None = None, initial: str = "private",
                 kvm_path: str = DEV_KVM, data_check: str = "sampled", guest_program: str = "player",
                 backing: str = "two-file"):
        self.memory_map = resolve_memory_map(memory, layout, memory_map)
        self.guest_program = guest_program
        self.backing = check_backing(backing)
        check_machine_size(self.memory_map, vcpus)
        if initial not in ("private", "shared"):
            raise InvalidArgument("initial", initial, "must be 'private' or 'shared'", hex_value=False)
        self._data_check = program.check_data_check(data_check)
        self.memory = self.memory_map.ram_bytes
        self.vcpus = vcpus
        self.launched = False
        self._closed = False
        self._busy = threading.Lock()            # held by a run; close() waits for it
        self._kvm = self._vm = self._slot_map = self.firmware = None
        self._vcpus: list = []
        self.shared = self.private = self.engine = None
        self.comm: list[memoryview] = []
        self.rings: list[OpRing] = []
        self._views: list[memoryview] = []
        self._empty = program.Spool()
        self._empty.finish()
        self.stats = [VcpuStats() for _ in range(vcpus)]
        self.failures: list[dict] = []
        self.run_started = 0.0
        try:
            self._build(engine, policy, initial, kvm_path)
        except BaseException:
            self.close()
            raise

    # -- construction -----------------------------------------------------------------

    def _build(self, engine, policy: str, initial: str, kvm_path: str) -> None:
        ensure_kick_handler()
        self._kvm = Kvm(kvm_path)
        features = cpu_features(self._kvm)
        if not features.long_mode:
            raise Unsupported("KVM offers no long mode to guests: the player is a 64-bit guest")
        vm = self._vm = self._kvm.create_vm(uapi.KVM_X86_DEFAULT_VM)
        if not vm.check_extension(uapi.KVM_CAP_USER_MEMORY2):
            raise Unsupported("KVM_CAP_USER_MEMORY2 is missing: cannot bind guest_memfd")
        gmem_flags = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED
        if vm.check_extension(uapi.KVM_CAP_GUEST_MEMFD_FLAGS) & gmem_flags != gmem_flags:
            raise Unsupported("guest_memfd flags MMAP | INIT_SHARED are not supported by this host")
        max_vcpus = vm.check_extension(uapi.KVM_CAP_MAX_VCPUS)
        if max_vcpus and self.vcpus > max_vcpus:
            raise InvalidArgument("vcpus", self.vcpus, f"KVM_CAP_MAX_VCPUS is {max_vcpus} here", hex_value=False)
        self.shared_bit = features.shared_bit
        self.gpa_width = features.gpa_width
        self.layout = FirmwareLayout.plan(self.memory_map, self.vcpus, self.shared_bit, features.huge_pages_1g)

        shared_cls, private_cls = _backing_classes()
        ram = self.memory_map.ram_bytes
        gmem = vm.create_guest_memfd(ram, gmem_flags)
        if self.backing == "in-place":
            # One guest_memfd, both views: the alias slot's userspace_addr is a second mapping
            # of the same file (probed on this host: docs/design.md), so no second backing exists.
            from ..backing.inplace import InPlaceBacking
            try:
                self.private = self.shared = InPlaceBacking.from_guest_memfd(gmem, ram,
                                                                           initial_shared=initial == "shared")
            except BaseException:
                os.close(gmem)
                raise
            private_hva = self.private.private_hva
        else:
            try:
                self.private = private_cls.from_guest_memfd(gmem, ram, mmap_flag=True)
            except BaseException:
                os.close(gmem)
                raise
            self.shared = shared_cls.create(ram)
            # KVM on this host reaches a guest_memfd-only slot through userspace_addr (kvm/slotmap.py):
            # give it a mapping of its own that sealing the private backing does not revoke.
            self._slot_map = SlotMapping(self.private.fd, ram)
            private_hva = self._slot_map.addr
        self.firmware = shared_cls.create(self.layout.size, "privmem-firmware")
        regions = self.memory_map.regions
        self.slot_firmware = 2 * len(regions)
        for index, region in enumerate(regions):
            vm.set_user_memory_region2(self.private_slot(index), uapi.KVM_MEM_GUEST_MEMFD, region.gpa, region.size,
                                       private_hva + region.offset, self.private.fd, region.offset)
            vm.set_user_memory_region2(self.shared_slot(index), 0, self.shared_bit + region.gpa, region.size,
                                       self.shared.hva + region.offset)
        vm.set_user_memory_region2(self.slot_firmware, 0, self.layout.gpa, self.layout.size, self.firmware.hva)
        self.has_memory_attributes = bool(vm.check_extension(uapi.KVM_CAP_MEMORY_ATTRIBUTES) & ATTR_PRIVATE)

        self.engine = self._make_engine(engine, policy)
        self.store = self.engine.store
        if self.has_memory_attributes and hasattr(self.engine, "commit_hooks"):
            self.engine.commit_hooks.append(self._set_attributes_hook)

        self._load_firmware()
        for index in range(self.vcpus):
            vcpu = vm.create_vcpu(index)
            self._vcpus.append(vcpu)
            vcpu.set_cpuid2(features.entries)
            sregs = vcpu.get_sregs()
            for name in ("ds", "es", "fs", "gs", "ss"):
                _segment(getattr(sregs, name), 0x10, 3, False)
            _segment(sregs.cs, 0x08, 11, True)
            sregs.cr0 = uapi.X86_CR0_PE | uapi.X86_CR0_ET | uapi.X86_CR0_NE | uapi.X86_CR0_PG
            sregs.cr4 = uapi.X86_CR4_PAE
            sregs.cr3 = self.layout.cr3
            sregs.efer = uapi.X86_EFER_LME | uapi.X86_EFER_LMA
            vcpu.set_sregs(sregs)
        for region in regions:
            self.engine.set_initial(region.gpa, region.size, initial == "private")
            if self.has_memory_attributes and initial == "private":
                vm.set_memory_attributes(region.gpa, region.size, ATTR_PRIVATE)

        device = DeviceModel(self)
        self.handlers = ExitHandlers(self, device)
        self.runner = VcpuRunner(self._vcpus, self.stats, self.handlers.ports, self.handlers.exits,
                                 self.handlers.unhandled, self.handlers.on_unknown_io)

    def _load_firmware(self) -> None:
        """Code, relocated dispatch table, page tables and per-vCPU pages, before any vCPU
        exists."""
        layout, fw = self.layout, self.firmware
        code = bytearray(load_guest(self.guest_program))
        if len(code) > firmware.CODE_SIZE:
            raise InvalidState(f"player code is {len(code)} bytes, more than the {firmware.CODE_SIZE} reserved")
        table = len(code) - 8 * _DISPATCH_ENTRIES
        self._dispatch_offset = table
        self._routines = [int.from_bytes(code[table + 8 * k:table + 8 * k + 8], "little")
                          for k in range(_DISPATCH_ENTRIES)]
        fw.write(0, bytes(code[:table]))
        self._write_dispatch()
        offset = layout.tables_offset
        for page in layout.page_tables(self.memory_map):
            fw.write(offset, page)
            offset += PAGE_SIZE
        for index in range(self.vcpus):
            comm = fw.view(layout.comm(index), firmware.COMM_SIZE)
            comm[firmware.PARAM_VCPU:firmware.PARAM_VCPU + 4] = index.to_bytes(4, "little")
            self.comm.append(comm)
            ring_view = fw.view(layout.ring(index), firmware.RING_BYTES)
            self._views.append(ring_view)
            self.rings.append(OpRing(ring_view, layout.va_of(layout.ring(index))))

    def _write_dispatch(self) -> None:
        """The dispatch table with absolute addresses; the write/verify kinds pointed at the
        routines ``data_check`` asks for."""
        routines = list(self._routines)
        if self._data_check == "full":
            for kind, full in program.FULL_CHECK_KINDS.items():
                routines[kind] = routines[full]
        base = self.layout.va
        self.firmware.write(self._dispatch_offset, b"".join((base + r).to_bytes(8, "little") for r in routines))

    def _make_engine(self, engine, policy: str):
        if engine is None and self.backing == "in-place":
            from ..kvm.gmem import probe_memory_attributes2, set_memory_attributes2
            fd = self.private.fd
            offered, _ = probe_memory_attributes2(fd)
            native = (lambda offset, size, attributes: set_memory_attributes2(fd, offset, size, attributes)) \
                if offered else None
            return make_in_place_engine(self.private, self.memory_map, policy, native)
        if engine is None:
            from ..attrs import MemoryAttributes
            from ..convert import ConversionEngine, ConversionTracker, make_policy
            return ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy(policy, self.memory),
                                    self.shared, self.private, memory_map=self.memory_map)
        if hasattr(engine, "convert"):
            return engine
        return engine(self.shared, self.private, self.memory_map)

    def _set_attributes_hook(self, request) -> None:
        self._vm.set_memory_attributes(request.gpa, request.size, ATTR_PRIVATE if request.private else 0)

    def private_slot(self, region: int) -> int:
        return region

    def shared_slot(self, region: int) -> int:
        return len(self.memory_map.regions) + region

    # -- public state -----------------------------------------------------------------

    def vcpu(self, index: int):
        """The ``privmem.kvm.Vcpu`` of vCPU ``index`` (its ``kvm_run`` is the exit record)."""
        return self._vcpus[index]

    @property
    def exit_counts(self) -> dict[str, int]:
        """Exits per reason name (only reasons seen)."""
        out: dict[str, int] = {}
        for stats in self.stats:
            for reason, count in enumerate(stats.exits):
                if count:
                    name = _EXIT_NAMES.get(reason, str(reason))
                    out[name] = out.get(name, 0) + count
        return out

    psc_handler_ns = property(lambda self: self._total("psc_ns"),
                              doc="nanoseconds spent handling PSC exits (parse, validate, convert, write back)")

    @property
    def data_check(self) -> str:
        """"sampled" or "full": how the player writes and verifies data (see the class doc)."""
        return self._data_check

    @data_check.setter
    def data_check(self, value: str) -> None:
        self._data_check = program.check_data_check(value)
        self._write_dispatch()

    def stopping(self) -> bool:
        return self.runner.stopping

    # -- conversions and host (device) access -------------------------------------------

    def convert_for_guest(self, index: int, where: GpaRange, to_private: bool):
        """The one conversion path of every exit kind (PSC, hypercall, memory fault): a
        subclass that wraps conversions (MemslotMachine) wraps them all."""
        conversion = self.engine.convert_range(where, to_private, index)
        self.stats[index].conversions += 1
        return conversion

    # -- running ----------------------------------------------------------------------

    def _run_program(self, compiled: program.Program, timeout: float | None) -> OpsResult:
        if not self._busy.acquire(blocking=False):
            raise InvalidState("run_ops is already running on this machine")
        try:
            if self._closed:
                raise InvalidState("machine is closed")
            before = self._snapshot()
            failures_before = len(self.failures)
            spools = compiled.spools
            start = time.perf_counter()
            self.launch()
            with Drainer.for_engine(self.engine, on_error=self.runner.fail):
                self.run_started = time.monotonic()
                self.runner.run(timeout, lambda index: self.prepare_vcpu(
                    index, spools[index] if index < len(spools) else self._empty))
            wall = time.perf_counter() - start
            after = self._snapshot()
        finally:
            self._busy.release()
        exits_by_reason = {k: v - before["exit_counts"].get(k, 0) for k, v in after["exit_counts"].items()
                           if v - before["exit_counts"].get(k, 0)}
        return OpsResult(ops=compiled.ops, wall_time=wall, exits=sum(exits_by_reason.values()),
                         exits_by_reason=exits_by_reason, failures=list(self.failures[failures_before:]),
                         **{name: after[name] - before[name] for name in OpsResult.COUNTERS})

    def prepare_vcpu(self, index: int, spool) -> None:
        """vCPU ``index`` at the player's entry with ``spool``'s ops in its ring: the ring
        primed, the stack, ring and comm page in the registers the player reads them from."""
        self.rings[index].prime(spool)
        layout = self.layout
        self._vcpus[index].set_regs(uapi.kvm_regs(
            rip=layout.va, rflags=uapi.X86_RFLAGS_RESERVED, rsp=layout.va_of(layout.stack_top(index)),
            rsi=self.rings[index].va, rbx=layout.va_of(layout.comm(index))))

    def _snapshot(self) -> dict:
        snap = {name: self._total(name) for name in OpsResult.COUNTERS if name != "pages_converted"}
        snap["pages_converted"] = self.engine.stats.pages_converted
        snap["exit_counts"] = self.exit_counts
        return snap

    def dispatch(self, index: int, reason: int | None = None) -> bool:
        """Handle the exit recorded in vCPU ``index``'s kvm_run (counted like a real one);
        True when the vCPU is finished.  The exit loop does the same; tests use this for
        exits this host never delivers (hypercall, memory fault)."""
        if reason is None:
            reason = self._vcpus[index].kvm_run.exit_reason
        self.stats[index].exits[reason & 0xFF] += 1
        handler = self.handlers.exits.get(reason)
        if handler is None:
            self.handlers.unhandled(index, reason)
            return False
        return handler(index)

    # -- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop a run in progress (from any other thread), wait for it to end, then release
        every fd and mapping; idempotent."""
        if self._closed:
            return
        self._closed = True
        runner = getattr(self, "runner", None)
        if runner is not None and runner.running:
            runner.stop("closed")
        with self._busy:
            if self.engine is not None:
                self.engine.close()                  # refused from now on, before the backings go
            for view in self.comm + self._views:
                view.release()
            self.comm, self._views = [], []
            self.rings = []
            for vcpu in self._vcpus:
                vcpu.close()
            for part in (self._vm, self._slot_map, self.private, self.shared, self.firmware, self._kvm):
                if part is not None:
                    part.close()
            self._empty.close()

    def __repr__(self) -> str:
        return (f"<Machine {self.memory_map.describe()} vcpus={self.vcpus} shared_bit={getattr(self, 'shared_bit', 0):#x}"
                f"{' closed' if self._closed else ''}>")


__all__ = ["BACKINGS", "MAX_MEMORY", "MAX_VCPUS", "Machine", "check_backing", "check_machine_size",
           "make_in_place_engine", "resolve_memory_map"]
