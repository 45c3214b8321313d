"""The host kernel's KVM tracepoints that carry conversions, as trace-cmd and perf print them
(the text after ``event:`` is the tracepoint's TP_printk; both tools print it the same way).

``kvm:kvm_vm_set_mem_attributes`` (include/trace/events/kvm.h, Linux 6.17+; the agreed new name
``kvm_set_vm_mem_attributes`` is read too) fires on every KVM_SET_MEMORY_ATTRIBUTES call, no-op
calls included, with ``TP_printk("%#016llx -- %#016llx [0x%lx]", start, end, attr)``: gfns, end
exclusive; ``attr`` 0x8 is private, 0x0 shared.  C's ``#`` flag prints zero without ``0x``
(``0000000000000000``), so a conversion starting at GPA 0 reads that way.

``kvm:kvm_vmgexit_msr_protocol_enter`` (arch/x86/kvm/trace.h) prints ``vcpu %u, ghcb_gpa
%016llx``: an SEV-SNP guest's GHCB MSR request.  Low 12 bits 0x014 make it a page-state change
of one page: gfn in bits 51:12, operation in bits 55:52 (1 private, 2 shared).  KVM hands it to
the VMM, which converts with KVM_SET_MEMORY_ATTRIBUTES on the same thread, so the request
announces the set_mem_attributes event that follows.  ``kvm_vmgexit_enter`` with exit reason
0x80000010 is a GHCB page-state change whose entries are in guest memory, not in the trace:
counted, so the user learns such requests exist, and their set_mem_attributes events carry
the ranges.
"""

from __future__ import annotations

import re

from ...ops import TRACE_MAX_VCPUS
from .events import Dropped, LineResult, Malformed, Skipped, Thread, frame_range, hex_value, stamp_ns

SET_ATTRIBUTES_EVENTS = ("kvm_vm_set_mem_attributes", "kvm_set_vm_mem_attributes")
MSR_PROTOCOL_EVENT = "kvm_vmgexit_msr_protocol_enter"
VMGEXIT_EVENT = "kvm_vmgexit_enter"
EVENTS = SET_ATTRIBUTES_EVENTS + (MSR_PROTOCOL_EVENT,)

KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
GHCB_MSR_INFO_MASK = 0xFFF
GHCB_MSR_PSC_REQ = 0x014
GHCB_MSR_PSC_GFN_SHIFT, GHCB_MSR_PSC_GFN_MASK = 12, (1 << 40) - 1
GHCB_MSR_PSC_OP_SHIFT, GHCB_MSR_PSC_OP_MASK = 52, 0xF
SNP_PAGE_STATE_PRIVATE, SNP_PAGE_STATE_SHARED = 1, 2
SVM_VMGEXIT_PSC = 0x80000010

_SET_ATTRIBUTES = re.compile(r"(\S+)\s+--\s+(\S+)\s+\[(\S+)\]\s*$")
_MSR_PROTOCOL = re.compile(r"vcpu (\d+), ghcb_gpa (\S+)\s*$")
_VMGEXIT = re.compile(r"vcpu \d+, exit_reason ([0-9a-fA-F]+)")
_KNOWN_EVENT = re.compile(rf"\b(?:{'|'.join(EVENTS)})\b")
_VCPU_THREAD = re.compile(r"CPU (\d+)/KVM")           # QEMU's vCPU thread names


def thread_of(tid: int, comm: str) -> Thread:
    """The thread, with its vCPU when QEMU named it ("CPU 3/KVM")."""
    named = _VCPU_THREAD.fullmatch(comm)
    vcpu = int(named.group(1)) if named else None
    return Thread(tid, comm, vcpu if vcpu is not None and vcpu < TRACE_MAX_VCPUS else None)


def _bare_hex(text: str, name: str) -> int:
    """``%016llx``: hex without ``0x`` (taken with it as well)."""
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    try:
        value = int(digits, 16)
    except ValueError:
        raise Malformed(f"{name} {text[:24]!r} is not hex") from None
    if len(digits) > 16:
        raise Malformed(f"{name} {text[:24]!r} is wider than 64 bits")
    return value


