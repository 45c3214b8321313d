"""The machine: guest_memfd private memory, a shared alias, vCPU threads, the exit loop,
the PSC doorbell and the guest trace player (docs/design.md, "vmm/")."""

from . import layout, program, psc
from .layout import RESERVED_BYTES
from .machine import Machine, OpsResult
from .program import GuestOp

__all__ = ["GuestOp", "Machine", "OpsResult", "RESERVED_BYTES", "layout", "program", "psc"]
