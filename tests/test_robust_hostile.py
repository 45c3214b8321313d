"""A hostile guest (vmm/guest/hostile.S) forging device requests from every vCPU: requests far
past the cap on one transfer and past RAM, exactly the cap, ranges in no RAM, ranges that end
before they start, unaligned ones, and mailbox pointers that are no record of its ring.  The
VMM answers each with a device status and a counter, never crashes, and its own memory stays
bounded: a transfer moves through one chunk buffer per vCPU, DMA_OUT reads the file (pages
never written read as zeros and stay unallocated) and DMA_IN writes it (pages the VMM never
maps do not count in its resident set)."""

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.kvm

VCPUS = 4
ROUNDS = 4                     # hostile.S
REFUSED_PER_ROUND = 8          # 2 past the cap, 1 in no RAM, 1 ending before it starts, 4 bad pointers
                               # (an unaligned range of shared RAM is a fine transfer: devices move bytes)
RSS_BOUND = 96 << 20           # stated bound on the VMM's peak resident set for this run

CHILD = textwrap.dedent(f"""
    import json
    from privmem.runner import peak_rss_bytes
    from privmem.vmm import Machine
    with Machine("1G", {VCPUS}, guest_program="hostile") as machine:
        result = machine.run_ops([], timeout=120)
        print(json.dumps(dict(dma_errors=result.dma_errors, psc_errors=result.psc_errors,
                              kinds=sorted({{f["kind"] for f in machine.failures}}),
                              shared_allocated=machine.shared.allocated_bytes(),
                              peak_rss=peak_rss_bytes())))
""")


def test_a_hostile_guest_costs_bounded_memory_and_gets_statuses_not_crashes():
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    out = json.loads(run.stdout)
    assert out["dma_errors"] == VCPUS * ROUNDS * REFUSED_PER_ROUND
    assert out["psc_errors"] == 0 and set(out["kinds"]) <= {"dma_in", "dma_out"}
    assert out["shared_allocated"] <= 256 << 20             # what the guest DMA'd into: its own RAM
    assert out["peak_rss"] < RSS_BOUND, out["peak_rss"] >> 20
