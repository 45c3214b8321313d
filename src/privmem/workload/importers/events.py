"""What an importer's line parser hands back: one recorded conversion, a line skipped for a
named reason, or a tracer's note that it lost events; a malformed line raises
:class:`Malformed`.

Parsers are per line and stateless: everything that needs memory across lines (times relative
to the first event, threads to vCPUs, duplicates, the guest's layout) lives in the pipeline, so
a parser is only the grammar of its source.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ...units import ADDRESS_LIMIT, PAGE_SHIFT, PAGE_SIZE

_PAGE_MASK = PAGE_SIZE - 1
_FRACTION_DIGITS = 9                    # nanoseconds, the finest clock any source prints
_STAMP_RE = re.compile(r"(\d+)(?:\.(\d{1,9}))?")
_HEX_RE = re.compile(r"0[xX]([0-9a-fA-F]{1,16})")
_ZEROS_RE = re.compile(r"0{1,16}")


class Malformed(Exception):
    """A line that names a known event but cannot be read; the message says why."""


class Thread(NamedTuple):
    """The host thread that recorded an event: its id, its name when the source prints it, and
    the guest vCPU it runs when the line says so (a "CPU 3/KVM" name, an SNP request's
    ``vcpu 3``)."""

    tid: int
    comm: str | None = None
    vcpu: int | None = None


class Conversion(NamedTuple):
    """One recorded request to convert ``[gpa, gpa + size)``.

    ``announces`` marks an event that asks for a conversion the recording will also show being
    carried out (a memory-fault exit or a hypercall before QEMU's kvm_convert_memory; an SNP
    page-state request before KVM_SET_MEMORY_ATTRIBUTES): the pipeline drops the second line
    of such a pair.  ``stamp_ns`` is the event's time in nanoseconds on the source's clock
    (any origin), or None when the line carries no time.
    """

    event: str
    gpa: int
    size: int
    to_private: bool
    thread: Thread | None = None
    stamp_ns: int | None = None
    announces: bool = False


class Skipped(NamedTuple):
    """A line that holds no conversion; ``reason`` is one of a small fixed set of phrases
    (counted per reason in the report, so it must not contain values from the line)."""

    reason: str


class Dropped(NamedTuple):
    """The tracer says it lost ``events`` events here (None: it does not say how many), on the
    buffer ``where`` names ("CPU 2")."""

    events: int | None
    where: str


LineResult = Conversion | Skipped | Dropped


def hex_value(text: str, name: str, zero_without_prefix: bool = False) -> int:
    """``0x``-prefixed hex below 2**64, as QEMU and the kernel print it.  With
    ``zero_without_prefix``, all zeros without ``0x`` too: C's ``%#x`` prints zero as
    ``0000000000000000``.  Raises Malformed naming ``name``."""
    match = _HEX_RE.fullmatch(text)
    if match is None and not (zero_without_prefix and _ZEROS_RE.fullmatch(text)):
        raise Malformed(f"{name} {text[:24]!r} is not 0x-prefixed hex")
    return int(match.group(1), 16) if match else 0


def stamp_ns(text: str, name: str = "timestamp") -> int:
    """``seconds[.fraction]`` (micro- or nanoseconds, as tracers print them) in integer
    nanoseconds, so nothing is lost to float rounding on 10-digit epoch seconds."""
    match = _STAMP_RE.fullmatch(text)
    if not match:
        raise Malformed(f"{name} {text[:24]!r} is not seconds.fraction")
    seconds, fraction = match.groups()
    fraction = fraction or ""
    return int(seconds) * 10**_FRACTION_DIGITS + int(fraction.ljust(_FRACTION_DIGITS, "0"))


def byte_range(event: str, gpa: int, size: int, to_private: bool, **extra) -> Conversion:
    """A Conversion of ``size`` bytes at ``gpa``, checked: non-empty, page aligned, below
    2**64.  Raises Malformed naming the bad value."""
    if size == 0:
        raise Malformed("size 0x0: empty range")
    if gpa & _PAGE_MASK:
        raise Malformed(f"start {gpa:#x} not aligned to {PAGE_SIZE}")
    if size & _PAGE_MASK:
        raise Malformed(f"size {size:#x} not a multiple of {PAGE_SIZE}")
    if gpa + size > ADDRESS_LIMIT:
        raise Malformed(f"range [{gpa:#x}, {gpa + size:#x}) wraps past 2**64")
    return Conversion(event, gpa, size, to_private, **extra)


def frame_range(event: str, first: int, end: int, to_private: bool, **extra) -> Conversion:
    """A Conversion of the frames ``[first, end)`` (gfns, end exclusive, as KVM traces them)."""
    if end <= first:
        raise Malformed(f"end gfn {end:#x} is not after start gfn {first:#x}")
    if end > ADDRESS_LIMIT >> PAGE_SHIFT:
        raise Malformed(f"end gfn {end:#x} is past the 64-bit guest-physical space")
    return Conversion(event, first << PAGE_SHIFT, (end - first) << PAGE_SHIFT, to_private, **extra)
