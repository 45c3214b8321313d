"""Encoding ops for the guest trace player (guest/player.S) into its binary op lists.

An op is anything with the fields of ``privmem.workload.Op`` (kind, gpa, size, vcpu, to,
view, pattern); ``GuestOp`` is a stand-alone equivalent.  Record (16 bytes, little-endian)::

    u8 kind, u8 flags, u8 pattern, u8 0, u32 gpa, u32 size, u32 count

kinds: 0 end, 1 convert, 2 write, 3 verify, 4 touch, 5 dma_in, 6 dma_out, 7 exits (``count``
OUTs to the no-op port: the exit round-trip benchmark).  flags: bit 0 to private (convert),
bit 1 shared view (write, verify, touch).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

from ..errors import InvalidArgument
from ..units import PAGE_SIZE, is_page_aligned
from . import layout

RECORD = struct.Struct("<BBBxIII")
KIND_CODES = {"end": 0, "convert": 1, "write": 2, "verify": 3, "touch": 4, "dma_in": 5, "dma_out": 6,
              "exits": 7}
F_PRIVATE, F_SHARED_VIEW = 1, 2
END_RECORD = RECORD.pack(0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class GuestOp:
    kind: str
    gpa: int = 0
    size: int = 0
    vcpu: int = 0
    to: str | None = None
    view: str | None = None
    pattern: int | None = None
    count: int = 0          # only for kind "exits"


def check_op(op, memory: int, vcpus: int, reserved: int = layout.RESERVED_BYTES) -> None:
    """Raise InvalidArgument unless the player can run ``op`` on this machine."""
    kind = op.kind
    if kind not in KIND_CODES or kind == "end":
        raise InvalidArgument("op.kind", kind, "unknown op kind", hex_value=False)
    if not 0 <= op.vcpu < vcpus:
        raise InvalidArgument("op.vcpu", op.vcpu, f"must be < vcpus ({vcpus})", hex_value=False)
    if kind == "exits":
        if not 0 <= getattr(op, "count", 0) < 1 << 32:
            raise InvalidArgument("op.count", op.count, "must fit in 32 bits", hex_value=False)
        return
    if not (is_page_aligned(op.gpa) and is_page_aligned(op.size)) or op.size <= 0:
        raise InvalidArgument("op.gpa", op.gpa, f"range must be page aligned and non-empty (size {op.size:#x})")
    if op.gpa < reserved or op.gpa + op.size > memory:
        raise InvalidArgument("op.gpa", op.gpa, f"range [{op.gpa:#x}, {op.gpa + op.size:#x}) is outside "
                              f"workload memory [{reserved:#x}, {memory:#x})")
    if kind == "convert" and op.to not in ("private", "shared"):
        raise InvalidArgument("op.to", op.to, "must be 'private' or 'shared'", hex_value=False)
    if kind in ("write", "verify", "touch") and (op.view or "private") not in ("private", "shared"):
        raise InvalidArgument("op.view", op.view, "must be 'private' or 'shared'", hex_value=False)
    if kind in ("write", "verify", "dma_in", "dma_out") and not (
            isinstance(op.pattern, int) and 0 <= op.pattern <= 255):
        raise InvalidArgument("op.pattern", op.pattern, "must be in 0..255", hex_value=False)


def encode_op(op) -> bytes:
    kind = op.kind
    flags = 0
    if kind == "convert" and op.to == "private":
        flags |= F_PRIVATE
    if kind in ("write", "verify", "touch") and op.view == "shared":
        flags |= F_SHARED_VIEW
    pattern = op.pattern if getattr(op, "pattern", None) is not None else 0
    count = getattr(op, "count", 0) if kind == "exits" else 0
    return RECORD.pack(KIND_CODES[kind], flags, pattern, op.gpa if kind != "exits" else 0,
                       op.size if kind != "exits" else 0, count)


def split_by_vcpu(ops: Iterable, memory: int, vcpus: int, reserved: int = layout.RESERVED_BYTES) -> list[list]:
    """Validate every op, then group them per vCPU keeping each vCPU's order."""
    per_vcpu: list[list] = [[] for _ in range(vcpus)]
    for op in ops:
        check_op(op, memory, vcpus, reserved)
        per_vcpu[op.vcpu].append(op)
    return per_vcpu


def capacity(vcpus: int) -> int:
    """Ops per vCPU per round (one record of each list is the END)."""
    return _list_bytes(vcpus) // RECORD.size - 1


def _list_bytes(vcpus: int) -> int:
    return (layout.OPS_END - layout.OPS_GPA) // vcpus // PAGE_SIZE * PAGE_SIZE


def rounds(per_vcpu: list[list], vcpus: int) -> list[list[bytes]]:
    """Encoded op lists per round (each round fits the op-list area), END-terminated."""
    cap = capacity(vcpus)
    longest = max((len(ops) for ops in per_vcpu), default=0)
    out = []
    for start in range(0, max(longest, 1), cap):
        out.append([b"".join(encode_op(op) for op in ops[start:start + cap]) + END_RECORD for ops in per_vcpu])
    return out


def list_gpa(vcpu: int, vcpus: int) -> int:
    """Where vCPU ``vcpu``'s op list starts (page aligned)."""
    return layout.OPS_GPA + vcpu * _list_bytes(vcpus)
