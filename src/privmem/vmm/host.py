"""The host backend: the same engine and backings as the KVM machine, driven by a Python guest.

For machines without /dev/kvm and for fast tests.  Each vCPU is a Python thread that runs
its ops directly: conversions go through ``engine.convert`` (retrying on Busy, as the
player retries a PSC request answered 'retry'), guest reads and writes go to the backing
of the view they name, and DMA goes through ``shared_read`` / ``shared_write``, which refuse
private pages exactly as the machine's device model does.

The VMM side seals the private backing at launch like the machine does.  The guest keeps a
mapping of its own (``_guest_private``): on real hardware that is the guest's page tables,
which the VMM does not have.
"""

from __future__ import annotations

import threading
import time

from ..attrs import MemoryAttributes
from ..backing import PrivateBacking, SharedBacking
from ..backing.mapping import HostMapping
from ..convert import ConversionEngine, ConversionTracker, make_policy
from ..convert.drainer import Drainer
from ..errors import AccessDenied, Busy, InvalidArgument, InvalidState
from ..units import PAGE_SIZE, parse_size
from . import layout
from .result import OpsResult

_BUSY_RETRY_LIMIT = 1_000_000


class HostMachine:
    """``HostMachine(memory, vcpus=1, engine=None, policy="never", initial="private")``:
    ``engine`` is None (built with ``policy``), an engine, or a factory ``engine(shared, private)``;
    the machine's interface (``run_ops``, ``shared_read``, ``shared_write``, ``engine``,
    ``reserved_bytes``) without KVM.  A context manager; ``close()`` is idempotent."""

    backend = "host"

    def __init__(self, memory: int | str = "64M", vcpus: int = 1, engine=None, policy: str = "never", *,
                 initial: str = "private"):
        memory = parse_size(memory, "memory")
        if memory < 2 * layout.RESERVED_BYTES or memory % PAGE_SIZE:
            raise InvalidArgument("memory", memory, f"must be page aligned and at least "
                                  f"{2 * layout.RESERVED_BYTES:#x}")
        if not isinstance(vcpus, int) or not 1 <= vcpus <= layout.MAX_VCPUS:
            raise InvalidArgument("vcpus", vcpus, f"must be in 1..{layout.MAX_VCPUS}", hex_value=False)
        if initial not in ("private", "shared"):
            raise InvalidArgument("initial", initial, "must be 'private' or 'shared'", hex_value=False)
        self.memory, self.vcpus = memory, vcpus
        self.reserved_bytes = layout.RESERVED_BYTES
        self.launched = False
        self._closed = False
        self.shared = SharedBacking.create(memory)
        try:
            self.private = PrivateBacking.standin(memory)
            self._guest_private = HostMapping(self.private.fd, memory)
            if engine is None:
                engine = ConversionEngine(ConversionTracker(MemoryAttributes()), make_policy(policy, memory),
                                          self.shared, self.private)
            elif not hasattr(engine, "convert"):   # a factory over this machine's backings, as Machine takes
                engine = engine(self.shared, self.private)
            self.engine = engine
            self.engine.set_initial(0, self.reserved_bytes, True)
            self.engine.set_initial(self.reserved_bytes, memory - self.reserved_bytes, initial == "private")
        except BaseException:
            self.close()
            raise
        self.exits = 0

    # -- device access ------------------------------------------------------------------

    def shared_read(self, gpa: int, n: int) -> bytes:
        """Device read through the shared view; AccessDenied if any touched page is private."""
        self.engine.check_device_access(gpa, n)
        return self.shared.read(gpa, n)

    def shared_write(self, gpa: int, data: bytes) -> None:
        """Device write through the shared view; AccessDenied if any touched page is private."""
        self.engine.check_device_access(gpa, len(data))
        self.shared.write(gpa, data)

    def shared_matches(self, gpa: int, size: int, pattern: int) -> bool:
        """True if every byte of the shared view of the range is ``pattern`` (the Python guest
        writes whole pages, so the host backend's check is always byte-exact)."""
        if not isinstance(pattern, int) or not 0 <= pattern <= 0xFF:
            raise InvalidArgument("pattern", pattern, "must be in 0..255", hex_value=False)
        return self.shared_read(gpa, size) == bytes([pattern]) * size

    # -- the Python guest ----------------------------------------------------------------

    def _view(self, view: str):
        return self._guest_private if view == "private" else self.shared

    def _run_vcpu(self, ops, counters: dict) -> None:
        engine = self.engine
        for op in ops:
            kind = op.kind
            if kind == "convert":
                for _ in range(_BUSY_RETRY_LIMIT):
                    try:
                        engine.convert(op.gpa, op.size, op.to == "private", op.vcpu)
                        break
                    except Busy:
                        counters["psc_retries"] += 1
                        time.sleep(0)
                counters["conversions"] += 1
                counters["exits"] += 1
            elif kind == "write":
                self._view(op.view).fill(op.gpa, op.size, op.pattern)
            elif kind == "verify":
                if self._view(op.view).read(op.gpa, op.size) != bytes([op.pattern]) * op.size:
                    counters["data_errors"] += 1
            elif kind == "touch":
                mapping = self._view(op.view)
                for gpa in range(op.gpa, op.gpa + op.size, PAGE_SIZE):
                    mapping.write(gpa, mapping.read(gpa, 1))
            else:
                counters["exits"] += 1
                try:
                    if kind == "dma_in":
                        self.shared_write(op.gpa, bytes([op.pattern]) * op.size)
                    elif not self.shared_matches(op.gpa, op.size, op.pattern):
                        counters["data_errors"] += 1
                except AccessDenied:
                    counters["dma_errors"] += 1

    def run_ops(self, ops, timeout: float | None = None) -> OpsResult:
        """Run ``ops``; every vCPU runs its own ops in order, in a thread of its own."""
        if self._closed:
            raise InvalidState("machine is closed")
        per_vcpu: list[list] = [[] for _ in range(self.vcpus)]
        for index, op in enumerate(ops):
            if op.vcpu >= self.vcpus:
                raise InvalidArgument(f"ops[{index}].vcpu", op.vcpu, f"must be < vcpus ({self.vcpus})",
                                      hex_value=False)
            if op.gpa < self.reserved_bytes or op.gpa + op.size > self.memory:
                raise InvalidArgument(f"ops[{index}].gpa", op.gpa, "outside workload memory "
                                      f"[{self.reserved_bytes:#x}, {self.memory:#x})")
            per_vcpu[op.vcpu].append(op)
        if not self.launched:
            self.engine.launch()
            self.launched = True
        names = ("exits", "conversions", "psc_retries", "data_errors", "dma_errors")
        counters = [dict.fromkeys(names, 0) for _ in range(self.vcpus)]
        errors: list[BaseException] = []

        def main(index):
            try:
                self._run_vcpu(per_vcpu[index], counters[index])
            except BaseException as error:  # re-raised in the caller, as the machine does
                errors.append(error)

        converted_before = self.engine.stats.pages_converted
        start = time.perf_counter()
        threads = [threading.Thread(target=main, args=(i,), name=f"privmem-host-vcpu{i}") for i in range(self.vcpus)]
        with Drainer.for_engine(self.engine):
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout)
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        total = {name: sum(c[name] for c in counters) for name in names}
        self.exits += total["exits"]
        return OpsResult(ops=sum(map(len, per_vcpu)), wall_time=wall, exits=total["exits"],
                         exits_by_reason={"IO": total["exits"]} if total["exits"] else {},
                         conversions=total["conversions"],
                         pages_converted=self.engine.stats.pages_converted - converted_before,
                         psc_requests=total["conversions"], psc_errors=0, psc_retries=total["psc_retries"],
                         data_errors=total["data_errors"], dma_errors=total["dma_errors"])

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for name in ("_guest_private",):
            mapping = getattr(self, name, None)
            if mapping is not None:
                mapping.unmap()
        for backing in (getattr(self, "private", None), self.shared):
            if backing is not None:
                backing.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
