"""QEMU's trace log: the conversions a guest asked QEMU for (accel/kvm/trace-events,
target/i386/kvm/trace-events)::

    kvm_convert_memory   "start 0x%" PRIx64 " size 0x%" PRIx64 " %s"   shared_to_private | private_to_shared
    kvm_memory_fault     "start 0x%" PRIx64 " size 0x%" PRIx64 " flags 0x%" PRIx64
    kvm_hc_map_gpa_range "gpa 0x%" PRIx64 " size 0x%" PRIx64 " attributes 0x%" PRIx64 " flags 0x%" PRIx64

``kvm_convert_memory`` is traced at the top of every conversion; a memory-fault exit (flags bit
0x8: a private access, so to private) and a MAP_GPA_RANGE hypercall (attributes bit 0x10:
encrypted, so to private; bits 0-1 the page size; size in bytes) each end in one, so they
announce it and the pipeline keeps one op per pair.  A log with any subset of the three
events gives the same ops.

The log backend has printed three line prefixes over the years; all are read, and so is
``simpletrace.py``'s ``<event> <delta> pid=<pid> start=0x...`` form (no time or thread is
taken from it)::

    12345@1764576000.123456:kvm_convert_memory start 0x7e000000 size 0x1000 private_to_shared
    2026-12-01T10:00:00.123456Z kvm_convert_memory start 0x7e000000 size 0x1000 shared_to_private
    kvm_convert_memory start 0x80000000 size 0x1000 private_to_shared

The number before ``@`` is the thread id of the vCPU thread that traced the event; times come
from whichever prefix has one.  Other qemu_log output shares the file and is skipped (counted
per reason).
"""

from __future__ import annotations

import calendar
import re
import time

from .events import Conversion, LineResult, Malformed, Skipped, Thread, byte_range, hex_value, stamp_ns
from .registry import importer

KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3           # include/uapi/linux/kvm.h
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
KVM_MAP_GPA_RANGE_PAGE_SZ_MASK = 0x3            # 0 = 4K, 1 = 2M, 2 = 1G
DIRECTIONS = {"shared_to_private": True, "private_to_shared": False}
EVENTS = ("kvm_convert_memory", "kvm_memory_fault", "kvm_hc_map_gpa_range")
_KEYS = ("start", "size", "flags", "gpa", "attributes")

_TID_PREFIX = re.compile(r"(\d+)@(\d+(?:\.\d+)?):")
_ISO_PREFIX = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?\s+")
_EVENT_NAMES = "|".join(EVENTS)
_EVENT_HERE = re.compile(rf"({_EVENT_NAMES})(?![\w])(.*)$")
# A line whose prefix is unknown (a journal, a wrapper script) still counts if it names an event.
_EVENT_ANYWHERE = re.compile(rf"(?<![\w.])({_EVENT_NAMES})(?![\w])(.*)$")
_TRACE_EVENT = re.compile(r"[a-z][a-z0-9]*_[a-z0-9_]+(?:\s|$)")


def _iso_stamp_ns(match: re.Match) -> int:
    """Nanoseconds since the epoch of an ISO-8601 prefix (UTC when no zone is printed)."""
    base, fraction, zone = match.groups()
    try:
        whole = time.strptime(base, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise Malformed(f"timestamp {match.group(0).strip()!r} is not a valid date and time") from None
    seconds = calendar.timegm(whole)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return stamp_ns(f"{seconds}.{fraction or 0}")


def _split_prefix(text: str) -> tuple[str, re.Match | None, re.Match | None]:
    """(the rest of the line, its ISO-8601 prefix, its ``tid@seconds:`` prefix); the times are
    read only for event lines, so a bad time on another line loses nothing."""
    iso = _ISO_PREFIX.match(text)
    if iso:
        text = text[iso.end():]
    tid = _TID_PREFIX.match(text)
    if tid:
        text = text[tid.end():]
    return text, iso, tid


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
        elif token in _KEYS and i + 1 < len(tokens):
            keyed[token] = tokens[i + 1]
            i += 1
        else:
            bare.append(token)
        i += 1
    return keyed, bare


def _number(keyed: dict[str, str], name: str) -> int:
    if name not in keyed:
        raise Malformed(f"missing {name}")
    return hex_value(keyed[name], name)


def _direction(keyed: dict[str, str], bare: list[str]) -> bool:
    msg = keyed.get("msg") or next((word for word in bare if word in DIRECTIONS), None)
    if msg is None:
        words = [word for word in bare if not re.fullmatch(r"[\d.]+", word)][:4]
        raise Malformed(f"missing direction (shared_to_private or private_to_shared), got {words}")
    if msg not in DIRECTIONS:
        raise Malformed(f"unknown direction {msg[:40]!r}")
    return DIRECTIONS[msg]


def parse_event(event: str, args: str, thread: Thread | None = None, stamp: int | None = None) -> Conversion:
    """The conversion one event's arguments describe; raises Malformed naming the problem."""
    keyed, bare = _fields(args)
    extra = {"thread": thread, "stamp_ns": stamp}
    if event == "kvm_convert_memory":
        start, size = _number(keyed, "start"), _number(keyed, "size")
        return byte_range(event, start, size, _direction(keyed, bare), **extra)
    if event == "kvm_memory_fault":
        start, size, flags = _number(keyed, "start"), _number(keyed, "size"), _number(keyed, "flags")
        if flags & ~KVM_MEMORY_EXIT_FLAG_PRIVATE:
            raise Malformed(f"unknown memory-fault flags {flags:#x}")
        return byte_range(event, start, size, bool(flags & KVM_MEMORY_EXIT_FLAG_PRIVATE), announces=True, **extra)
    gpa, size, attributes = _number(keyed, "gpa"), _number(keyed, "size"), _number(keyed, "attributes")
    if attributes & ~(KVM_MAP_GPA_RANGE_ENCRYPTED | KVM_MAP_GPA_RANGE_PAGE_SZ_MASK) \
            or attributes & KVM_MAP_GPA_RANGE_PAGE_SZ_MASK == KVM_MAP_GPA_RANGE_PAGE_SZ_MASK:
        raise Malformed(f"unknown MAP_GPA_RANGE attributes {attributes:#x}")
    return byte_range(event, gpa, size, bool(attributes & KVM_MAP_GPA_RANGE_ENCRYPTED), announces=True, **extra)


@importer("qemu-log", "QEMU -trace log (kvm_convert_memory, kvm_hc_map_gpa_range, kvm_memory_fault), "
                      "any of its three line prefixes")
def parse_line(text: str) -> LineResult:
    """One log line: a Conversion, or Skipped; raises Malformed for a bad event line."""
    rest, iso, tid = _split_prefix(text)
    match = _EVENT_HERE.match(rest)
    thread = stamp = None
    if match is None:
        match = _EVENT_ANYWHERE.search(text)
        if match is None:
            if iso or tid or _TRACE_EVENT.match(rest):
                return Skipped("other trace event")
            return Skipped("not a trace event (other QEMU output)")
    else:
        if tid:
            thread = Thread(int(tid.group(1)))
        if iso:
            stamp = _iso_stamp_ns(iso)
        elif tid:
            stamp = stamp_ns(tid.group(2))
    event, args = match.groups()
    return parse_event(event, args, thread, stamp)


__all__ = ["DIRECTIONS", "EVENTS", "KVM_MEMORY_EXIT_FLAG_PRIVATE", "parse_event", "parse_line"]
