"""One conversion, two lines: the request and the conversion it causes.

QEMU traces the exit that asks for a conversion (kvm_memory_fault, kvm_hc_map_gpa_range) and
then the conversion itself (kvm_convert_memory); the host kernel traces an SNP page-state
request (kvm_vmgexit_msr_protocol_enter) and then the KVM_SET_MEMORY_ATTRIBUTES call that
carries it out.  Both happen on the vCPU thread that took the exit, one after the other.  The
request is kept (it comes first, so its time is the guest's); the conversion that follows it
on the same thread, for the same range and direction, is dropped.  A request not followed by
its conversion (only the exit event was enabled, or the VMM refused it) stays a conversion, so
a recording with either event, or both, gives the same ops.

Bounded: a thread known by id has at most one request waiting (a conversion of something else
on that thread means the request was not carried out); lines without a thread (QEMU's
unprefixed log) share one window of the ``WINDOW`` latest requests, since their vCPUs
interleave.
"""

from __future__ import annotations

from collections import deque

from .events import Conversion

WINDOW = 64


class Deduplicator:
    """``admit(conversion)`` says whether a conversion becomes an op; ``dropped`` counts the
    ones that did not."""

    def __init__(self) -> None:
        self._waiting: dict[int | None, deque] = {}
        self.dropped = 0

    def admit(self, conversion: Conversion) -> bool:
        thread = conversion.thread
        key = thread.tid if thread is not None else None
        what = (conversion.gpa, conversion.size, conversion.to_private)
        waiting = self._waiting.get(key)
        if conversion.announces:
            if waiting is None:
                waiting = self._waiting[key] = deque(maxlen=1 if key is not None else WINDOW)
            waiting.append(what)
            return True
        if waiting:
            if what in waiting:
                waiting.remove(what)
                self.dropped += 1
                return False
            if key is not None:
                waiting.clear()
        return True


__all__ = ["Deduplicator", "WINDOW"]
