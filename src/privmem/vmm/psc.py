"""Page-state-change (PSC) requests, modelled on the SEV-SNP GHCB PSC buffer.

Pure logic over the bytes of a vCPU's comm page (read from shared memory); no I/O.  The
guest is untrusted: ``serve`` validates EVERY entry before converting anything, and a
malformed request gets ``STATUS_INVALID`` with nothing changed, never an exception.

Layout (little-endian, offsets in the comm page):

======  =====  ===========================================================
0       u16    cur_entry: first entry still to do (the VMM writes progress)
2       u16    end_entry: index of the LAST entry (inclusive, as in SNP); < 253
4       u32    reserved, must be 0
8       u64[]  entries[253]: bits 0-11 cur_page (4 KiB pages of the entry
               already done), 12-51 gfn, 52-55 operation (1 private, 2 shared),
               56 pagesize (0 4 KiB, 1 2 MiB), 57-63 reserved (0)
2032    u32    status written by the VMM: 0 ok, 1 invalid, 2 busy (retry)
======  =====  ===========================================================

Adjacent entries with the same operation are merged into one conversion (as KVM merges
them into one MAP_GPA_RANGE exit).  On ``Busy`` the request stops at the first entry not
done: cur_entry and the done entries' cur_page record the progress, status says retry.

Two ways in: ``serve(page_bytes) -> Outcome`` (pure, for tests and tools) and
``serve_in_place(buffer)``, the VMM's per-exit path: it works on a writable view of the comm
page itself (no copy), takes a short path for the common request (one entry left, well
formed: one conversion, no objects built) and hands anything else to ``serve``.  Each
guest-controlled word is read once, and validation is complete before anything changes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

from ..errors import Busy, InvalidArgument, InvalidState, Unsupported
from ..units import PAGE_SHIFT, PAGE_SIZE

MAX_ENTRIES = 253
HEADER = struct.Struct("<HHI")
HEADER_SIZE = HEADER.size
ENTRY_SIZE = 8
ENTRIES_OFFSET = HEADER_SIZE
STATUS_OFFSET = ENTRIES_OFFSET + MAX_ENTRIES * ENTRY_SIZE       # 2032
STATUS = struct.Struct("<I")
REQUEST_BYTES = STATUS_OFFSET + STATUS.size                       # 2036

STATUS_OK, STATUS_INVALID, STATUS_RETRY = 0, 1, 2
# What a conversion may refuse with that is an answer to the guest, not a VMM failure: a
# range the engine will not take, a host limit (out of memslots), a machine that can no
# longer convert.
REFUSED = (InvalidArgument, Unsupported, InvalidState)
_U16, _U64 = struct.Struct("<H"), struct.Struct("<Q")
OP_PRIVATE, OP_SHARED = 1, 2

_CUR_PAGE_MASK = (1 << 12) - 1
_GFN_SHIFT, _GFN_MASK = 12, (1 << 40) - 1
_OP_SHIFT, _OP_MASK = 52, 0xF
_SIZE_BIT = 1 << 56
_RESERVED_MASK = ~((1 << 57) - 1) & ((1 << 64) - 1)
_PAGES_2M = 512


def encode_entry(gfn: int, op: int, huge: bool = False, cur_page: int = 0) -> int:
    return (cur_page & _CUR_PAGE_MASK) | (gfn << _GFN_SHIFT) | (op << _OP_SHIFT) | (_SIZE_BIT if huge else 0)


def encode_request(entries: list[int], cur_entry: int = 0, end_entry: int | None = None,
                   reserved: int = 0) -> bytes:
    """The first REQUEST_BYTES of a comm page holding ``entries`` (for tests and tools)."""
    if end_entry is None:
        end_entry = len(entries) - 1
    body = b"".join(struct.pack("<Q", e) for e in entries[:MAX_ENTRIES])
    page = HEADER.pack(cur_entry & 0xFFFF, end_entry & 0xFFFF, reserved) + body
    return page.ljust(STATUS_OFFSET, b"\0") + STATUS.pack(0xFFFFFFFF)


@dataclass(frozen=True)
class Entry:
    index: int
    gfn: int
    op: int
    huge: bool
    cur_page: int

    @property
    def npages(self) -> int:
        return _PAGES_2M if self.huge else 1

    @property
    def gpa(self) -> int:
        """First byte not yet done."""
        return (self.gfn + self.cur_page) << PAGE_SHIFT

    @property
    def end(self) -> int:
        return (self.gfn + self.npages) << PAGE_SHIFT


@dataclass(frozen=True)
class Run:
    """Merged adjacent entries [first, last] with one operation: one conversion."""
    first: int
    last: int
    gpa: int
    size: int
    to_private: bool


@dataclass
class Outcome:
    status: int
    cur_entry: int
    done: list[Entry] = field(default_factory=list)
    conversions: int = 0
    error: str | None = None

    def apply(self, buffer) -> None:
        """Write the progress and the status into ``buffer`` (the comm page) in place: what
        ``patch`` returns, without re-reading the guest's words."""
        _U16.pack_into(buffer, 0, self.cur_entry)
        for entry in self.done:
            _U64.pack_into(buffer, ENTRIES_OFFSET + entry.index * ENTRY_SIZE,
                           encode_entry(entry.gfn, entry.op, entry.huge, entry.npages))
        STATUS.pack_into(buffer, STATUS_OFFSET, self.status)

    def patch(self, page: bytes) -> tuple[bytes, bytes]:
        """(new bytes for [0, STATUS_OFFSET), status bytes): progress written back."""
        out = bytearray(page[:STATUS_OFFSET])
        struct.pack_into("<H", out, 0, self.cur_entry)     # unchanged for a malformed request
        for entry in self.done:
            off = ENTRIES_OFFSET + entry.index * ENTRY_SIZE
            raw = struct.unpack_from("<Q", out, off)[0]
            struct.pack_into("<Q", out, off, (raw & ~_CUR_PAGE_MASK) | entry.npages)
        return bytes(out), STATUS.pack(self.status)


