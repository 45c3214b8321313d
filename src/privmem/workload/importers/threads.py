"""Host threads -> the trace's vCPUs.

A recording names the thread of each event, not the vCPU.  A thread's vCPU is certain when the
recording says it: QEMU names its vCPU threads "CPU 3/KVM", and an SNP page-state request
prints ``vcpu 3``.  When some threads are known that way, every other thread is not a vCPU
thread (QEMU's main thread setting all RAM private at start, an I/O thread) and its events go
to vCPU 0.  When none is, threads become vCPUs 0, 1, 2... in the order they first appear.
Lines without a thread (QEMU's logs without the ``tid@`` prefix) are vCPU 0.

Bounded: at most ``MAX_THREADS`` threads are told apart (KVM's vCPU limit); an event of one
more is reported and skipped.
"""

from __future__ import annotations

from ...ops import TRACE_MAX_VCPUS
from .events import Thread

MAX_THREADS = TRACE_MAX_VCPUS
NO_THREAD = 0xFFFF              # the index of "no thread" (fits the spool's 16-bit field)


class ThreadMap:
    """Threads in order of first appearance.  ``index(thread)`` is the number the pipeline
    spools for an event; ``vcpus(count)`` the vCPU of each index once every line is read."""

    def __init__(self) -> None:
        self._index: dict[int, int] = {}
        self._threads: list[list] = []        # [tid, comm, claimed vcpu, events]

    def index(self, thread: Thread | None) -> int | None:
        """The thread's index (NO_THREAD for None), or None when there are already
        MAX_THREADS other threads."""
        if thread is None:
            return NO_THREAD
        position = self._index.get(thread.tid)
        if position is None:
            if len(self._threads) >= MAX_THREADS:
                return None
            position = self._index[thread.tid] = len(self._threads)
            self._threads.append([thread.tid, thread.comm, thread.vcpu, 0])
        entry = self._threads[position]
        entry[3] += 1
        if thread.comm is not None:
            entry[1] = thread.comm          # a thread renamed later keeps its latest name
        if entry[2] is None and thread.vcpu is not None:
            entry[2] = thread.vcpu
        return position

    def __len__(self) -> int:
        return len(self._threads)

    def vcpus(self, count: int | None = None) -> tuple[list[int], int]:
        """(vCPU of each thread index, the number of vCPUs).  With ``count`` given, vCPU
        numbers wrap around it (``--vcpus 1`` puts everything on one vCPU)."""
        claimed = any(entry[2] is not None for entry in self._threads)
        if claimed:
            mapping = [entry[2] if entry[2] is not None else 0 for entry in self._threads]
        else:
            mapping = list(range(len(self._threads)))
        inferred = max(mapping, default=0) + 1
        if count is None:
            return mapping, inferred
        return [vcpu % count for vcpu in mapping], count

    def rows(self, mapping: list[int]) -> list[dict]:
        """The threads seen, with their vCPU, for the report."""
        return [{"tid": tid, "comm": comm, "events": events, "vcpu": vcpu}
                for (tid, comm, _, events), vcpu in zip(self._threads, mapping)]

    def vcpu_of(self, mapping: list[int], index: int) -> int:
        return 0 if index == NO_THREAD else mapping[index]


__all__ = ["MAX_THREADS", "NO_THREAD", "ThreadMap"]
