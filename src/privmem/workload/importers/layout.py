"""The guest a recording implies: its memory map, from the highest address it converts.

Without ``layout``, :func:`privmem.memmap.infer_layout` decides (q35 when anything lies above
4 GiB, else flat; ``memory`` sets the RAM size, else the smallest that holds the addresses).
With ``layout`` and no ``memory``, the RAM is the smallest (in 2 MiB steps) whose map reaches
the highest address.  An address in a hole of the chosen map is the pipeline's to report.

A range inside [3 GiB, 4 GiB) does not count towards the highest address: on every x86 layout
privmem knows it is MMIO (q35's RAM below 4 GiB ends by 2.75 GiB, Cloud Hypervisor's at 3 GiB:
the local APIC, IOAPIC, PCI windows, firmware flash), and QEMU traces conversions there that
it then ignores; inferring RAM up to it would give a small guest 4 GiB.
"""

from __future__ import annotations

from ...memmap import GuestMemoryMap, infer_layout
from ...units import GiB, MiB

_STEP = 2 * MiB
_MMIO_WINDOW = (3 * GiB, 4 * GiB)


def sizes_the_guest(gpa: int, size: int) -> bool:
    """Whether a converted range counts towards the inferred RAM (module docstring)."""
    return not (_MMIO_WINDOW[0] <= gpa and gpa + size <= _MMIO_WINDOW[1])


def _smallest_ram(layout: str, highest_end: int) -> int:
    """The least RAM (a multiple of 2 MiB) whose ``layout`` map ends at or above
    ``highest_end``.  The maps' top grows with their RAM, so a bisection finds it."""
    low, high = 1, max(1, -(-highest_end // _STEP))      # in steps; `high` RAM always reaches
    while low < high:
        middle = (low + high) // 2
        if GuestMemoryMap.from_layout(layout, middle * _STEP).top >= highest_end:
            high = middle
        else:
            low = middle + 1
    return low * _STEP


def guest_map(highest: tuple[int, int] | None, memory: int | None = None,
              layout: str | None = None) -> tuple[GuestMemoryMap, str | None]:
    """(the memory map, what of it was inferred: "layout and memory", "layout", "memory" or
    None).  ``highest`` is the range with the highest end in the recording, None if it
    converts nothing."""
    if layout is None:
        memory_map = infer_layout([highest] if highest is not None else [], memory)
        return memory_map, "layout" if memory is not None else "layout and memory"
    if memory is None:
        memory = _smallest_ram(layout, highest[0] + highest[1] if highest is not None else 0)
        return GuestMemoryMap.from_layout(layout, memory), "memory"
    return GuestMemoryMap.from_layout(layout, memory), None


__all__ = ["guest_map", "sizes_the_guest"]
