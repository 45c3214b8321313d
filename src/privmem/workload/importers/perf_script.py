"""``perf script`` text of a host recording of the KVM conversion tracepoints
(:mod:`.kvm_events`), e.g. ``perf record -a -e kvm:kvm_vm_set_mem_attributes`` then
``perf script > script.txt``.  Each event line, with perf's default fields for tracepoints
(comm, tid, cpu, time, event, trace), is::

       CPU 0/KVM 12345 [003]  1234.567890: kvm:kvm_vm_set_mem_attributes: 0x00000000080000 -- 0x00000000080001 [0x8]

``pid/tid`` (``-F +pid``) and a missing ``[cpu]`` (a per-process recording) are read too; the
time is seconds with micro- or nanoseconds (``--ns``).  ``PERF_RECORD_LOST`` lines
(``--show-lost-events``) say the ring buffer lost events; ``#`` header lines are skipped.
"""

from __future__ import annotations

import re

from .events import LineResult
from .kvm_events import TracerText
from .registry import importer

PERF_SCRIPT = TracerText(
    "perf script",
    event_line=re.compile(r"\s*(?P<comm>.*?)\s+(?:\d+/)?(?P<pid>\d+)\s+(?:\[(?P<cpu>\d+)\]\s+)?"
                          r"(?P<ts>\d+\.\d+):\s+(?:\d+\s+)?(?P<event>[\w-]+:\w+):\s?(?P<info>.*)$"),
    dropped=re.compile(r"(?:\[(?P<cpu>\d+)\].*)?PERF_RECORD_LOST(?:_SAMPLES)?:?\s+lost[:= ]\s*(?P<count>\d+)"),
    dropped_marker="PERF_RECORD_LOST",
    header=re.compile(r"\s*#"))


@importer("perf-script", "perf script text of kvm:kvm_vm_set_mem_attributes (or kvm_set_vm_mem_attributes) "
                         "and kvm:kvm_vmgexit_msr_protocol_enter")
def parse_line(text: str) -> LineResult:
    return PERF_SCRIPT.parse(text)


__all__ = ["PERF_SCRIPT", "parse_line"]
