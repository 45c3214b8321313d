"""Ops compiled for the trace player (guest/player.S): 32-byte records, one spool per vCPU.

Record (little-endian)::

    u8 kind, u8 flags, u8 pattern, u8 0, u32 count, u64 addr, u64 end, u64 arg

kinds: 0 end, 1 convert, 2 write, 3 verify, 4 touch, 5 dma_in, 6 dma_out, 7 exits (``count``
OUTs to the no-op port: the exit round-trip benchmark), 8 a one-page convert (one PSC entry),
9 / 10 write / verify of every byte (the machine points kinds 2 / 3 at them under
``data_check="full"``: records do not depend on the machine), 11 refill (written by the VMM
at the end of each ring segment), 12 delay (``--timing recorded``: the VMM waits until
``arg`` microseconds after the start of the run).  flags (informational; the player reads
none): bit 0 to private (convert), bit 1 shared view (write, verify, touch).

The encoder does the player's arithmetic: ``addr`` is the address through the op's view
(the gpa for the private view, convert and device ops; ``SHARED_VA + gpa`` for the shared
view), ``end`` is ``addr + size``, ``arg`` the pattern byte replicated into a qword (write,
verify), the PSC operation bits (convert) or the whole PSC entry (one-page convert).

A :class:`Program` is a trace compiled once for a memory map and a number of vCPUs, and run
on any machine with that map: each vCPU's records go to a spool (in memory while small, a
temporary file beyond), streamed into the vCPU's op ring as the guest consumes it
(vmm/ring.py), so host memory does not grow with trace length.  Compiling validates every op
first, so a bad op is refused before anything runs.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ..errors import InvalidArgument
from ..memmap import GuestMemoryMap
from ..ops import Op, check_op_fits
from ..units import MiB, PAGE_SIZE
from . import psc
from .firmware import RECORD_BYTES, SHARED_VA

RECORD = struct.Struct("<BBBxIQQQ")
assert RECORD.size == RECORD_BYTES
K_END, K_CONVERT, K_WRITE, K_VERIFY, K_TOUCH, K_DMA_IN, K_DMA_OUT, K_EXITS = range(8)
K_CONVERT_PAGE, K_WRITE_FULL, K_VERIFY_FULL, K_REFILL, K_DELAY = range(8, 13)
KIND_CODES = {"end": K_END, "convert": K_CONVERT, "write": K_WRITE, "verify": K_VERIFY, "touch": K_TOUCH,
              "dma_in": K_DMA_IN, "dma_out": K_DMA_OUT, "exits": K_EXITS, "convert_page": K_CONVERT_PAGE,
              "write_full": K_WRITE_FULL, "verify_full": K_VERIFY_FULL, "refill": K_REFILL, "delay": K_DELAY}
FULL_CHECK_KINDS = {K_WRITE: K_WRITE_FULL, K_VERIFY: K_VERIFY_FULL}
F_PRIVATE, F_SHARED_VIEW = 1, 2
DATA_CHECKS = ("sampled", "full")
TIMINGS = ("none", "recorded")
MAX_DMA_BYTES = 256 * MiB            # one device request; a device moves bounded buffers
DELAY_THRESHOLD_US = 100             # recorded gaps shorter than this are not replayed
END_RECORD = RECORD.pack(K_END, 0, 0, 0, 0, 0, 0)
SPOOL_IN_MEMORY = 1 * MiB            # per vCPU; beyond, the spool goes to a temporary file
_PATTERN_QWORD = 0x0101010101010101
_PSC_OP = {True: psc.OP_PRIVATE << 52, False: psc.OP_SHARED << 52}


class Record(NamedTuple):
    kind: int
    flags: int
    pattern: int
    count: int
    addr: int
    end: int
    arg: int


def check_data_check(data_check: str) -> str:
    if data_check not in DATA_CHECKS:
        raise InvalidArgument("data_check", data_check, f"must be one of {', '.join(DATA_CHECKS)}",
                              hex_value=False)
    return data_check


def check_timing(timing: str) -> str:
    if timing not in TIMINGS:
        raise InvalidArgument("timing", timing, f"must be one of {', '.join(TIMINGS)}", hex_value=False)
    return timing


def encode(op: Op) -> bytes:
    """The record for ``op`` (already validated)."""
    kind, gpa, size, pattern = op.kind, op.gpa, op.size, op.pattern
    if kind == "convert":
        private = op.to == "private"
        if size == PAGE_SIZE:
            return RECORD.pack(K_CONVERT_PAGE, private, 0, 0, gpa, gpa + size, gpa | _PSC_OP[private])
        return RECORD.pack(K_CONVERT, private, 0, 0, gpa, gpa + size, _PSC_OP[private])
    if kind in ("dma_in", "dma_out"):
        return RECORD.pack(K_DMA_IN if kind == "dma_in" else K_DMA_OUT, 0, pattern, 0, gpa, gpa + size, 0)
    shared = op.view == "shared"
    addr = SHARED_VA + gpa if shared else gpa
    code = K_WRITE if kind == "write" else K_VERIFY if kind == "verify" else K_TOUCH
    return RECORD.pack(code, F_SHARED_VIEW if shared else 0, pattern or 0, 0, addr, addr + size,
                       (pattern or 0) * _PATTERN_QWORD)


def exits_record(count: int) -> bytes:
    """``count`` bare OUT exits (the round-trip benchmark)."""
    if not isinstance(count, int) or not 0 <= count < 1 << 32:
        raise InvalidArgument("count", count, "must fit in 32 bits", hex_value=False)
    return RECORD.pack(K_EXITS, 0, 0, count, 0, 0, 0)


def delay_record(at_us: int) -> bytes:
    return RECORD.pack(K_DELAY, 0, 0, 0, 0, 0, at_us)


def decode(raw: bytes | memoryview, offset: int = 0) -> Record:
    return Record(*RECORD.unpack_from(raw, offset))


def view_of(addr: int) -> tuple[str, int]:
    """``(view, gpa)`` of a player address (write / verify / touch records)."""
    return ("shared", addr - SHARED_VA) if addr >= SHARED_VA else ("private", addr)


def check_op(op: Op, memory_map: GuestMemoryMap, vcpus: int) -> None:
    """Raise InvalidArgument unless the player can run ``op`` on a machine with this map."""
    if not isinstance(op, Op):
        raise InvalidArgument("op", op, "not a privmem.ops.Op", hex_value=False)
    check_op_fits(op, memory_map, vcpus)
    if op.kind in ("dma_in", "dma_out") and op.size > MAX_DMA_BYTES:
        raise InvalidArgument("op.size", op.size, f"one device request moves at most {MAX_DMA_BYTES:#x} bytes")


class Spool:
    """One vCPU's records, appended while compiling and read back while running."""

    def __init__(self):
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="privmem-ops-")
        self._buffer = bytearray()
        self.records = 0

    def append(self, record: bytes) -> None:
        buffer = self._buffer
        buffer += record
        self.records += 1
        if len(buffer) >= 64 * 1024:
            self._file.write(buffer)
            buffer.clear()

    def finish(self) -> None:
        if self._buffer:
            self._file.write(self._buffer)
            self._buffer.clear()
        self._file.flush()

    def rewind(self) -> None:
        self._file.seek(0)

    def read_into(self, view: memoryview) -> int:
        """Fill ``view`` with the next records; returns how many."""
        return (self._file.readinto(view) or 0) // RECORD_BYTES

    def __iter__(self) -> Iterator[Record]:
        self.rewind()
        while True:
            chunk = self._file.read(RECORD_BYTES * 1024)
            if not chunk:
                return
            for fields in RECORD.iter_unpack(chunk):
                yield Record(*fields)

    def close(self) -> None:
        self._file.close()


