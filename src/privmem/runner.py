"""Run one trace on one backend under one policy, and report what it cost.

The backend is the real KVM machine wherever /dev/kvm is usable, else the host backend.
While the guest runs, a sampler records the engine's double allocation (its books) and the
bytes the kernel says both backings hold (``peak_host_bytes``), for the tables and plots.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field

from .errors import InvalidArgument
from .ops import Trace

BACKENDS = ("kvm", "host")
TRACKINGS = ("store", "memslots")
SAMPLE_INTERVAL = 0.05


def kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


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
    reclaimed_bytes: int = 0
    budget_bytes: int | None = None
    peak_double_alloc_measured_bytes: int = 0   # kernel: allocation in the unused side, sampled
    timeline: list = field(default_factory=list)  # [(seconds, double-allocated bytes)]

    def as_dict(self, timeline: bool = False) -> dict:
        out = asdict(self)
        if not timeline:
            out.pop("timeline")
        return out


def make_machine(backend: str, memory: int, vcpus: int, policy: str, tracking: str = "store"):
    if backend not in BACKENDS:
        raise InvalidArgument("backend", backend, f"unknown (choose from {', '.join(BACKENDS)})", hex_value=False)
    if tracking not in TRACKINGS:
        raise InvalidArgument("tracking", tracking, f"unknown (choose from {', '.join(TRACKINGS)})",
                              hex_value=False)
    if backend == "host":
        if tracking != "store":
            raise InvalidArgument("tracking", tracking, "memslot tracking needs the kvm backend", hex_value=False)
        from .vmm.host import HostMachine
        return HostMachine(memory, vcpus, policy=policy)
    from .vmm.machine import Machine
    if tracking == "memslots":
        from .vmm.memslots import MemslotMachine
        return MemslotMachine(memory, vcpus, policy=policy)
    return Machine(memory, vcpus, policy=policy)


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
        self.timeline: list[tuple[float, int]] = []
        self.peak_host_bytes = 0
        self.peak_double_measured = 0
        self.start_time = time.perf_counter()

    def sample(self, kernel: bool = True) -> None:
        engine = self.machine.engine
        self.timeline.append((time.perf_counter() - self.start_time, engine.stats.double_allocated_bytes))
        if kernel:
            held = engine.shared.allocated_bytes() + engine.private.allocated_bytes()
            self.peak_host_bytes = max(self.peak_host_bytes, held)
            self.peak_double_measured = max(self.peak_double_measured, engine.measure_double_allocation())

    def run(self) -> None:
        count = 0
        while not self.stop_event.wait(self.interval):
            count += 1
            self.sample(kernel=count % self.KERNEL_EVERY == 0)


def run_trace(trace: Trace, policy: str = "never", backend: str | None = None, tracking: str = "store",
              sample_interval: float = SAMPLE_INTERVAL) -> RunResult:
    """Run ``trace`` on a fresh machine; the machine is closed before this returns."""
    backend = backend or default_backend()
    with make_machine(backend, trace.memory, trace.vcpus, policy, tracking) as machine:
        sampler = _Sampler(machine, sample_interval)
        sampler.start()
        try:
            result = machine.run_ops(trace.ops)
        finally:
            sampler.stop_event.set()
            sampler.join()
        sampler.sample()
        stats = machine.engine.stats
        return RunResult(
            workload=trace.name, policy=policy, backend=backend, memory=trace.memory, vcpus=trace.vcpus,
            wall_s=result.wall_time, conversions=stats.conversions, pages_converted=stats.pages_converted,
            exits=result.exits, discards=stats.discards, discarded_bytes=stats.discarded_bytes,
            peak_double_alloc_bytes=stats.peak_double_allocated_bytes, peak_host_bytes=sampler.peak_host_bytes,
            data_errors=result.data_errors, tracking=tracking, dma_errors=result.dma_errors,
            psc_retries=result.psc_retries, reclaimed_bytes=stats.reclaimed_bytes,
            budget_bytes=getattr(machine.engine.policy, "budget", None),
            peak_double_alloc_measured_bytes=sampler.peak_double_measured, timeline=sampler.timeline)
