"""FaultyBacking: chosen calls fail with chosen errnos; everything else is the real backing."""

from __future__ import annotations

import errno

import pytest

from privmem.backing import FaultyBacking, SharedBacking
from privmem.errors import SyscallError
from privmem.units import PAGE_SIZE

PS = PAGE_SIZE


@pytest.fixture
def inner():
    with SharedBacking.create(8 * PS) as b:
        b.fill(0, 8 * PS, 0x77)
        yield b


def test_queue_of_errnos_then_pass_through(inner):
    faulty = FaultyBacking(inner, fail={"discard": [errno.ENOMEM, None, errno.EIO]})
    with pytest.raises(SyscallError) as info:
        faulty.discard(0, PS)
    assert (info.value.call, info.value.errno) == ("fallocate", errno.ENOMEM)
    assert "injected" in str(info.value)
    assert inner.allocated_bytes() == 8 * PS            # the failed discard changed nothing
    faulty.discard(0, PS)                               # None: the real call runs
    assert inner.allocated_bytes() == 7 * PS
    with pytest.raises(SyscallError) as info:
        faulty.discard(PS, PS)
    assert info.value.errno == errno.EIO
    faulty.discard(PS, PS)                              # queue exhausted: real calls
    assert inner.allocated_ranges() == [(2 * PS, 6 * PS)]
    assert faulty.calls["discard"] == 4
    assert [(m, e) for m, e, _ in faulty.injected] == [("discard", errno.ENOMEM), ("discard", errno.EIO)]


def test_predicate_and_constant_rules(inner):
    faulty = FaultyBacking(inner, fail={
        "discard": lambda offset, size: errno.EIO if offset == 3 * PS else None,
        "allocated_bytes": errno.ENOMEM,
    })
    faulty.discard(2 * PS, PS)
    with pytest.raises(SyscallError) as info:
        faulty.discard(3 * PS, PS)
    assert info.value.errno == errno.EIO
    for _ in range(3):
        with pytest.raises(SyscallError) as info:
            faulty.allocated_bytes()
        assert (info.value.call, info.value.errno) == ("cachestat", errno.ENOMEM)
    faulty.set_rule("allocated_bytes", None)
    assert faulty.allocated_bytes() == 7 * PS


def test_unwrapped_attributes_and_methods_delegate(inner):
    faulty = FaultyBacking(inner, fail={"allocate": [errno.ENOSPC]})
    assert (faulty.size, faulty.fd, faulty.hva, faulty.kind) == (inner.size, inner.fd, inner.hva, "memfd")
    assert faulty.read(0, 2) == b"\x77\x77"
    with pytest.raises(SyscallError):
        faulty.allocate(0, PS)
    with pytest.raises(AttributeError):
        FaultyBacking(inner, fail={"no_such_method": errno.EIO})


def test_context_manager_closes_inner():
    inner = SharedBacking.create(PS)
    with FaultyBacking(inner, fail={"discard": errno.EIO}) as faulty:
        assert not faulty.closed
    assert inner.closed
