"""Argument checks shared by every attribute store, in the kernel's order.

KVM_SET_MEMORY_ATTRIBUTES checks, in order: flags, unsupported attribute bits,
size 0 or address + size overflowing 64 bits, then page alignment of address and size
(kvm_vm_ioctl_set_mem_attributes).  Failing any of them changes nothing, so the
stores call this before they touch their state.

One deliberate difference: the kernel sums address + size in u64, so a range ending
exactly at 2**64 wraps to 0 and is refused there; privmem refuses only ranges that run
*past* 2**64, so the last page below 2**64 is addressable like any other.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..units import ADDRESS_LIMIT, PAGE_SHIFT, is_page_aligned

ATTR_PRIVATE = 1 << 3  # KVM_MEMORY_ATTRIBUTE_PRIVATE
_PAGE_MASK = (1 << PAGE_SHIFT) - 1


def _require_u64(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(field, value, "must be an integer", hex_value=False)
    if value < 0 or value >= ADDRESS_LIMIT:
        raise InvalidArgument(field, value, "must fit in an unsigned 64-bit value")
    return value


def check_set(address: int, size: int, attributes: int, flags: int, supported: int) -> tuple[int, int]:
    """Validate a set request; return the half-open gfn range ``(first, end)``."""
    _require_u64("flags", flags)
    if flags:
        raise InvalidArgument("flags", flags, "must be 0")
    _require_u64("attributes", attributes)
    if attributes & ~supported:
        raise InvalidArgument("attributes", attributes, f"has bits outside the supported set {supported:#x}")
    return check_range(address, size)


def check_bitmap(address: int, bits: object, attributes: int, supported: int) -> tuple[int, int]:
    """Validate a bitmap load (``load_bitmap``): ``bits`` first, then as a set request of one
    page per bit from ``address``; return the half-open gfn range it covers."""
    if not isinstance(bits, (bytes, bytearray)) or not bits:
        shown = bytes(bits) if isinstance(bits, (bytes, bytearray)) else type(bits).__name__
        raise InvalidArgument("bits", shown, "must be non-empty bytes", hex_value=False)
    return check_set(address, len(bits) << (3 + PAGE_SHIFT), attributes, 0, supported)


def check_range(address: int, size: int) -> tuple[int, int]:
    """Validate a page range as the kernel does; return ``(first gfn, end gfn)``."""
    # Valid ranges take one combined test (this runs once per conversion); the checks that
    # name the offending field run only when it fails.
    if (type(address) is int and type(size) is int and address >= 0 and size > 0
            and not (address | size) & _PAGE_MASK and address + size <= ADDRESS_LIMIT):
        return address >> PAGE_SHIFT, (address + size) >> PAGE_SHIFT
    _require_u64("address", address)
    _require_u64("size", size)
    if size == 0:
        raise InvalidArgument("size", size, "must not be 0")
    if address + size > ADDRESS_LIMIT:
        raise InvalidArgument("size", size, f"address {address:#x} + size runs past 2**64")
    if not is_page_aligned(address):
        raise InvalidArgument("address", address, "must be 4 KiB aligned")
    if not is_page_aligned(size):
        raise InvalidArgument("size", size, "must be a multiple of 4 KiB")
    return address >> PAGE_SHIFT, (address + size) >> PAGE_SHIFT


def check_window(address: int, size: int | None) -> tuple[int, int]:
    """A query window for ``ranges()``: like a range, but ``size=None`` means to 2**64."""
    if size is None:
        _require_u64("address", address)
        if not is_page_aligned(address):
            raise InvalidArgument("address", address, "must be 4 KiB aligned")
        return address >> PAGE_SHIFT, ADDRESS_LIMIT >> PAGE_SHIFT
    return check_range(address, size)