def parse(page: bytes, memory_map) -> list[Entry]:
    """Validate the request in ``page`` against a guest whose RAM ``memory_map`` (a
    ``GuestMemoryMap``) lays out; return the entries from cur_entry to end_entry.  Raises
    InvalidArgument naming the first problem."""
    if len(page) < STATUS_OFFSET:
        raise InvalidArgument("psc.page", len(page), f"shorter than {STATUS_OFFSET} bytes", hex_value=False)
    cur_entry, end_entry, reserved = HEADER.unpack_from(page, 0)
    if reserved:
        raise InvalidArgument("psc.reserved", reserved, "header reserved field must be 0")
    if end_entry >= MAX_ENTRIES:
        raise InvalidArgument("psc.end_entry", end_entry, f"more entries than fit ({MAX_ENTRIES})",
                              hex_value=False)
    if cur_entry > end_entry:
        raise InvalidArgument("psc.cur_entry", cur_entry, f"beyond end_entry {end_entry}", hex_value=False)
    entries = []
    for index, raw in enumerate(struct.unpack_from(f"<{end_entry - cur_entry + 1}Q", page,
                                                   ENTRIES_OFFSET + cur_entry * ENTRY_SIZE), cur_entry):
        where = f"psc.entry[{index}]"
        if raw & _RESERVED_MASK:
            raise InvalidArgument(where, raw, "reserved bits 57-63 set")
        op = (raw >> _OP_SHIFT) & _OP_MASK
        if op not in (OP_PRIVATE, OP_SHARED):
            raise InvalidArgument(where, raw, f"unknown operation {op}")
        gfn = (raw >> _GFN_SHIFT) & _GFN_MASK
        huge = bool(raw & _SIZE_BIT)
        entry = Entry(index, gfn, op, huge, raw & _CUR_PAGE_MASK)
        if huge and gfn % _PAGES_2M:
            raise InvalidArgument(where, raw, "2 MiB entry not 2 MiB aligned")
        if entry.cur_page > entry.npages:
            raise InvalidArgument(where, raw, f"cur_page {entry.cur_page} beyond the entry's {entry.npages} pages")
        if not memory_map.contains(gfn << PAGE_SHIFT, entry.npages << PAGE_SHIFT):
            missing = memory_map.outside(gfn << PAGE_SHIFT, entry.npages << PAGE_SHIFT)
            raise InvalidArgument(where, raw, f"not guest RAM ({missing.why})")
        entries.append(entry)
    spans = sorted((e.gfn, e.gfn + e.npages, e.index) for e in entries)
    for (a_start, a_end, a_index), (b_start, _, b_index) in zip(spans, spans[1:]):
        if b_start < a_end:
            raise InvalidArgument(f"psc.entry[{b_index}]", b_start << PAGE_SHIFT,
                                  f"overlaps entry {a_index}")
    return entries


def merge(entries: list[Entry]) -> list[Run]:
    """Adjacent entries with the same operation become one run; finished entries are skipped."""
    runs: list[Run] = []
    for entry in entries:
        if entry.gpa >= entry.end:
            continue
        to_private = entry.op == OP_PRIVATE
        last = runs[-1] if runs else None
        if last is not None and last.to_private == to_private and last.gpa + last.size == entry.gpa:
            runs[-1] = Run(last.first, entry.index, last.gpa, entry.end - last.gpa, to_private)
        else:
            runs.append(Run(entry.index, entry.index, entry.gpa, entry.end - entry.gpa, to_private))
    return runs


