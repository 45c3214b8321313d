"""What the process holds, for leak tests: open fds, shared mappings, threads."""

import gc
import os
import threading


def resources() -> dict:
    """Open fds, shared mappings and threads (after a collection, so objects an earlier test
    dropped do not count).

    Every mapping privmem makes is MAP_SHARED (memfd, guest_memfd, kvm_run; 's' in the
    permissions column of /proc/self/maps).  Private anonymous mappings are left out on
    purpose: glibc keeps the stacks and malloc arenas of finished threads for reuse and
    Python's allocator maps and unmaps arenas as it likes, so their number depends on what
    ran before, not on a leak."""
    gc.collect()
    with open("/proc/self/maps") as maps:
        shared = sum(1 for line in maps if line.split()[1].endswith("s"))
    return {"fds": len(os.listdir("/proc/self/fd")), "shared_maps": shared, "threads": threading.active_count()}


def program_of(machine, items):
    """A Program for ``machine`` from Ops and ``("exits", vcpu, count)`` tuples, each vCPU's
    in the order given (tests use it to mix bare exits into a guest's ops)."""
    from privmem.vmm import Program

    program = Program(machine.memory_map, machine.vcpus)
    for item in items:
        if isinstance(item, tuple):
            _, vcpu, count = item
            program.add_exits(vcpu, count)
        else:
            program.extend([item])
    return program
