"""``trace-cmd report`` text of a host recording of the KVM conversion tracepoints
(:mod:`.kvm_events`), e.g. ``trace-cmd record -e kvm:kvm_vm_set_mem_attributes`` then
``trace-cmd report > report.txt``.  Each event line is::

           CPU 0/KVM-12345 [003]   1234.567890: kvm_vm_set_mem_attributes: 0x00000000080000 -- 0x00000000080001 [0x8]

the comm right-aligned in 16 columns (it may hold spaces and '-'), the thread id, the host CPU,
optional latency flags, seconds with microseconds (nanoseconds with ``report -t``; a bare
count for a non-time clock, taken as no time), the event name and its TP_printk text.
``CPU:N [K EVENTS DROPPED]`` (or ``[EVENTS DROPPED]``) says the ring buffer lost events: the
recording is incomplete, which the report says.  The ``version = 6`` / ``cpus=N`` / ``CPU N
is empty`` lines before the events are skipped.
"""

from __future__ import annotations

import re

from .events import LineResult
from .kvm_events import TracerText
from .registry import importer

TRACE_CMD_REPORT = TracerText(
    "trace-cmd report",
    event_line=re.compile(r"\s*(?P<comm>.*?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?"
                          r"(?P<ts>\d+(?:\.\d+)?):\s+(?P<event>\w+):\s?(?P<info>.*)$"),
    dropped=re.compile(r"^\s*CPU:(?P<cpu>\d+) \[(?:(?P<count>\d+) )?EVENTS DROPPED\]\s*$"),
    dropped_marker="EVENTS DROPPED",
    header=re.compile(r"\s*(?:version = \d+|cpus=\d+|CPU \d+ is empty)\s*$"))


@importer("trace-cmd", "trace-cmd report text of kvm:kvm_vm_set_mem_attributes (or kvm_set_vm_mem_attributes) "
                       "and kvm:kvm_vmgexit_msr_protocol_enter")
def parse_line(text: str) -> LineResult:
    return TRACE_CMD_REPORT.parse(text)


__all__ = ["TRACE_CMD_REPORT", "parse_line"]
