"""The device model: DMA into and out of the guest's shared memory, on behalf of the guest.

The guest is untrusted, and so is everything it hands over: the record it points the
mailbox at is checked to be one of its own ring's records, its range to be RAM, shared and no
larger than ``MAX_DMA_BYTES``.  A request that fails a check is refused with a device status
and a counter, never an exception.  Data moves in chunks of ``CHUNK_BYTES`` through one
buffer per vCPU: a DMA_OUT reads the shared file (a read of a page never written copies
zeros and allocates nothing), a DMA_IN fills it, so no request makes the VMM allocate memory
in proportion to its size.

Check and transfer happen under one hold on the pages (``engine.device_access``: a tracker
pin), so no conversion can slip between them and punch or re-allocate memory the books do
not see.  A conversion in flight on the pages makes the device wait and retry, as a real
device's transfer would wait for the IOMMU mapping.

Data checks follow the guest's: under ``data_check="full"`` a DMA_OUT compares every byte;
under "sampled" the bytes a sampled guest WRITE defines (the first and the last qword of each
page; ``SAMPLE_OFFSETS``).  DMA_IN always writes every byte.
"""

from __future__ import annotations

import struct
import time

from ..errors import AccessDenied, Busy, InvalidArgument
from ..units import MiB, PAGE_SIZE
from .firmware import DEVICE_OK, DEVICE_REFUSED, MAILBOX, MAILBOX_FORMAT, MB_STATUS
from .program import (K_DELAY, K_DMA_IN, K_DMA_OUT, K_VERIFY, K_VERIFY_FULL, MAX_DMA_BYTES, decode,
                      view_of)

CHUNK_BYTES = 1 * MiB
SAMPLE_OFFSETS = ((0, 8), (PAGE_SIZE - 8, 8))
BUSY_WAIT_S = 1.0                    # a pin never waits longer on a conversion in flight
_QWORDS_PER_PAGE = PAGE_SIZE // 8
MAILBOX_RECORD = struct.Struct("<Q")
STATUS = struct.Struct("<I")


def fill(shared, pieces, pattern: int) -> None:
    """DMA_IN: write ``pattern`` over each ``(offset, size)`` piece of the shared backing, by
    file writes of at most CHUNK_BYTES (pages the VMM never maps do not count in its RSS)."""
    for offset, size in pieces:
        shared.fill_by_file(offset, size, pattern, CHUNK_BYTES)


def compare(shared, pieces, pattern: int, sampled: bool, buffer: bytearray) -> tuple[int, int, int] | None:
    """DMA_OUT: None if the pieces hold ``pattern`` (every byte, or each page's sample when
    ``sampled`` and the pieces are whole pages), else (offset into the range of the first
    differing byte, its value, differing bytes counted)."""
    reference = bytes((pattern,)) * len(buffer)
    first: tuple[int, int] | None = None
    wrong = 0
    done = 0
    for offset, size in pieces:
        exact = not sampled or (offset | size) % PAGE_SIZE
        pos = 0
        while pos < size:
            n = min(len(buffer), size - pos)
            view = memoryview(buffer)[:n]
            shared.read_into(offset + pos, view)
            found = _mismatch(view, pattern, reference, exact)
            if found is not None:
                where, value, count = found
                if first is None:
                    first = (done + pos + where, value)
                wrong += count
            pos += n
        done += size
    return None if first is None else (first[0], first[1], wrong)


