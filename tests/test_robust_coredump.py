"""Private memory stays out of a kernel core dump of a running VMM.

A child process runs a real KVM machine whose guest writes a distinctive pattern over pages of
its private memory, then, with the machine still running, sets its coredump_filter to 0x1ff
(every kind of mapping, shared file mappings included), raises RLIMIT_CORE and sends itself
SIGQUIT.  The kernel writes the core (core_pattern "core" here, in the child's directory); the
test searches it for the pattern.  gdb's gcore would prove nothing: it skips these mappings
whatever they hold.  The same run with both mappings marked dumpable again (MADV_DODUMP,
what the code did before) finds every page twice: once through KVM's slot mapping and once
through the private backing's own mapping, which sealing made PROT_NONE (a core dump reads a
PROT_NONE mapping all the same), so the search is known to work.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.kvm

PAGES = 64
PATTERN = 0xA7

CHILD = textwrap.dedent(f"""
    import ctypes, os, resource, signal, sys
    from privmem.ops import Op
    from privmem.vmm import Machine

    dodump = sys.argv[1] == "dodump"
    machine = Machine("64M", 1, data_check="full")
    result = machine.run_ops([Op("write", 0, {PAGES} * 4096, view="private", pattern={PATTERN})])
    assert result.data_errors == 0
    if dodump:                                   # the behaviour before the fix, as a control
        libc = ctypes.CDLL(None, use_errno=True)
        MADV_DODUMP = 17
        for addr, size in ((machine._slot_map.addr, machine._slot_map.size), (machine.private.hva, machine.memory)):
            assert libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(size), MADV_DODUMP) == 0
    with open(f"/proc/{{os.getpid()}}/coredump_filter", "w") as f:
        f.write("0x1ff")
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGQUIT)
""")


def _core_hits(tmp_path, mode: str) -> int:
    with open("/proc/sys/kernel/core_pattern") as f:
        pattern = f.read().strip()
    if pattern.startswith("|") or "/" in pattern:
        pytest.skip(f"core_pattern {pattern!r} does not write a core into the process's directory")
    run = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=tmp_path, capture_output=True, timeout=120)
    assert run.returncode == -signal.SIGQUIT, run.stderr.decode()[-2000:]
    cores = [p for p in tmp_path.iterdir() if p.name.startswith("core")]
    assert cores, "no core file was written"
    data = cores[0].read_bytes()
    os.unlink(cores[0])
    page = bytes([PATTERN]) * 4096
    hits, start = 0, data.find(page)
    while start != -1:
        hits += 1
        start = data.find(page, start + 4096)
    return hits


def test_private_pages_are_absent_from_a_core_dump_of_the_running_vmm(tmp_path):
    assert _core_hits(tmp_path, "dontdump") == 0


def test_the_search_finds_them_when_the_slot_mapping_is_dumpable(tmp_path):
    assert _core_hits(tmp_path, "dodump") == 2 * PAGES
