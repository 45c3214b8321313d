"""What both machines show their callers alike: the counters summed over vCPUs, the device's
access to shared memory, running ops, and the context-manager protocol.

A machine class provides ``stats`` (one ``VcpuStats`` per vCPU), ``failures``, ``engine``,
``shared``, ``memory_map``, ``vcpus``, ``data_check`` ("full" or "sampled"), ``launched``,
``_closed`` and ``_run_program(program, timeout)``.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from . import program
from .device import CHUNK_BYTES, compare
from .result import OpsResult

MAX_FAILURES = 100


class MachineFront:
    def _total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.stats)

    psc_errors = property(lambda self: self._total("psc_errors"), doc="malformed PSC requests refused")
    psc_retries = property(lambda self: self._total("psc_retries"), doc="PSC requests answered 'retry'")
    data_errors = property(lambda self: self._total("data_errors"), doc="verify / dma_out mismatches")
    dma_errors = property(lambda self: self._total("dma_errors"), doc="device requests refused")
    conversions = property(lambda self: self._total("conversions"), doc="guest conversions the engine took")

    @property
    def exits(self) -> int:
        return sum(sum(s.exits) for s in self.stats)

    def record_failure(self, index: int, kind: str, **details) -> None:
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(dict(vcpu=index, kind=kind, **details))

    # -- device access to guest RAM -----------------------------------------------------

    def shared_read(self, gpa: int, n: int) -> bytes:
        """Device read of guest RAM through the shared view; AccessDenied if any touched page
        is private, InvalidArgument outside RAM.  ``gpa`` has no shared bit."""
        return b"".join(self.shared.read(offset, size) for offset, size in self.engine.check_device_access(gpa, n))

    def shared_write(self, gpa: int, data: bytes) -> None:
        """Device write through the shared view; AccessDenied if any touched page is private."""
        data = memoryview(bytes(data))
        done = 0
        for offset, size in self.engine.check_device_access(gpa, len(data)):
            self.shared.write(offset, data[done:done + size])
            done += size

    def shared_matches(self, gpa: int, size: int, pattern: int) -> bool:
        """True if the shared view of [gpa, gpa + size) holds ``pattern`` by the rule DMA_OUT
        uses (every byte under "full", each page's sample under "sampled").  Raises like
        ``shared_read``."""
        if not isinstance(pattern, int) or isinstance(pattern, bool) or not 0 <= pattern <= 0xFF:
            raise InvalidArgument("pattern", pattern, "must be in 0..255", hex_value=False)
        pieces = self.engine.check_device_access(gpa, size)
        buffer = bytearray(min(size, CHUNK_BYTES) or 1)
        return compare(self.shared, pieces, pattern, self.data_check == "sampled", buffer) is None

    # -- running ops --------------------------------------------------------------------

    def launch(self) -> None:
        """Seal private memory (the engine seals the private backing); done by the first run."""
        if not self.launched:
            self.engine.launch()
            self.launched = True

    def run_ops(self, ops, timeout: float | None = None, timing: str = "none") -> OpsResult:
        """Run ``ops`` (a ``Program``, or ``privmem.ops.Op`` objects, compiled here); every
        vCPU runs its own ops in order.  Returns what happened; raises what a vCPU raised
        (GuestError for a guest crash, ...), ``Interrupted`` on timeout or ``close()``,
        KeyboardInterrupt once every vCPU has stopped."""
        compiled = ops if isinstance(ops, program.Program) else \
            program.Program.compile(ops, self.memory_map, self.vcpus, timing)
        try:
            if compiled.memory_map != self.memory_map or compiled.vcpus > self.vcpus:
                raise InvalidArgument("program", compiled, f"compiled for another machine than this one "
                                      f"({self.memory_map.describe()}, {self.vcpus} vCPUs)", hex_value=False)
            return self._run_program(compiled, timeout)
        finally:
            if compiled is not ops:
                compiled.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["MAX_FAILURES", "MachineFront"]
