"""Import the conversions of a real guest from a QEMU trace log.

QEMU (accel/kvm/trace-events) traces, for each conversion and memory-fault exit::

    kvm_convert_memory(uint64_t start, uint64_t size, const char *msg)
        "start 0x%" PRIx64 " size 0x%" PRIx64 " %s"      msg = shared_to_private | private_to_shared
    kvm_memory_fault(uint64_t start, uint64_t size, uint64_t flags)
        "start 0x%" PRIx64 " size 0x%" PRIx64 " flags 0x%" PRIx64

The ``log`` trace backend prints ``<event> <args>``, optionally prefixed with ``pid@seconds.micros:``;
``simpletrace.py`` prints ``<event> <delta> pid=<pid> start=0x... size=0x... msg=...``.  Both are
read.  Every ``kvm_convert_memory`` line becomes a convert op.  A ``kvm_memory_fault`` line
becomes a convert op too (flags bit 0x8 = KVM_MEMORY_EXIT_FLAG_PRIVATE: to private, else to
shared), but QEMU handles a fault by calling ``kvm_convert_memory``, which traces its own line:
a conversion line that matches an earlier, not yet matched fault (same start, size and
direction) is counted in ``deduplicated`` and not emitted twice.  So a log with both events,
or with only one of them, gives the same ops.

Lines without these events are counted in ``skipped``.  A malformed event line (missing field,
bad hex, unaligned or zero range, unknown direction or fault flags, range past ``memory``) is
recorded in ``report.errors`` as ``(line, message)`` and skipped, or raises TraceError with
``strict=True``.

Memory: when not given, the highest end of any imported range rounded up to 2 MiB.  QEMU also
traces conversions of non-RAM ranges (MMIO) that it then ignores; pass ``memory`` to have
those reported as errors instead of stretching the guest.  The log does not name the vCPU, so
every op belongs to vCPU 0.  ``report.below_reserved`` counts ops inside the low 16 MiB that
privmem's machine keeps for itself: such a trace cannot be replayed there as it is.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Iterable

from ..errors import InvalidArgument, TraceError
from ..units import HUGE_PAGE_SIZE, PAGE_SIZE, is_page_aligned
from .generators import RESERVED
from ..ops import Op, Trace, check_memory, check_vcpus, convert

KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3
_EVENT_RE = re.compile(r"(?<![\w.])(kvm_convert_memory|kvm_memory_fault)(?![\w])(.*)$")
_HEX_RE = re.compile(r"^0x[0-9a-fA-F]+$")
DIRECTIONS = {"shared_to_private": "private", "private_to_shared": "shared"}


@dataclass
class ImportReport:
    lines: int = 0
    converted: int = 0          # convert ops emitted
    to_private: int = 0
    to_shared: int = 0
    faults: int = 0             # kvm_memory_fault lines read
    deduplicated: int = 0       # kvm_convert_memory lines that repeated a fault's conversion
    skipped: int = 0            # lines with neither event
    below_reserved: int = 0     # ops with gpa < RESERVED
    errors: list[tuple[int, str]] = field(default_factory=list)
    memory: int = 0
    memory_inferred: bool = False

    def as_dict(self) -> dict:
        return {"lines": self.lines, "converted": self.converted, "to_private": self.to_private,
                "to_shared": self.to_shared, "faults": self.faults, "deduplicated": self.deduplicated,
                "skipped": self.skipped, "below_reserved": self.below_reserved,
                "errors": len(self.errors), "memory": self.memory, "memory_inferred": self.memory_inferred}


def _fields(args: str) -> tuple[dict[str, str], list[str]]:
    """Split ``start 0x1 size 0x2 shared_to_private`` or ``start=0x1 size=0x2 msg=...`` into
    keyed values and bare words."""
    keyed: dict[str, str] = {}
    bare: list[str] = []
    tokens = args.replace(",", " ").split()
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if "=" in token:
            key, _, value = token.partition("=")
            keyed[key] = value
        elif token in ("start", "size", "flags") and i + 1 < len(tokens):
            keyed[token] = tokens[i + 1]
            i += 1
        else:
            bare.append(token)
        i += 1
    return keyed, bare


def _hex(keyed: dict[str, str], name: str) -> int:
    if name not in keyed:
        raise ValueError(f"missing {name}")
    text = keyed[name]
    if not _HEX_RE.match(text):
        raise ValueError(f"{name} {text!r} is not 0x-prefixed hex")
    return int(text, 16)


def parse_line(text: str) -> tuple[str, int, int, str] | None:
    """(event, start, size, to) from one log line, None if it holds neither event; raises
    ValueError naming the problem for a malformed event line."""
    match = _EVENT_RE.search(text)
    if not match:
        return None
    event, args = match.groups()
    keyed, bare = _fields(args)
    start, size = _hex(keyed, "start"), _hex(keyed, "size")
    if event == "kvm_convert_memory":
        msg = keyed.get("msg") or next((word for word in bare if word in DIRECTIONS), None)
        if msg is None:
            words = [w for w in bare if not re.fullmatch(r"[\d.]+", w)]
            raise ValueError(f"missing direction (shared_to_private or private_to_shared), got {words}")
        if msg not in DIRECTIONS:
            raise ValueError(f"unknown direction {msg!r}")
        to = DIRECTIONS[msg]
    else:
        flags = _hex(keyed, "flags")
        if flags & ~KVM_MEMORY_EXIT_FLAG_PRIVATE:
            raise ValueError(f"unknown memory-fault flags {flags:#x}")
        to = "private" if flags & KVM_MEMORY_EXIT_FLAG_PRIVATE else "shared"
    if size == 0:
        raise ValueError("size 0x0: empty range")
    if not is_page_aligned(start):
        raise ValueError(f"start {start:#x} not aligned to {PAGE_SIZE}")
    if not is_page_aligned(size):
        raise ValueError(f"size {size:#x} not a multiple of {PAGE_SIZE}")
    return event, start, size, to


def _lines(source: str | os.PathLike | IO | Iterable[str]):
    if isinstance(source, (str, os.PathLike)):
        with open(source, "r", encoding="utf-8", errors="replace") as file:
            yield from file
    else:
        for line in source:
            yield line.decode("utf-8", "replace") if isinstance(line, bytes) else line


def import_qemu_log(source: str | os.PathLike | IO | Iterable[str], memory: int | None = None,
                    vcpus: int = 1, strict: bool = False,
                    name: str = "qemu-log") -> tuple[Trace, ImportReport]:
    """Convert ops from a QEMU trace log (a path, an open file or an iterable of lines).
    See the module docstring for what is read, merged, inferred and reported."""
    if memory is not None:
        check_memory(memory)
    check_vcpus(vcpus)
    report = ImportReport()
    ops: list[Op] = []
    pending_faults: Counter = Counter()

    def fail(line: int, message: str, text: str) -> None:
        if strict:
            match = _EVENT_RE.search(text)
            raise TraceError(line, match.group(1) if match else "line", text.strip(), message)
        report.errors.append((line, message))

    for number, text in enumerate(_lines(source), start=1):
        report.lines += 1
        try:
            parsed = parse_line(text)
        except (ValueError, InvalidArgument) as err:
            fail(number, str(err), text)
            continue
        if parsed is None:
            report.skipped += 1
            continue
        event, start, size, to = parsed
        if memory is not None and start + size > memory:
            fail(number, f"range [{start:#x}, {start + size:#x}) is past guest memory ({memory:#x})", text)
            continue
        key = (start, size, to)
        if event == "kvm_memory_fault":
            report.faults += 1
            pending_faults[key] += 1
        elif pending_faults[key]:
            pending_faults[key] -= 1
            report.deduplicated += 1
            continue
        ops.append(convert(start, size, to))
        report.converted += 1
        if to == "private":
            report.to_private += 1
        else:
            report.to_shared += 1
        if start < RESERVED:
            report.below_reserved += 1

    if memory is None:
        highest = max((op.end for op in ops), default=0)
        memory = max(HUGE_PAGE_SIZE, (highest + HUGE_PAGE_SIZE - 1) // HUGE_PAGE_SIZE * HUGE_PAGE_SIZE)
        report.memory_inferred = True
    report.memory = memory
    return Trace(name, memory, vcpus, tuple(ops)).validate(), report
