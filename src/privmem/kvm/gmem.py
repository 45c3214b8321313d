"""ioctls on a guest_memfd fd: the in-place conversion series' KVM_SET_MEMORY_ATTRIBUTES2
(from "[PATCH v7 00/42] guest_memfd: In-place conversion support", kvm@vger.kernel.org, May
2026: NOT MERGED, numbers provisional).

``set_memory_attributes2`` is the thin wrapper; ``probe_memory_attributes2`` asks the kernel
whether it has the ioctl at all without changing anything: it issues a request with a flag
set, which a kernel that has the ioctl refuses at its first check (EINVAL) and one that does
not refuses as an unknown ioctl (ENOTTY).  No capability number is assumed: the series has
renumbered KVM_CAP_GUEST_MEMFD_MEMORY_ATTRIBUTES from draft to draft.
"""

from __future__ import annotations

import ctypes
import errno

from ..errors import KvmError
from . import ioctls, uapi
from ._sys import _ioctl, get_errno


def set_memory_attributes2(fd: int, offset: int, size: int, attributes: int, flags: int = 0) -> None:
    """KVM_SET_MEMORY_ATTRIBUTES2 on guest_memfd ``fd``.  Raises KvmError; on EAGAIN (a page
    in the range has references beyond the page cache: a pin) its ``error_offset`` names
    the first such page."""
    arg = uapi.kvm_memory_attributes2(offset=offset, size=size, attributes=attributes, flags=flags)
    if _ioctl(fd, ioctls.KVM_SET_MEMORY_ATTRIBUTES2, ctypes.addressof(arg)) < 0:
        error = KvmError("KVM_SET_MEMORY_ATTRIBUTES2", get_errno(),
                         f"offset={offset:#x} size={size:#x} attributes={attributes:#x}")
        error.error_offset = arg.error_offset
        raise error


def probe_memory_attributes2(fd: int) -> tuple[bool, str]:
    """(offered, why) for guest_memfd ``fd``: changes nothing (the request is invalid)."""
    arg = uapi.kvm_memory_attributes2(offset=0, size=4096, attributes=0, flags=1)
    if _ioctl(fd, ioctls.KVM_SET_MEMORY_ATTRIBUTES2, ctypes.addressof(arg)) == 0:
        return True, "accepted a request with flags set (unexpected)"
    err = get_errno()
    if err == errno.ENOTTY:
        return False, "ENOTTY: not in this kernel"
    if err == errno.EINVAL:
        return True, "EINVAL for flags != 0: the ioctl exists"
    return False, f"{errno.errorcode.get(err, err)}: unexpected answer"


__all__ = ["probe_memory_attributes2", "set_memory_attributes2"]