def parse_payload(event: str, info: str, thread: Thread, stamp: int | None) -> LineResult:
    """What one tracepoint's printed fields say; ``event`` without its ``kvm:`` system."""
    if event in SET_ATTRIBUTES_EVENTS:
        match = _SET_ATTRIBUTES.match(info.strip())
        if not match:
            raise Malformed(f"expected 'START -- END [ATTR]', got {info.strip()[:60]!r}")
        first = hex_value(match.group(1), "start gfn", zero_without_prefix=True)
        end = hex_value(match.group(2), "end gfn", zero_without_prefix=True)
        attributes = hex_value(match.group(3), "attributes", zero_without_prefix=True)
        if attributes & ~KVM_MEMORY_ATTRIBUTE_PRIVATE:
            raise Malformed(f"unknown memory attributes {attributes:#x}")
        return frame_range(event, first, end, bool(attributes), thread=thread, stamp_ns=stamp)
    if event == MSR_PROTOCOL_EVENT:
        match = _MSR_PROTOCOL.match(info.strip())
        if not match:
            raise Malformed(f"expected 'vcpu N, ghcb_gpa HEX', got {info.strip()[:60]!r}")
        request = _bare_hex(match.group(2), "ghcb_gpa")
        if request & GHCB_MSR_INFO_MASK != GHCB_MSR_PSC_REQ:
            return Skipped("SNP MSR-protocol request other than a page-state change")
        vcpu = int(match.group(1))
        if vcpu >= TRACE_MAX_VCPUS:
            raise Malformed(f"vcpu {vcpu} is not below {TRACE_MAX_VCPUS}")
        operation = request >> GHCB_MSR_PSC_OP_SHIFT & GHCB_MSR_PSC_OP_MASK
        if operation not in (SNP_PAGE_STATE_PRIVATE, SNP_PAGE_STATE_SHARED):
            raise Malformed(f"unknown page-state operation {operation} in ghcb_gpa {request:#x}")
        gfn = request >> GHCB_MSR_PSC_GFN_SHIFT & GHCB_MSR_PSC_GFN_MASK
        return frame_range(event, gfn, gfn + 1, operation == SNP_PAGE_STATE_PRIVATE,
                           thread=thread._replace(vcpu=vcpu), stamp_ns=stamp, announces=True)
    if event == VMGEXIT_EVENT:
        match = _VMGEXIT.match(info.strip())
        if match and int(match.group(1), 16) == SVM_VMGEXIT_PSC:
            return Skipped("SNP GHCB page-state change (its entries are not traced)")
    return Skipped("other event")


class TracerText:
    """The text a host tracer prints for these tracepoints (``trace-cmd report``, ``perf
    script``), described by its patterns: ``event_line`` (groups comm, pid, ts, event, info),
    ``dropped`` (searched; groups cpu and count, either may be absent; only in lines holding
    the literal ``dropped_marker``, so the search costs an event line nothing) and ``header``
    (lines before the events, matched).  ``parse(text)`` is the importer's line parser."""

    def __init__(self, source: str, event_line: re.Pattern, dropped: re.Pattern, dropped_marker: str,
                 header: re.Pattern):
        self.source, self.event_line, self.header = source, event_line, header
        self.dropped, self.dropped_marker = dropped, dropped_marker

    def parse(self, text: str) -> LineResult:
        dropped = self.dropped.search(text) if self.dropped_marker in text else None
        if dropped:
            cpu, count = dropped.group("cpu"), dropped.group("count")
            return Dropped(int(count) if count is not None else None, f"CPU {cpu}" if cpu else "the ring buffer")
        if self.header.match(text):
            return Skipped(f"{self.source} header")
        match = self.event_line.match(text)
        if match is None:
            if _KNOWN_EVENT.search(text):
                raise Malformed(f"names a KVM conversion event but is not a {self.source} event line")
            return Skipped(f"not a {self.source} event line")
        event = match.group("event").rpartition(":")[2]
        timestamp = match.group("ts")
        # A timestamp without a fraction is a raw clock counter (trace-cmd -C x86-tsc): no seconds.
        stamp = stamp_ns(timestamp) if "." in timestamp else None
        thread = thread_of(int(match.group("pid")), match.group("comm").strip())
        return parse_payload(event, match.group("info"), thread, stamp)


__all__ = ["EVENTS", "SET_ATTRIBUTES_EVENTS", "TracerText", "parse_payload", "thread_of"]