class Program:
    """Ops compiled for a memory map and ``vcpus`` vCPUs (module docstring).

    ``Program.compile(ops, memory_map, vcpus)`` validates and encodes an iterable of ops as
    it streams by; ``add_exits`` appends the benchmark's bare exits.  ``ops`` counts trace ops,
    ``records[v]`` what each vCPU's spool holds.  A context manager; ``close()`` drops the
    spools.  One run at a time reads it.
    """

    def __init__(self, memory_map: GuestMemoryMap, vcpus: int, timing: str = "none"):
        self.memory_map, self.vcpus = memory_map, vcpus
        self.timing = check_timing(timing)
        self.spools = [Spool() for _ in range(vcpus)]
        self.ops = 0
        self._last_us = [0] * vcpus

    @classmethod
    def compile(cls, ops: Iterable[Op], memory_map: GuestMemoryMap, vcpus: int, timing: str = "none") -> "Program":
        program = cls(memory_map, vcpus, timing)
        try:
            program.extend(ops)
        except BaseException:
            program.close()
            raise
        return program

    def extend(self, ops: Iterable[Op]) -> None:
        memory_map, vcpus, spools = self.memory_map, self.vcpus, self.spools
        recorded = self.timing == "recorded"
        for index, op in enumerate(ops, self.ops):
            try:
                check_op(op, memory_map, vcpus)
            except InvalidArgument as err:
                raise InvalidArgument(f"ops[{index}].{err.field.removeprefix('op.')}", err.value, err.why,
                                      hex_value=err.field != "vcpu") from None
            spool = spools[op.vcpu]
            if recorded and op.t is not None:
                at = int(op.t * 1e6)
                if at - self._last_us[op.vcpu] >= DELAY_THRESHOLD_US:
                    spool.append(delay_record(at))
                    self._last_us[op.vcpu] = at
            spool.append(encode(op))
            self.ops += 1
        for spool in spools:
            spool.finish()

    def add_exits(self, vcpu: int, count: int) -> None:
        self.spools[vcpu].append(exits_record(count))
        self.spools[vcpu].finish()

    @property
    def records(self) -> list[int]:
        return [spool.records for spool in self.spools]

    def close(self) -> None:
        for spool in self.spools:
            spool.close()

    def __enter__(self) -> "Program":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Program {self.ops} ops for {self.vcpus} vCPU(s) on {self.memory_map.describe()}>"


__all__ = ["DATA_CHECKS", "K_END", "KIND_CODES", "MAX_DMA_BYTES", "Program", "RECORD", "Record", "Spool",
           "TIMINGS", "check_data_check", "check_op", "check_timing", "decode", "encode", "exits_record",
           "view_of"]
