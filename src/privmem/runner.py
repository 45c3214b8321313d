"""Run one trace on one backend under one policy, and report what it cost.

The backend is the real KVM machine wherever /dev/kvm is usable, else the host backend.  A
trace is compiled once into a ``Program`` (every op validated before anything runs; a trace
file is read line by line into it, so memory does not grow with its length) and can be run
under any number of policies.  While the guest runs, a sampler records the engine's books of
held memory and, from the kernel, the bytes both backings hold (``peak_host_bytes``) and the
bytes held in the side each page is not using (``peak_double_alloc_measured_bytes``), for the
tables and plots.
"""

from __future__ import annotations

import errno
import os
import resource
import threading
import time
from dataclasses import asdict, dataclass, field

from .errors import InvalidArgument
from .memmap import GuestMemoryMap
from .ops import Trace
from .threads import join_all, start_all
from .vmm.program import Program

BACKENDS = ("kvm", "host")
TRACKINGS = ("store", "memslots")
SAMPLE_INTERVAL = 0.05
# A timeline point as the sampler takes it, and as JSON names it: seconds since the run
# started, the engine's books of held memory, and the kernel's measured double allocation
# (None between kernel samples).
TIMELINE_KEYS = ("t_s", "held_books_bytes", "double_alloc_kernel_bytes")


def kvm_unusable_reason(path: str = "/dev/kvm") -> str | None:
    """None if ``path`` opens read/write and its KVM has what the machine needs, else why
    not (missing, EACCES, a kernel without guest_memfd MMAP, ...)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{path}: {exc.strerror}" + (" (the kvm module is not loaded?)" if exc.errno == errno.ENOENT else
                                            " (run as root or join the kvm group)" if exc.errno == errno.EACCES
                                            else "")
    os.close(fd)
    from .kvm.probe import machine_unsupported_reason

    return machine_unsupported_reason(path)


def kvm_usable() -> bool:
    return kvm_unusable_reason() is None


def default_backend() -> str:
    return "kvm" if kvm_usable() else "host"


@dataclass
class RunResult:
    workload: str
    policy: str
    backend: str
    memory: int
    vcpus: int
    wall_s: float
    conversions: int
    pages_converted: int
    exits: int
    discards: int
    discarded_bytes: int
    peak_double_alloc_bytes: int     # the engine's books: held, not yet discarded (exact peak)
    peak_host_bytes: int             # kernel: both backings' allocation, sampled
    data_errors: int
    tracking: str = "store"
    dma_errors: int = 0
    psc_retries: int = 0
    psc_errors: int = 0
    reclaimed_bytes: int = 0
    budget_bytes: int | None = None
    max_age_s: float | None = None   # the draining policies' age limit
    peak_double_alloc_measured_bytes: int = 0   # kernel: allocation in the unused side, sampled
    layout: str = "flat"
    regions: list = field(default_factory=list)
    ops: int = 0
    timing: str = "none"
    peak_rss_bytes: int = 0          # the VMM process's peak resident set (VmHWM), so far
    backing: str = "two-file"        # or "in-place": one guest_memfd serving both views
    timeline: list = field(default_factory=list)  # [(seconds, books bytes, kernel bytes or None)]

    def as_dict(self, timeline: bool = False) -> dict:
        """The result as JSON would hold it; with ``timeline``, its points keyed by ``TIMELINE_KEYS``."""
        out = asdict(self)
        points = out.pop("timeline")
        if timeline:
            out["timeline"] = [dict(zip(TIMELINE_KEYS, point)) for point in points]
        return out


def make_machine(backend: str, memory_map: GuestMemoryMap, vcpus: int, policy: str, tracking: str = "store",
                 backing: str = "two-file"):
    """A machine of ``backend`` running ``policy`` (a name or spec, ``lazy:budget=8M``) over
    ``backing``."""
    if backend not in BACKENDS:
        raise InvalidArgument("backend", backend, f"unknown (choose from {', '.join(BACKENDS)})", hex_value=False)
    if tracking not in TRACKINGS:
        raise InvalidArgument("tracking", tracking, f"unknown (choose from {', '.join(TRACKINGS)})",
                              hex_value=False)
    from .vmm.machine import Machine, check_backing
    check_backing(backing)
    if tracking == "memslots" and backing != "two-file":
        raise InvalidArgument("tracking", tracking, "memslot tracking needs the two-file backing", hex_value=False)
    if backend == "host":
        if tracking != "store":
            raise InvalidArgument("tracking", tracking, "memslot tracking needs the kvm backend", hex_value=False)
        from .vmm.host import HostMachine
        machine_class = HostMachine
    elif tracking == "memslots":
        from .vmm.memslots import MemslotMachine
        machine_class = MemslotMachine
    else:
        machine_class = Machine
    if tracking == "memslots":
        return machine_class(vcpus=vcpus, policy=policy, memory_map=memory_map)
    return machine_class(vcpus=vcpus, policy=policy, memory_map=memory_map, backing=backing)


class _Sampler(threading.Thread):
    """Samples the engine's books every ``interval`` (a field read) and the kernel's
    allocation every ``KERNEL_EVERY`` samples and at the end: each kernel sample costs a
    cachestat per held run, made from this thread, which competes with the vCPU threads for
    the GIL, so it is kept rare enough not to show in the times it samples."""

    KERNEL_EVERY = 5

    def __init__(self, machine, interval: float):
        super().__init__(name="privmem-sampler", daemon=True)
        self.machine, self.interval = machine, interval
        self.stop_event = threading.Event()
        self.timeline: list[tuple[float, int, int | None]] = []
        self.peak_host_bytes = 0
        self.peak_double_measured = 0
        self.start_time = time.perf_counter()

    def sample(self, kernel: bool = True) -> None:
        engine = self.machine.engine
        measured = None
        if kernel:
            held = engine.allocated_bytes()
            self.peak_host_bytes = max(self.peak_host_bytes, held)
            measured = engine.measure_double_allocation()
            self.peak_double_measured = max(self.peak_double_measured, measured)
        self.timeline.append((time.perf_counter() - self.start_time, engine.stats.double_allocated_bytes, measured))

    def run(self) -> None:
        count = 0
        while not self.stop_event.wait(self.interval):
            count += 1
            self.sample(kernel=count % self.KERNEL_EVERY == 0)


def compile_trace(trace: Trace, timing: str = "none") -> Program:
    """A trace's ops compiled for its memory map and vCPUs (every op validated first)."""
    return Program.compile(trace.ops, trace.memory_map, trace.vcpus, timing)