def _mismatch(view: memoryview, pattern: int, reference: bytes, exact: bool) -> tuple[int, int, int] | None:
    if exact:
        data = view.tobytes()           # bytes == bytes is a memcmp; memoryview == bytes goes byte by byte
        if data == reference[:len(data)]:
            return None
        where = next(i for i, b in enumerate(data) if b != pattern)
        return where, data[where], len(data) - data.count(pattern)
    qwords = view.cast("Q")
    want = reference[:8 * (len(view) // PAGE_SIZE)]
    if qwords[::_QWORDS_PER_PAGE].tobytes() == want and qwords[_QWORDS_PER_PAGE - 1::_QWORDS_PER_PAGE].tobytes() == want:
        return None
    wrong = [page + start + i for page in range(0, len(view), PAGE_SIZE)
             for start, size in SAMPLE_OFFSETS for i in range(size) if view[page + start + i] != pattern]
    return wrong[0], view[wrong[0]], len(wrong)


REFUSALS = (AccessDenied, InvalidArgument, Busy)


def transfer(machine, index: int, kind: str, gpa: int, size: int, pattern: int, buffer: bytearray) -> str | None:
    """vCPU ``index``'s device transfer on either machine: ``dma_in`` fills the range with
    ``pattern``, ``dma_out`` checks it holds it (by the machine's ``data_check``), a mismatch
    counted and recorded.  Returns the refusal's text (the caller answers the guest), or None."""
    try:
        with DmaRequest(machine.engine, gpa, size, f"vCPU {index} DMA", machine.stopping) as pieces:
            if kind == "dma_in":
                fill(machine.shared, pieces, pattern)
                return None
            mismatch = compare(machine.shared, pieces, pattern, machine.data_check == "sampled", buffer)
    except REFUSALS as exc:
        return str(exc)
    if mismatch is not None:
        first, actual, wrong = mismatch
        machine.stats[index].data_errors += 1
        machine.record_failure(index, "dma_out", gpa=gpa + first, expected=pattern, actual=actual,
                               mismatched_bytes=wrong)
    return None


class DmaRequest:
    """One device transfer, validated: ``with DmaRequest(engine, gpa, size, owner) as pieces``
    holds the pages (retrying while a conversion is in flight) and yields the backing pieces;
    raises AccessDenied / InvalidArgument / Busy for a request the device refuses."""

    def __init__(self, engine, gpa: int, size: int, owner: str, stopping=lambda: False):
        if not isinstance(size, int) or not 0 < size <= MAX_DMA_BYTES:
            raise InvalidArgument("size", size, f"a device request moves 1 to {MAX_DMA_BYTES:#x} bytes")
        self.engine, self.gpa, self.size, self.owner, self.stopping = engine, gpa, size, owner, stopping
        self._context = None

    def __enter__(self):
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            context = self.engine.device_access(self.gpa, self.size, self.owner)
            try:
                pieces = context.__enter__()
            except Busy:
                if time.monotonic() > deadline or self.stopping():
                    raise
                time.sleep(50e-6)
                continue
            self._context = context
            return pieces

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


class DeviceModel:
    """The KVM machine's devices, one method per doorbell port (each returns False: the
    vCPU goes on).  ``machine`` gives the engine, the shared backing, the rings, the comm
    pages, the counters and the failure log."""

    def __init__(self, machine):
        self.machine = machine
        self._buffers = [bytearray(CHUNK_BYTES) for _ in range(machine.vcpus)]

    def _record(self, index: int, kinds: tuple[int, ...], port: str):
        """The ring record the vCPU's mailbox points at, if it is one of its own ring's and of
        one of ``kinds``; else None (counted and logged as a refused device request)."""
        machine = self.machine
        comm = machine.comm[index]
        address = MAILBOX_RECORD.unpack_from(comm, MAILBOX)[0]
        ring = machine.rings[index]
        offset = ring.record_at(address)
        if offset is not None:
            record = decode(ring.view, offset)
            if record.kind in kinds:
                return record
        self._refuse(index, port, f"mailbox record {address:#x} is not a {port} record of vCPU {index}'s ring")
        return None

    def _refuse(self, index: int, port: str, error: str, **details) -> None:
        machine = self.machine
        machine.stats[index].dma_errors += 1
        STATUS.pack_into(machine.comm[index], MB_STATUS, DEVICE_REFUSED)
        machine.record_failure(index, port, error=error, **details)

    def dma_in(self, index: int) -> bool:
        """The device writes the record's pattern over its range (shared pages only)."""
        return self._dma(index, K_DMA_IN, "dma_in")

    def dma_out(self, index: int) -> bool:
        """The device reads the record's range and checks it holds the pattern."""
        return self._dma(index, K_DMA_OUT, "dma_out")

    def _dma(self, index: int, record_kind: int, port: str) -> bool:
        record = self._record(index, (record_kind,), port)
        if record is None:
            return False
        gpa, size = record.addr, record.end - record.addr
        refused = transfer(self.machine, index, port, gpa, size, record.pattern, self._buffers[index])
        if refused is not None:
            self._refuse(index, port, refused, gpa=gpa, size=size)
        else:
            STATUS.pack_into(self.machine.comm[index], MB_STATUS, DEVICE_OK)
        return False

    def verify_fail(self, index: int) -> bool:
        """The guest found data that is not the pattern: first address and count reported."""
        machine = self.machine
        record = self._record(index, (K_VERIFY, K_VERIFY_FULL), "verify")
        if record is None:
            return False
        _, address, actual, count, _ = MAILBOX_FORMAT.unpack_from(machine.comm[index], MAILBOX)
        view, gpa = view_of(address)
        actual_bytes = (actual & (1 << 64) - 1).to_bytes(8, "little")
        offset = next((i for i, b in enumerate(actual_bytes) if b != record.pattern), 0)
        machine.stats[index].data_errors += 1
        machine.record_failure(index, "verify", gpa=gpa + offset, view=view, expected=record.pattern,
                               actual=actual_bytes[offset], mismatched_words=count)
        return False

    def delay(self, index: int) -> bool:
        """Replay a recorded gap: wait until the record's time (microseconds after the run
        started), in slices, so a stop is seen."""
        record = self._record(index, (K_DELAY,), "delay")
        if record is None:
            return False
        machine = self.machine
        machine.stats[index].delays += 1
        wake = machine.run_started + record.arg / 1e6
        while not machine.stopping():
            left = wake - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.05))
        return False


__all__ = ["CHUNK_BYTES", "DeviceModel", "DmaRequest", "REFUSALS", "SAMPLE_OFFSETS", "compare", "fill"]