def serve(page: bytes, memory_map, convert: Callable[[int, int, bool], object]) -> Outcome:
    """Validate and carry out the request in ``page``; ``convert(gpa, size, to_private)``
    does one conversion of a range of RAM the request named (validated) and may raise Busy.
    Never raises for a malformed request."""
    try:
        entries = parse(page, memory_map)
    except InvalidArgument as exc:
        return Outcome(STATUS_INVALID, HEADER.unpack_from(page, 0)[0] if len(page) >= 2 else 0,
                       error=str(exc))
    by_index = {e.index: e for e in entries}
    outcome = Outcome(STATUS_OK, entries[-1].index + 1)
    for run in merge(entries):
        try:
            convert(run.gpa, run.size, run.to_private)
        except Busy as exc:
            outcome.status, outcome.cur_entry, outcome.error = STATUS_RETRY, run.first, str(exc)
            break
        except REFUSED as exc:                  # refused: an error status for the guest
            outcome.status, outcome.cur_entry, outcome.error = STATUS_INVALID, run.first, str(exc)
            break
        outcome.conversions += 1
        outcome.done.extend(by_index[i] for i in range(run.first, run.last + 1))
    else:
        outcome.done = entries
    if outcome.status == STATUS_RETRY:
        # entries before the busy run are done (including ones skipped as already finished)
        outcome.done = [e for e in entries if e.index < outcome.cur_entry]
    return outcome


_OK = (STATUS_OK, None)
_ONE_ENTRY = 0x10001            # header with cur_entry == end_entry and reserved 0: one entry left
_TOP_4K_PRIVATE, _TOP_4K_SHARED = OP_PRIVATE, OP_SHARED             # bits 52-63 of a 4 KiB entry
_TOP_2M_PRIVATE, _TOP_2M_SHARED = OP_PRIVATE | 0x10, OP_SHARED | 0x10


def serve_in_place(buffer, memory_map, convert: Callable[[int, int, bool], object],
                   _u64=_U64.unpack_from, _pack64=_U64.pack_into, _pack16=_U16.pack_into,
                   _pack32=STATUS.pack_into) -> tuple[int, str | None]:
    """``serve`` on the comm page itself: ``buffer`` is writable (a memoryview of shared
    memory); progress and the status word are written into it.  Returns (status, error).

    Short path: one entry left (cur_entry == end_entry, header reserved 0), reserved bits
    clear, a known operation, cur_page 0, aligned and inside memory: one conversion.  A
    request failing any of these goes to ``serve``, which validates every entry and names
    the problem, so both paths accept and refuse exactly the same requests."""
    header = _u64(buffer, 0)[0]
    cur = header & 0xFFFF
    if header == cur * _ONE_ENTRY and cur < MAX_ENTRIES:
        offset = ENTRIES_OFFSET + cur * ENTRY_SIZE
        raw = _u64(buffer, offset)[0]
        top = raw >> _OP_SHIFT
        gfn = (raw >> _GFN_SHIFT) & _GFN_MASK
        if top == _TOP_4K_PRIVATE or top == _TOP_4K_SHARED:
            npages = 1
        elif (top == _TOP_2M_PRIVATE or top == _TOP_2M_SHARED) and not gfn % _PAGES_2M:
            npages = _PAGES_2M
        else:
            npages = 0
        if npages and not raw & _CUR_PAGE_MASK and memory_map.contains(gfn << PAGE_SHIFT, npages << PAGE_SHIFT):
            try:
                convert(gfn << PAGE_SHIFT, npages << PAGE_SHIFT, (top & _OP_MASK) == OP_PRIVATE)
            except Busy as exc:                  # nothing done: cur_entry stays, retry
                _pack32(buffer, STATUS_OFFSET, STATUS_RETRY)
                return STATUS_RETRY, str(exc)
            except REFUSED as exc:               # refused: an error status for the guest
                _pack32(buffer, STATUS_OFFSET, STATUS_INVALID)
                return STATUS_INVALID, str(exc)
            _pack16(buffer, 0, cur + 1)
            _pack64(buffer, offset, raw | npages)
            _pack32(buffer, STATUS_OFFSET, STATUS_OK)
            return _OK
    outcome = serve(buffer, memory_map, convert)
    outcome.apply(buffer)
    return outcome.status, outcome.error


__all__ = ["MAX_ENTRIES", "REQUEST_BYTES", "STATUS_OFFSET", "STATUS_OK", "STATUS_INVALID", "STATUS_RETRY",
           "OP_PRIVATE", "OP_SHARED", "Entry", "Run", "Outcome", "encode_entry", "encode_request",
           "parse", "merge", "serve", "serve_in_place", "PAGE_SIZE"]
