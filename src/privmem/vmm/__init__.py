"""The machine: RAM laid out by a guest memory map, guest_memfd private memory, a shared alias
at the shared bit, a firmware region with the 64-bit trace player, vCPU threads, the exit
handlers, the PSC doorbell and the device model (docs/design.md, "vmm/")."""

from . import firmware, program, psc
from .machine import MAX_MEMORY, MAX_VCPUS, Machine
from .program import Program
from .result import OpsResult

__all__ = ["MAX_MEMORY", "MAX_VCPUS", "Machine", "OpsResult", "Program", "firmware", "program", "psc"]
