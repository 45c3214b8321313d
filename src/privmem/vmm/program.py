"""Encoding ops for the guest trace player (guest/player.S) into its binary op lists.

An op is anything with the fields of ``privmem.workload.Op`` (kind, gpa, size, vcpu, to,
view, pattern); ``GuestOp`` is a stand-alone equivalent.  Record (16 bytes, little-endian)::

    u8 kind, u8 flags, u8 pattern, u8 0, u32 addr, u32 size, u32 arg

kinds: 0 end, 1 convert, 2 write, 3 verify, 4 touch, 5 dma_in, 6 dma_out, 7 exits (``arg``
OUTs to the no-op port: the exit round-trip benchmark), and kinds the encoder picks so the
player branches less (every guest instruction is emulated on this host, see layout.py):
8 a one-page convert (one PSC entry), 9 / 10 write / verify of every byte (``data_check``
"full"; 2 / 3 sample each page, see layout.py).  flags (informational: the player reads
none): bit 0 to private (convert), bit 1 shared view (write, verify, touch).

The encoder does the player's arithmetic: ``addr`` is the guest address through the op's
view (``gpa | shared_bit`` for the shared view; the gpa for convert and DMA), ``arg`` is the
pattern byte replicated into a dword (write, verify), the PSC operation bits as the guest
writes them into an entry's high dword (convert), or the OUT count (exits).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable

from ..errors import InvalidArgument
from ..units import PAGE_SIZE, is_page_aligned
from . import layout, psc

RECORD = struct.Struct("<BBBxIII")
KIND_CODES = {"end": 0, "convert": 1, "write": 2, "verify": 3, "touch": 4, "dma_in": 5, "dma_out": 6,
              "exits": 7}
K_CONVERT_PAGE, K_WRITE_FULL, K_VERIFY_FULL = 8, 9, 10      # picked by the encoder, not op kinds
F_PRIVATE, F_SHARED_VIEW = 1, 2
END_RECORD = RECORD.pack(0, 0, 0, 0, 0, 0)
DATA_CHECKS = ("sampled", "full")
_FULL_KINDS = {"write": K_WRITE_FULL, "verify": K_VERIFY_FULL}
# PSC operation as the player writes it into an entry's high dword (psc.py: bits 52-55)
_PSC_OP_HIGH = {True: psc.OP_PRIVATE << 20, False: psc.OP_SHARED << 20}


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


def check_data_check(data_check: str) -> str:
    if data_check not in DATA_CHECKS:
        raise InvalidArgument("data_check", data_check, f"must be one of {', '.join(DATA_CHECKS)}",
                              hex_value=False)
    return data_check


def encode_op(op, shared_bit: int | None = None, data_check: str = "sampled") -> bytes:
    """The player's record for ``op`` (checked by ``check_op`` first).  ``shared_bit`` is the
    machine's alias bit, needed for ops on the shared view; ``data_check`` "sampled" or "full"
    selects the write/verify routine."""
    kind = op.kind
    pattern = op.pattern if getattr(op, "pattern", None) is not None else 0
    if kind == "exits":
        return RECORD.pack(KIND_CODES[kind], 0, 0, 0, 0, getattr(op, "count", 0))
    flags, addr, arg, code = 0, op.gpa, 0, KIND_CODES[kind]
    if kind == "convert":
        private = op.to == "private"
        flags = F_PRIVATE if private else 0
        arg = _PSC_OP_HIGH[private]
        if op.size == PAGE_SIZE:
            code = K_CONVERT_PAGE
    elif kind in ("write", "verify", "touch"):
        if op.view == "shared":
            if shared_bit is None:
                raise InvalidArgument("shared_bit", shared_bit, "needed to encode an op on the shared view",
                                      hex_value=False)
            flags, addr = F_SHARED_VIEW, op.gpa | shared_bit
        if kind != "touch":
            arg = pattern * 0x01010101
            if data_check == "full":
                code = _FULL_KINDS[kind]
            else:
                check_data_check(data_check)
    return RECORD.pack(code, flags, pattern, addr, op.size, arg)


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


def rounds(per_vcpu: list[list], vcpus: int, shared_bit: int | None = None,
           data_check: str = "sampled") -> list[list[bytes]]:
    """Encoded op lists per round (each round fits the op-list area), END-terminated."""
    check_data_check(data_check)
    cap = capacity(vcpus)
    longest = max((len(ops) for ops in per_vcpu), default=0)
    out = []
    for start in range(0, max(longest, 1), cap):
        out.append([b"".join(encode_op(op, shared_bit, data_check) for op in ops[start:start + cap]) + END_RECORD
                    for ops in per_vcpu])
    return out


def list_gpa(vcpu: int, vcpus: int) -> int:
    """Where vCPU ``vcpu``'s op list starts (page aligned)."""
    return layout.OPS_GPA + vcpu * _list_bytes(vcpus)