def run_program(program: Program, name: str, policy: str = "never", backend: str | None = None,
                tracking: str = "store", sample_interval: float = SAMPLE_INTERVAL, timeout: float | None = None,
                machine_hook=None, backing: str = "two-file") -> RunResult:
    """Run a compiled program on a fresh machine of its memory map; the machine is closed
    before this returns.  ``machine_hook(machine)`` runs once the machine exists (the CLI
    uses it to close the machine on a signal).  ``policy`` is a name or a spec
    (``lazy:budget=8M,max_age=20ms``)."""
    backend = backend or default_backend()
    with make_machine(backend, program.memory_map, program.vcpus, policy, tracking, backing) as machine:
        if machine_hook is not None:
            machine_hook(machine)
        sampler = _Sampler(machine, sample_interval)
        start_all([sampler])
        try:
            result = machine.run_ops(program, timeout=timeout)
        finally:
            sampler.stop_event.set()
            join_all([sampler])
        sampler.sample()
        stats = machine.engine.stats
        memory_map = program.memory_map
        return RunResult(
            workload=name, policy=policy, backend=backend, memory=memory_map.ram_bytes, vcpus=program.vcpus,
            wall_s=result.wall_time, conversions=stats.conversions, pages_converted=stats.pages_converted,
            exits=result.exits, discards=stats.discards, discarded_bytes=stats.discarded_bytes,
            peak_double_alloc_bytes=stats.peak_double_allocated_bytes, peak_host_bytes=sampler.peak_host_bytes,
            data_errors=result.data_errors, tracking=tracking, dma_errors=result.dma_errors,
            psc_retries=result.psc_retries, psc_errors=result.psc_errors, reclaimed_bytes=stats.reclaimed_bytes,
            budget_bytes=getattr(machine.engine.policy, "budget_bytes", None),
            max_age_s=getattr(machine.engine.policy, "max_age", None),
            peak_double_alloc_measured_bytes=sampler.peak_double_measured, layout=memory_map.name,
            regions=memory_map.as_json(), ops=program.ops, timing=program.timing,
            peak_rss_bytes=peak_rss_bytes(), backing=backing, timeline=sampler.timeline)


def run_document(result: RunResult, argv: list[str] | None = None, *, scale: float | None = None,
                 seed: int | None = None, trace: str | None = None) -> dict:
    """``privmem run --json``: the envelope, then the result's keys (no timeline)."""
    from .results import document, requested

    settings = requested(workloads=[result.workload], policies=[result.policy], backend=result.backend,
                         layout=result.layout, memory=result.memory, vcpus=result.vcpus, repeat=1, scale=scale,
                         seed=seed, tracking=result.tracking, timing=result.timing, trace=trace,
                         backing=result.backing)
    return document("run", settings, result.as_dict(), argv)


def open_trace(path, timing: str = "none", check=None) -> tuple[Program, str, list[str]]:
    """Compile a trace file line by line (bounded memory whatever its length): the program,
    the trace's name, and the reader's warnings (e.g. no end marker).  ``check(memory_map,
    vcpus)`` runs once the header is read, before any op is: what it refuses costs no work."""
    from .workload.trace import TraceReader

    with TraceReader(path) as reader:
        if check is not None:
            check(reader.memory_map, reader.vcpus)
        program = Program.compile(reader, reader.memory_map, reader.vcpus, timing)
        return program, reader.name, reader.warnings


def workload_program(workload: str, memory: int | None = None, vcpus: int | None = None, seed: int | None = None,
                     scale: float | None = None, layout: str | None = None, timing: str = "none") -> tuple[Program, str]:
    """A generated workload compiled: the program and the trace's name.  None takes the
    generator's default (1 GiB, 1 vCPU, seed 0, scale 1, the flat layout)."""
    from .workload import generate

    given = {"memory": memory, "vcpus": vcpus, "seed": seed, "scale": scale, "layout": layout}
    trace = generate(workload, **{key: value for key, value in given.items() if value is not None})
    return compile_trace(trace, timing), trace.name


def run_trace(trace: Trace, policy: str = "never", backend: str | None = None, tracking: str = "store",
              sample_interval: float = SAMPLE_INTERVAL, timing: str = "none", backing: str = "two-file") -> RunResult:
    """Compile and run ``trace`` on a fresh machine."""
    with compile_trace(trace, timing) as program:
        return run_program(program, trace.name, policy, backend, tracking, sample_interval, backing=backing)


def peak_rss_bytes() -> int:
    """The process's peak resident set so far: VmHWM, the high-water mark of this process
    image (getrusage's ru_maxrss would also count the parent's resident set at fork, carried
    across exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
