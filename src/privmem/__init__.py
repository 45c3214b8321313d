"""privmem: fd-based private memory for confidential VMs on Linux KVM.

The public facade; everything else lives in its layer (see docs/design.md).
"""

from .attrs import ATTR_PRIVATE, BitmapAttributes, MemoryAttributes, PageMapAttributes
from .convert import POLICIES, Conversion, ConversionEngine, ConversionTracker, Request, make_policy
from .errors import (AccessDenied, Busy, GuestError, InvalidArgument, InvalidState, KvmError,
                     PrivmemError, SyscallError, TraceError, Unsupported)
from .units import PAGE_SIZE

__all__ = [
    "ATTR_PRIVATE", "PAGE_SIZE", "POLICIES", "ConversionEngine", "make_policy", "AccessDenied", "BitmapAttributes", "Busy", "Conversion",
    "ConversionTracker", "GuestError", "InvalidArgument", "InvalidState", "KvmError",
    "MemoryAttributes", "PageMapAttributes", "PrivmemError", "Request", "SyscallError",
    "TraceError", "Unsupported",
]
