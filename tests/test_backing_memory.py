"""SharedBacking and the memfd stand-in of PrivateBacking, against the real kernel (no /dev/kvm)."""

from __future__ import annotations

import errno
import gc
import os
import time

import pytest

from privmem.backing import PrivateBacking, SharedBacking, syscalls
from privmem.errors import AccessDenied, InvalidArgument, InvalidState, SyscallError
from privmem.units import GiB, MiB, PAGE_SIZE

PS = PAGE_SIZE


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def mapping_lines(marker: str) -> list[str]:
    with open("/proc/self/maps") as maps:
        return [line for line in maps if marker in line]


MAKERS = {
    "shared": lambda size: SharedBacking.create(size),
    "standin": lambda size: PrivateBacking.standin(size),
}


@pytest.fixture(params=sorted(MAKERS))
def backing(request):
    with MAKERS[request.param](64 * PS) as b:
        yield b


def test_kinds_and_attributes():
    with SharedBacking.create(16 * PS) as shared, PrivateBacking.standin(16 * PS) as private:
        assert (shared.kind, private.kind) == ("memfd", "memfd-standin")
        assert shared.size == private.size == 16 * PS
        assert shared.fd >= 0 and shared.hva and shared.hva % PS == 0
        assert os.fstat(shared.fd).st_size == 16 * PS
        assert not private.sealed


@pytest.mark.parametrize("size", [0, -PS, 1, PS + 1, 4095])
def test_create_rejects_bad_sizes(size):
    with pytest.raises(InvalidArgument):
        SharedBacking.create(size)
    with pytest.raises(InvalidArgument):
        PrivateBacking.standin(size)


def test_round_trip_fill_and_view(backing):
    backing.write(5, b"hello")
    assert backing.read(0, 10) == b"\0" * 5 + b"hello"
    backing.write(PS - 2, bytearray(b"span"))           # crosses a page boundary
    assert backing.read(PS - 2, 4) == b"span"
    backing.fill(2 * PS, 3 * PS, 0xAB)
    assert backing.read(2 * PS, 3 * PS) == b"\xab" * (3 * PS)
    assert backing.read(5 * PS, 1) == b"\0"
    view = backing.view(2 * PS, PS)
    assert view.nbytes == PS and view.format == "B" and view[0] == 0xAB
    view[1] = 0x11                                        # zero-copy: visible through read
    assert backing.read(2 * PS + 1, 1) == b"\x11"
    # and through the file itself (MAP_SHARED)
    assert os.pread(backing.fd, 2, 2 * PS) == b"\xab\x11"
    view.release()


def test_host_access_bounds(backing):
    for call in (lambda: backing.read(64 * PS - 1, 2), lambda: backing.write(64 * PS, b"x"),
                 lambda: backing.fill(-1, 1, 0), lambda: backing.read(0, -1),
                 lambda: backing.view(63 * PS, 2 * PS), lambda: backing.fill(0, 1, 256)):
        with pytest.raises(InvalidArgument):
            call()


@pytest.mark.parametrize("offset,size", [(1, PS), (0, PS - 1), (0, 0), (-PS, PS), (63 * PS, 2 * PS), (64 * PS, PS)])
def test_file_ranges_validated(backing, offset, size):
    for call in (backing.discard, backing.allocate, backing.allocated_bytes_in, backing.allocated_ranges):
        with pytest.raises(InvalidArgument):
            call(offset, size)
    assert backing.allocated_bytes() == 0


def test_fresh_backing_has_nothing_allocated(backing):
    assert backing.allocated_bytes() == 0
    assert backing.allocated_ranges() == []


def test_write_is_counted_and_discard_frees(backing):
    backing.write(3 * PS + 7, b"x")
    backing.fill(10 * PS, 4 * PS, 1)
    assert backing.allocated_ranges() == [(3 * PS, PS), (10 * PS, 4 * PS)]
    assert backing.allocated_bytes() == 5 * PS
    backing.discard(11 * PS, 2 * PS)
    assert backing.allocated_ranges() == [(3 * PS, PS), (10 * PS, PS), (13 * PS, PS)]
    assert backing.allocated_bytes() == 3 * PS
    assert backing.allocated_bytes_in(10 * PS, 4 * PS) == 2 * PS
    assert backing.read(10 * PS, 1) == b"\1" and backing.read(13 * PS, 1) == b"\1"
    assert backing.read(11 * PS, 2 * PS) == bytes(2 * PS)     # punched pages read zero...
    assert backing.allocated_bytes_in(10 * PS, 4 * PS) == 4 * PS    # ...and a host read fault allocates them again


