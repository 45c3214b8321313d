"""The kernel selftest private_mem_conversions_test (tools/testing/selftests/kvm/x86/), adapted to this
machine and run on real KVM with 1, 2 and 4 vCPUs at once.

Each vCPU owns a window W of 2 MiB + 4 KiB (windows 4 MiB apart, 2 MiB aligned).  For each
range R in (0,4K), (0,2M), (4K,4K), (4K,2M), (2M,4K) of W, guest (player ops) and host (the
device: dma_in/dma_out from the guest's op stream, shared_read/shared_write from the test)
write and check distinct byte patterns through the shared view, the private view, and back:

1. guest writes 0xaa over W (shared) and checks it; host checks 0xaa and writes 0xcc; guest sees 0xcc.
2. guest writes 0x11 to R (shared), converts R to private, writes 0x22 (private) and checks it.
3. host tries to read R: refused (counted as a DMA error, the guest goes on); guest checks that
   the rest of W still reads 0xcc through the shared view.
4. odd pages j of R go back to shared (holes): host sees the pre-conversion 0x11 (never 0x22),
   writes 0x33, guest sees 0x33; even pages still read 0x22 through the private view.
5. R goes back to shared; guest writes 0x33; host checks 0x33 (the private 0x22 never shows)
   and writes 0x44; guest sees 0x44 and restores 0xcc.

Run with exact data checks (every byte, one vCPU: ~4 s of emulated guest work) and with the
default sampled checks (device.SAMPLE_OFFSETS) on 1, 2 and 4 vCPUs.
"""

import pytest

from privmem import AccessDenied
from privmem.units import MiB
from privmem.ops import Op as GuestOp
from privmem.vmm import Machine
from privmem.vmm.device import SAMPLE_OFFSETS

pytestmark = pytest.mark.kvm

PAGE = 4096
WINDOW = 2 * MiB + PAGE
STRIDE = 4 * MiB
FIRST = 4 * MiB
RANGES = [(0, PAGE), (0, 2 * MiB), (PAGE, PAGE), (PAGE, 2 * MiB), (2 * MiB, PAGE)]


def window(vcpu):
    return FIRST + vcpu * STRIDE


def scenario(vcpu):
    w = window(vcpu)
    ops = []

    def op(kind, gpa, size, **kw):
        ops.append(GuestOp(kind, gpa, size, vcpu, **kw))

    op("write", w, WINDOW, view="shared", pattern=0xAA)
    op("verify", w, WINDOW, view="shared", pattern=0xAA)
    op("dma_out", w, WINDOW, pattern=0xAA)
    op("dma_in", w, WINDOW, pattern=0xCC)
    op("verify", w, WINDOW, view="shared", pattern=0xCC)
    refused = 0
    for offset, size in RANGES:
        r = w + offset
        op("write", r, size, view="shared", pattern=0x11)
        op("convert", r, size, to="private")
        op("write", r, size, view="private", pattern=0x22)
        op("verify", r, size, view="private", pattern=0x22)
        op("dma_out", r, size, pattern=0x22)               # host read of private pages: refused
        refused += 1
        if offset:
            op("verify", w, offset, view="shared", pattern=0xCC)
        if offset + size < WINDOW:
            op("verify", r + size, WINDOW - offset - size, view="shared", pattern=0xCC)
        for j in range(size // PAGE):
            page = r + j * PAGE
            if j % 2:
                op("convert", page, PAGE, to="shared")
                op("dma_out", page, PAGE, pattern=0x11)    # the shared view kept its old contents
                op("dma_in", page, PAGE, pattern=0x33)
                op("verify", page, PAGE, view="shared", pattern=0x33)
            else:
                op("verify", page, PAGE, view="private", pattern=0x22)
        op("convert", r, size, to="shared")
        op("write", r, size, view="shared", pattern=0x33)
        op("dma_out", r, size, pattern=0x33)
        op("dma_in", r, size, pattern=0x44)
        op("verify", r, size, view="shared", pattern=0x44)
        op("write", r, size, view="shared", pattern=0xCC)
    op("convert", w, WINDOW, to="shared")
    return ops, refused


def sample(data):
    """The bytes of each page a sampled guest write defines (SAMPLE_OFFSETS)."""
    return b"".join(data[page + start:page + start + size] for page in range(0, len(data), PAGE)
                    for start, size in SAMPLE_OFFSETS)


@pytest.mark.parametrize("vcpus,data_check", [(1, "full"), (1, "sampled"), (2, "sampled"), (4, "sampled")])
def test_private_mem_conversions(vcpus, data_check):
    memory = FIRST + vcpus * STRIDE
    with Machine(memory, vcpus, initial="shared", data_check=data_check) as m:
        # host-side setup before the guest runs (SYNC through shared_write)
        for v in range(vcpus):
            m.shared_write(window(v), b"\x01" * WINDOW)
        ops, refused = [], 0
        for v in range(vcpus):
            mine, n = scenario(v)
            ops += mine
            refused += n
        # interleave the vCPUs' lists: order between vCPUs is not promised anyway
        result = m.run_ops(ops, timeout=60)
        assert result.data_errors == 0, result.failures
        assert result.psc_errors == 0
        assert result.dma_errors == refused                    # exactly the refused private reads
        assert all(f["kind"] == "dma_out" and "private" in f["error"] for f in result.failures)
        for v in range(vcpus):
            w = window(v)
            data = m.shared_read(w, WINDOW)
            if data_check == "full":
                assert data == b"\xcc" * WINDOW               # never a private-phase 0x22
            else:
                assert sample(data) == sample(b"\xcc" * WINDOW)
            assert m.store.has(w, WINDOW, 0)
        # the guest's last conversion of a page to private is refused to the host again
        m.run_ops([GuestOp("convert", window(0) + PAGE, PAGE, 0, to="private")], timeout=60)
        with pytest.raises(AccessDenied):
            m.shared_read(window(0), 2 * PAGE)
        conversions_per_vcpu = sum(2 + (size // PAGE) // 2 for _, size in RANGES) + 1
        assert result.conversions >= vcpus * (conversions_per_vcpu - 1)
