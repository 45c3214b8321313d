"""Memory backings: memfd (shared) and guest_memfd (private) files, their host mappings and
allocation accounting measured from the kernel (docs/design.md, "backing/").

With ``kvm/`` the only package allowed ctypes and mmap; it never imports ``kvm/``: a backing
just wraps an fd that the VM created.
"""

from . import syscalls
from .accounting import measured_ranges
from .faults import FaultyBacking
from .memory import Backing, PrivateBacking, SharedBacking

__all__ = ["Backing", "FaultyBacking", "PrivateBacking", "SharedBacking", "measured_ranges", "syscalls"]