def test_allocate_counts_pages_never_touched(backing):
    """fallocate(KEEP_SIZE) allocates without faulting: counted though mincore misses it."""
    backing.allocate(8 * PS, 16 * PS)
    assert backing.allocated_bytes() == 16 * PS
    assert backing.allocated_ranges() == [(8 * PS, 16 * PS)]
    assert backing.allocated_ranges(12 * PS, 4 * PS) == [(12 * PS, 4 * PS)]
    assert backing.allocated_ranges(0, 10 * PS) == [(8 * PS, 2 * PS)]
    assert os.fstat(backing.fd).st_size == 64 * PS                # KEEP_SIZE
    assert backing.read(8 * PS, PS) == bytes(PS)                  # contents stay zero
    backing.allocate(8 * PS, 16 * PS)                             # idempotent
    assert backing.allocated_bytes() == 16 * PS


def test_mixed_preallocated_and_faulted_ranges(backing):
    backing.allocate(0, 4 * PS)
    backing.write(2 * PS, b"a")                 # faulted inside the preallocated block
    backing.write(6 * PS, b"b")                 # faulted alone
    backing.allocate(9 * PS, PS)                # preallocated alone, next to a faulted page
    backing.write(10 * PS, b"c")
    assert backing.allocated_ranges() == [(0, 4 * PS), (6 * PS, PS), (9 * PS, 2 * PS)]
    assert backing.allocated_bytes() == 7 * PS


def test_memfd_kernel_fact_seek_data_and_mincore_miss_preallocation(backing):
    """Why accounting uses cachestat: on a memfd, SEEK_DATA and mincore both treat pages
    allocated by fallocate (not yet written) as absent; st_blocks and cachestat count them."""
    backing.allocate(0, 4 * PS)
    backing.write(8 * PS, b"x")
    assert syscalls.seek_data_extents(backing.fd, 0, backing.size) == [(8 * PS, PS)]
    assert [i for i, b in enumerate(syscalls.mincore(backing.hva, backing.size)) if b & 1] == [8]
    assert os.fstat(backing.fd).st_blocks * 512 == 5 * PS
    assert syscalls.cachestat(backing.fd, 0, backing.size).nr_cache == 5


def test_close_is_idempotent_and_everything_after_is_refused(backing):
    fd, hva = backing.fd, backing.hva
    backing.close()
    backing.close()
    assert backing.closed and backing.fd == -1 and backing.hva == 0
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    assert not [line for line in mapping_lines("memfd:privmem") if line.startswith(f"{hva:x}-")]
    for call in (lambda: backing.read(0, 1), lambda: backing.write(0, b"x"), lambda: backing.discard(0, PS),
                 lambda: backing.allocate(0, PS), backing.allocated_bytes, backing.allocated_ranges):
        with pytest.raises(InvalidState):
            call()


def test_live_view_blocks_close_until_released():
    b = SharedBacking.create(4 * PS)
    view = b.view()
    with pytest.raises(InvalidState, match="view"):
        b.close()
    assert not b.closed
    view[0] = 7
    view.release()
    b.close()
    assert b.closed


def test_finalizer_releases_a_forgotten_backing():
    before = open_fds()
    b = SharedBacking.create(4 * PS, name="privmem-finalize")
    b.write(0, b"x")
    del b
    gc.collect()
    assert open_fds() == before
    assert mapping_lines("memfd:privmem-finalize") == []


def test_finalizer_waits_for_the_last_view():
    b = SharedBacking.create(4 * PS, name="privmem-lastview")
    view = b.view(PS, PS)
    del b
    gc.collect()
    view[0] = 0x42                          # still mapped: must not crash
    assert view[0] == 0x42
    assert len(mapping_lines("memfd:privmem-lastview")) == 1
    del view
    gc.collect()
    assert mapping_lines("memfd:privmem-lastview") == []


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_no_fd_or_mapping_leak_over_50_cycles(kind):
    gc.collect()
    fds_before = open_fds()
    maps_before = len(mapping_lines("memfd:privmem"))
    for i in range(50):
        with MAKERS[kind](16 * PS) as b:
            b.write(0, b"x")
            b.allocate(PS, PS)
            if i % 2:
                view = b.view(0, PS)
                view.release()
            if isinstance(b, PrivateBacking) and i % 3 == 0:
                b.seal()
    gc.collect()
    assert open_fds() == fds_before
    assert len(mapping_lines("memfd:privmem")) == maps_before


