"""A page-at-a-time model of a trace: the oracle generators and tests check against.

:func:`check_trace` replays a trace on a per-page model (state, data, owners) and raises
:class:`~privmem.errors.InvalidArgument` naming ``ops[i].<field>`` at the first op that a real
guest could not run deterministically:

* a guest op whose ``view`` differs from the page state (private view on a shared page, ...);
* DMA on a private page;
* a ``verify`` / ``dma_out`` of data that is undefined (never written since the page's last
  conversion, see :mod:`privmem.ops`) or that holds a different pattern;
* an op inside the low ``reserved`` bytes;
* (``ownership=True``) a page read or written by one vCPU but converted or accessed by another,
  which would make the result depend on how the vCPUs interleave.

:func:`summary` counts what a trace does.  Both are pure Python over bytearrays, linear in the
number of pages each op covers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..units import PAGE_SHIFT
from ..ops import KINDS, Trace

PRIVATE, SHARED = 1, 0
_NONE, _MANY = 0, 255


@dataclass
class ModelResult:
    """The page states after the trace, and what the replay saw."""

    private_pages: int
    shared_pages: int
    verified_pages: int
    noop_conversion_pages: int     # pages a convert left as they were (already in that state)
    shared_ranges: list            # [(gpa, size)] shared at the end


def _translate_table(vcpu: int) -> bytes:
    """Owner update: none -> vcpu+1, vcpu+1 stays, anything else -> MANY."""
    table = bytearray([_MANY]) * 256
    table[_NONE] = vcpu + 1
    table[vcpu + 1] = vcpu + 1
    return bytes(table)


def _check_ownership(data_owner: bytearray, conv_owner: bytearray, vcpus: int) -> None:
    """Every page read or written by vCPU v is read/written by v only and converted by v or nobody."""
    many = data_owner.find(_MANY)
    if many != -1:
        raise InvalidArgument("ownership", many << PAGE_SHIFT,
                              "page read or written by more than one vCPU: the result would depend "
                              "on vCPU interleaving")
    for vcpu in range(vcpus):
        mine = bytearray(256)
        mine[vcpu + 1] = 1
        others = bytearray([1]) * 256
        others[_NONE] = others[vcpu + 1] = 0
        clash = (int.from_bytes(data_owner.translate(mine), "little")
                 & int.from_bytes(conv_owner.translate(others), "little"))
        if clash:
            page = (clash & -clash).bit_length() - 1
            page //= 8
            raise InvalidArgument("ownership", page << PAGE_SHIFT,
                                  f"page read or written by vCPU {vcpu} but converted by another vCPU: "
                                  "the result would depend on vCPU interleaving")


def check_trace(trace: Trace, reserved: int = 0, ownership: bool = True) -> ModelResult:
    """Replay ``trace`` on the page model; see the module docstring for what is checked."""
    trace.validate()
    pages = trace.memory >> PAGE_SHIFT
    state = bytearray([PRIVATE]) * pages
    data = bytearray(pages)
    defined = bytearray(pages)
    track_owners = ownership and trace.vcpus < _MANY - 1
    conv_owner = bytearray(pages) if track_owners else None
    data_owner = bytearray(pages) if track_owners else None
    tables = {}
    verified = noop = 0

    offset = trace.memory_map.offset
    for index, op in enumerate(trace.ops):
        a = offset(op.gpa) >> PAGE_SHIFT
        n = op.size >> PAGE_SHIFT
        b = a + n
        if op.gpa < reserved:
            raise InvalidArgument(f"ops[{index}].gpa", op.gpa, f"inside the reserved low {reserved:#x} bytes")
        if track_owners:
            table = tables.get(op.vcpu) or tables.setdefault(op.vcpu, _translate_table(op.vcpu))
            owners = conv_owner if op.kind == "convert" else data_owner
            owners[a:b] = owners[a:b].translate(table)
        if op.kind == "convert":
            want = PRIVATE if op.to_private else SHARED
            noop += state[a:b].count(want)
            state[a:b] = bytes([want]) * n
            defined[a:b] = bytes(n)
            continue
        view = op.access_view
        want = PRIVATE if view == "private" else SHARED
        if state[a:b].count(want) != n:
            bad = a + next(i for i in range(n) if state[a + i] != want)
            field = "kind" if op.kind.startswith("dma") else "view"
            raise InvalidArgument(f"ops[{index}].{field}", op.kind if field == "kind" else view,
                                  f"page {bad << PAGE_SHIFT:#x} is "
                                  f"{'private' if state[bad] == PRIVATE else 'shared'}", hex_value=False)
        if op.kind in ("write", "dma_in"):
            data[a:b] = bytes([op.pattern]) * n
            defined[a:b] = b"\x01" * n
        elif op.kind in ("verify", "dma_out"):
            if defined[a:b].count(1) != n:
                bad = a + defined[a:b].index(0)
                raise InvalidArgument(f"ops[{index}].pattern", op.pattern,
                                      f"page {bad << PAGE_SHIFT:#x} holds undefined data (not written "
                                      "since its last conversion)", hex_value=False)
            if data[a:b] != bytes([op.pattern]) * n:
                bad = a + next(i for i in range(n) if data[a + i] != op.pattern)
                raise InvalidArgument(f"ops[{index}].pattern", op.pattern,
                                      f"page {bad << PAGE_SHIFT:#x} holds pattern {data[bad]}",
                                      hex_value=False)
            verified += n

    if track_owners:
        _check_ownership(data_owner, conv_owner, trace.vcpus)
    shared_ranges = []
    page = state.find(SHARED)
    while page != -1:
        end = state.find(PRIVATE, page)
        end = pages if end == -1 else end
        shared_ranges += trace.memory_map.spans_of(page << PAGE_SHIFT, (end - page) << PAGE_SHIFT)
        page = state.find(SHARED, end)
    shared = state.count(SHARED)
    return ModelResult(private_pages=pages - shared, shared_pages=shared, verified_pages=verified,
                       noop_conversion_pages=noop, shared_ranges=shared_ranges)


def summary(trace: Trace) -> dict:
    """What a trace does: ops per kind, conversions by direction, pages and bytes converted,
    pages converted more than once (the flip-flop that hurts eager discard), bytes per data
    kind, ops per vCPU and the address span."""
    by_kind = Counter({kind: 0 for kind in KINDS})
    data_bytes = Counter({kind: 0 for kind in KINDS if kind != "convert"})
    per_vcpu = [0] * trace.vcpus
    to_shared = to_private = pages_converted = 0
    seen = bytearray(trace.memory >> PAGE_SHIFT)
    reconverted = 0
    lowest, highest = None, 0
    for op in trace.ops:
        by_kind[op.kind] += 1
        per_vcpu[op.vcpu] += 1
        lowest = op.gpa if lowest is None else min(lowest, op.gpa)
        highest = max(highest, op.end)
        if op.kind == "convert":
            if op.to_private:
                to_private += 1
            else:
                to_shared += 1
            pages_converted += op.pages
            a = trace.memory_map.offset(op.gpa) >> PAGE_SHIFT
            b = a + op.pages
            reconverted += seen[a:b].count(1)
            seen[a:b] = b"\x01" * (b - a)
        else:
            data_bytes[op.kind] += op.size
    return {
        "name": trace.name,
        "memory": trace.memory,
        "vcpus": trace.vcpus,
        "ops": len(trace.ops),
        "by_kind": dict(by_kind),
        "conversions": to_shared + to_private,
        "to_shared": to_shared,
        "to_private": to_private,
        "pages_converted": pages_converted,
        "bytes_converted": pages_converted << PAGE_SHIFT,
        "distinct_pages_converted": seen.count(1),
        "reconverted_pages": reconverted,
        "data_bytes": dict(data_bytes),
        "per_vcpu": per_vcpu,
        "lowest_gpa": lowest,
        "highest_end": highest,
    }
