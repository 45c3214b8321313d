"""Page size, address helpers and size parsing.

Names keep the kinds of number apart: ``gpa`` is a guest physical address in bytes,
``gfn`` a guest frame number (gpa >> PAGE_SHIFT), ``offset`` a position in a backing
file, ``hva`` a host virtual address.  Ranges are half-open ``[start, end)``.
"""

from __future__ import annotations

import re

from .errors import InvalidArgument

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
HUGE_PAGE_SIZE = 2 << 20
ADDRESS_LIMIT = 1 << 64

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_SUFFIXES = {"": 1, "B": 1, "K": KiB, "KB": KiB, "KIB": KiB, "M": MiB, "MB": MiB, "MIB": MiB,
             "G": GiB, "GB": GiB, "GIB": GiB, "T": TiB, "TB": TiB, "TIB": TiB}
_SIZE_RE = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*([A-Za-z]*)\s*$")


def is_page_aligned(value: int) -> bool:
    return value & (PAGE_SIZE - 1) == 0


def page_align_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def parse_size(text: str | int, field: str = "size") -> int:
    """Parse '1G', '512M', '4096', '0x1000', '64KiB' into bytes (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise InvalidArgument(field, text, "must not be negative", hex_value=False)
        return text
    match = _SIZE_RE.match(str(text))
    if not match or match.group(2).upper() not in _SUFFIXES:
        raise InvalidArgument(field, text, "not a size (use e.g. 4096, 64K, 512M, 1G)", hex_value=False)
    return int(match.group(1), 0) * _SUFFIXES[match.group(2).upper()]


def format_size(nbytes: float) -> str:
    """Human-readable binary size: 1.0 GiB, 32.0 MiB, 512 B."""
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def format_size_exact(nbytes: int) -> str:
    """A size as it can be typed back exactly: the largest binary unit that divides it (8M,
    1602M, 4096)."""
    for suffix, unit in (("T", TiB), ("G", GiB), ("M", MiB), ("K", KiB)):
        if nbytes >= unit and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)