def test_standin_seal_refuses_host_access_and_changes_nothing():
    with PrivateBacking.standin(16 * PS) as b:
        b.write(0, b"before launch")
        b.allocate(4 * PS, 2 * PS)
        ranges = b.allocated_ranges()
        hva = b.hva
        b.seal()
        b.seal()                                    # idempotent
        assert b.sealed and b.hva == hva            # the range stays reserved
        for call in (lambda: b.read(0, 1), lambda: b.write(0, b"x"), lambda: b.fill(0, 1, 0),
                     lambda: b.view(0, 1), lambda: b.write(10 * PS, b"x")):
            with pytest.raises(AccessDenied):
                call()
        assert b.allocated_ranges() == ranges       # accounting still works, nothing changed
        assert os.pread(b.fd, 13, 0) == b"before launch"
        mapping = [line for line in mapping_lines("memfd:privmem-private-standin") if line.startswith(f"{hva:x}-")]
        assert len(mapping) == 1 and mapping[0].split()[1] == "---s"    # PROT_NONE, shared
        b.discard(4 * PS, PS)                       # discard/allocate still work after launch
        b.allocate(8 * PS, PS)
        assert b.allocated_ranges() == [(0, PS), (5 * PS, PS), (8 * PS, PS)]


def test_seal_with_a_live_view_is_refused_and_changes_nothing():
    with PrivateBacking.standin(4 * PS) as b:
        view = b.view()
        with pytest.raises(InvalidState):
            b.seal()
        assert not b.sealed
        view[0] = 1
        view.release()
        b.seal()
        assert b.sealed


def test_syscall_errors_name_the_call_and_keep_errno():
    with pytest.raises(SyscallError) as info:
        syscalls.fallocate(-1, syscalls.FALLOC_FL_KEEP_SIZE, 0, PS)
    err = info.value
    assert err.call == "fallocate" and err.errno == errno.EBADF and isinstance(err, OSError)
    assert "fd=-1" in str(err) and "EBADF" in str(err)
    with pytest.raises(SyscallError) as info:
        syscalls.cachestat(-1, 0, PS)
    assert info.value.call == "cachestat" and info.value.errno == errno.EBADF
    with pytest.raises(SyscallError) as info:
        syscalls.mincore(12345, PS)                 # misaligned address
    assert info.value.call == "mincore" and info.value.errno == errno.EINVAL
    with pytest.raises(SyscallError) as info:
        syscalls.mmap(PS, syscalls.PROT_READ, syscalls.MAP_SHARED, -1)
    assert info.value.call == "mmap" and info.value.errno == errno.EBADF
    with pytest.raises(SyscallError) as info:
        syscalls.lseek(-1, 0, syscalls.SEEK_DATA)
    assert info.value.call == "lseek" and info.value.errno == errno.EBADF


def test_one_gib_is_cheap_to_create_and_measure():
    start = time.perf_counter()
    with SharedBacking.create(GiB) as shared, PrivateBacking.standin(GiB) as private:
        created = time.perf_counter() - start
        assert created < 0.5
        for b in (shared, private):
            assert b.allocated_bytes() == 0             # creating touched nothing
            b.allocate(0, 32 * MiB)
            b.fill(512 * MiB, 3 * PS, 0xFF)
            start = time.perf_counter()
            assert b.allocated_bytes() == 32 * MiB + 3 * PS
            assert b.allocated_ranges() == [(0, 32 * MiB), (512 * MiB, 3 * PS)]
            assert time.perf_counter() - start < 1.0     # ~20 ms on the project host


def test_seal_and_close_race_host_access_without_crashing():
    """Writers racing seal() and close() get AccessDenied/InvalidState, never a fault."""
    import threading
    for _ in range(5):
        b = PrivateBacking.standin(256 * PS)
        outcomes: list[str] = []

        def writer():
            for i in range(2000):
                try:
                    b.fill((i % 256) * PS, PS, i & 0xFF)
                except (AccessDenied, InvalidState) as exc:
                    outcomes.append(type(exc).__name__)
                    return
            outcomes.append("done")
        threads = [threading.Thread(target=writer) for _ in range(2)]
        for t in threads:
            t.start()
        b.seal()
        b.close()
        for t in threads:
            t.join()
        assert len(outcomes) == 2 and set(outcomes) <= {"AccessDenied", "InvalidState", "done"}
