"""The op model shared by every backend: what a guest (or its device) does to its memory.

A :class:`Trace` is a named list of :class:`Op` for a guest with ``vcpus`` vCPUs whose RAM is
laid out by a :class:`~privmem.memmap.GuestMemoryMap` (``memory`` bytes of RAM; one region at
GPA 0 unless the trace says otherwise).  Each op acts on the half-open page range
``[gpa, gpa + size)``, which must be RAM, and belongs to one vCPU.  An op may carry ``t``,
the time (seconds from the start of the recording) at which its event was recorded, so a
replay can honour the recording's gaps if asked.

This module sits below ``vmm``: the machines run these ops, the trace format and the
generators produce them.

Kinds and their fields (a field not listed for a kind must be ``None``):

=========  ===============  ===================================================================
kind       fields           meaning
=========  ===============  ===================================================================
convert    to               the guest asks for the range to become ``private`` or ``shared``
                            (MAP_GPA_RANGE / PSC / MapGPA); the VMM converts it.
write      view, pattern    the guest fills the range with byte ``pattern`` through ``view``.
verify     view, pattern    the guest checks every byte of the range equals ``pattern``.
dma_in     pattern          the device writes ``pattern`` into the range (shared pages only).
dma_out    pattern          the device reads the range and checks ``pattern`` (shared only).
touch      view             the guest touches one byte per page through ``view`` (allocates
                            the page); a touch is a read-modify-write that leaves data as is.
=========  ===============  ===================================================================

Data semantics every backend and generator follows:

* A page is accessible only through the view matching its state: ``private`` view on private
  pages, ``shared`` view (and DMA) on shared pages.
* The contents of a page are **undefined after any conversion of that page** (hardware scrubs
  or re-keys it, and the VMM may discard either backing depending on the policy), and undefined
  before its first write.  A ``verify`` / ``dma_out`` is only meaningful for data written
  (``write`` / ``dma_in``) after the page's last conversion; :func:`privmem.workload.model.check_trace`
  enforces this so that a trace's result never depends on the discard policy.
* Guest RAM starts PRIVATE (QEMU sets the whole slot private at creation); machines mark it
  private before launch.
* vCPUs run their own ops in order; the order between vCPUs is not promised.  A trace is
  deterministic when every page a vCPU reads or writes is converted by that vCPU only.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable

from .errors import InvalidArgument
from .memmap import GuestMemoryMap
from .units import PAGE_SIZE, is_page_aligned

KINDS = ("convert", "write", "verify", "dma_in", "dma_out", "touch")
VIEWS = ("private", "shared")
TRACE_MAX_VCPUS = 4096    # KVM_MAX_VCPUS on x86 since 6.x: what a trace may name (a machine runs up to
                          # vmm.machine.MAX_VCPUS of them)
ADDRESS_LIMIT = 1 << 64

# Per kind: the optional fields it requires; every other optional field must be None.
REQUIRED = {
    "convert": ("to",),
    "write": ("view", "pattern"),
    "verify": ("view", "pattern"),
    "dma_in": ("pattern",),
    "dma_out": ("pattern",),
    "touch": ("view",),
}
OPTIONAL_FIELDS = ("to", "view", "pattern")
# Per kind: which of (to, view, pattern) are set.
_SHAPES = {kind: tuple(name in fields for name in OPTIONAL_FIELDS) for kind, fields in REQUIRED.items()}
_PAGE_MASK = PAGE_SIZE - 1
MAX_NAME_CHARS = 200
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Op:
    """One guest or device action on ``[gpa, gpa + size)``; validated on construction.

    Raises :class:`InvalidArgument` naming the first bad field.
    """

    kind: str
    gpa: int
    size: int
    vcpu: int = 0
    to: str | None = None
    view: str | None = None
    pattern: int | None = None
    t: float | None = None

    def __post_init__(self) -> None:
        # Valid ops take one combined test (a trace reader builds hundreds of thousands a
        # second); the checks that name the offending field run only when it fails.
        gpa, size, vcpu, pattern, t = self.gpa, self.size, self.vcpu, self.pattern, self.t
        if (type(gpa) is int and type(size) is int and type(vcpu) is int and gpa >= 0 and size > 0
                and not (gpa | size) & _PAGE_MASK and gpa + size <= ADDRESS_LIMIT and 0 <= vcpu < TRACE_MAX_VCPUS
                and _SHAPES.get(self.kind) == (self.to is not None, self.view is not None, pattern is not None)
                and (self.to is None or self.to in VIEWS) and (self.view is None or self.view in VIEWS)
                and (pattern is None or (type(pattern) is int and 0 <= pattern <= 255))
                and (t is None or (type(t) is float and 0.0 <= t < math.inf))):
            return
        self._diagnose()

    def _diagnose(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgument("op", self.kind, f"unknown op (one of {', '.join(KINDS)})")
        for name in ("gpa", "size", "vcpu"):
            value = getattr(self, name)
            if not _is_int(value):
                raise InvalidArgument(name, value, "must be an integer", hex_value=False)
            if value < 0:
                raise InvalidArgument(name, value, "must not be negative", hex_value=name != "vcpu")
        if not is_page_aligned(self.gpa):
            raise InvalidArgument("gpa", self.gpa, f"not aligned to {PAGE_SIZE}")
        if self.size == 0:
            raise InvalidArgument("size", self.size, "must be > 0")
        if not is_page_aligned(self.size):
            raise InvalidArgument("size", self.size, f"not a multiple of {PAGE_SIZE}")
        if self.gpa + self.size > ADDRESS_LIMIT:
            raise InvalidArgument("size", self.size, "range wraps past 2**64")
        if self.vcpu >= TRACE_MAX_VCPUS:
            raise InvalidArgument("vcpu", self.vcpu, f"must be < {TRACE_MAX_VCPUS}", hex_value=False)
        required = REQUIRED[self.kind]
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if name in required and value is None:
                raise InvalidArgument(name, value, f"required by op {self.kind}", hex_value=False)
            if name not in required and value is not None:
                raise InvalidArgument(name, value, f"not allowed for op {self.kind}", hex_value=False)
        if self.to is not None and self.to not in VIEWS:
            raise InvalidArgument("to", self.to, "must be 'private' or 'shared'", hex_value=False)
        if self.view is not None and self.view not in VIEWS:
            raise InvalidArgument("view", self.view, "must be 'private' or 'shared'", hex_value=False)
        if self.pattern is not None:
            if not _is_int(self.pattern):
                raise InvalidArgument("pattern", self.pattern, "must be an integer", hex_value=False)
            if not 0 <= self.pattern <= 255:
                raise InvalidArgument("pattern", self.pattern, "must be in 0..255", hex_value=False)
        if self.t is not None:
            if isinstance(self.t, bool) or not isinstance(self.t, (int, float)) or not 0 <= self.t < math.inf:
                raise InvalidArgument("t", self.t, "must be a finite number of seconds >= 0", hex_value=False)

    @property
    def end(self) -> int:
        """First byte after the range."""
        return self.gpa + self.size

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE

    @property
    def to_private(self) -> bool:
        """For a convert: True when converting to private."""
        return self.to == "private"

    @property
    def access_view(self) -> str | None:
        """The view the op needs its pages to be in: ``view`` for guest ops, ``shared`` for DMA,
        None for a convert."""
        if self.kind in ("dma_in", "dma_out"):
            return "shared"
        return self.view

    def to_dict(self) -> dict:
        """The trace-file form: op, gpa, size, vcpu, then the kind's own fields, then ``t``."""
        out = {"op": self.kind, "gpa": self.gpa, "size": self.size, "vcpu": self.vcpu}
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.t is not None:
            out["t"] = self.t
        return out


# Meaning-level constructors (the generators use these).
def convert(gpa: int, size: int, to: str, vcpu: int = 0) -> Op:
    return Op("convert", gpa, size, vcpu, to=to)


def write(gpa: int, size: int, view: str, pattern: int, vcpu: int = 0) -> Op:
    return Op("write", gpa, size, vcpu, view=view, pattern=pattern)


def verify(gpa: int, size: int, view: str, pattern: int, vcpu: int = 0) -> Op:
    return Op("verify", gpa, size, vcpu, view=view, pattern=pattern)


def dma_in(gpa: int, size: int, pattern: int, vcpu: int = 0) -> Op:
    return Op("dma_in", gpa, size, vcpu, pattern=pattern)


def dma_out(gpa: int, size: int, pattern: int, vcpu: int = 0) -> Op:
    return Op("dma_out", gpa, size, vcpu, pattern=pattern)


def touch(gpa: int, size: int, view: str, vcpu: int = 0) -> Op:
    return Op("touch", gpa, size, vcpu, view=view)


def check_memory(memory: object, field: str = "memory") -> int:
    """Guest memory size: a positive multiple of PAGE_SIZE below 2**64."""
    if not _is_int(memory):
        raise InvalidArgument(field, memory, "must be an integer", hex_value=False)
    if memory <= 0:
        raise InvalidArgument(field, memory, "must be > 0")
    if not is_page_aligned(memory):
        raise InvalidArgument(field, memory, f"not a multiple of {PAGE_SIZE}")
    if memory > ADDRESS_LIMIT:
        raise InvalidArgument(field, memory, "must be <= 2**64")
    return memory


def check_vcpus(vcpus: object, field: str = "vcpus") -> int:
    if not _is_int(vcpus):
        raise InvalidArgument(field, vcpus, "must be an integer", hex_value=False)
    if not 1 <= vcpus <= TRACE_MAX_VCPUS:
        raise InvalidArgument(field, vcpus, f"must be in 1..{TRACE_MAX_VCPUS}", hex_value=False)
    return vcpus


def check_name(name: object, field: str = "name") -> str:
    """A trace name: a string of printable characters, at most MAX_NAME_CHARS (it is printed
    in tables and terminals, where a control character could act as an escape sequence)."""
    if not isinstance(name, str):
        raise InvalidArgument(field, name, "must be a string", hex_value=False)
    if len(name) > MAX_NAME_CHARS or _CONTROL_RE.search(name):
        raise InvalidArgument(field, name, f"must be at most {MAX_NAME_CHARS} printable characters",
                              hex_value=False)
    return name


def check_op_fits(op: Op, memory_map: GuestMemoryMap, vcpus: int) -> None:
    """The checks that need the trace header: the range inside guest RAM, vcpu < vcpus."""
    if not memory_map.contains(op.gpa, op.size):
        raise memory_map.outside(op.gpa, op.size)
    if op.vcpu >= vcpus:
        raise InvalidArgument("vcpu", op.vcpu, f"must be < vcpus ({vcpus})", hex_value=False)


@dataclass(frozen=True)
class Trace:
    """A named op list for a guest with ``vcpus`` vCPUs and ``memory`` bytes of RAM, laid out
    by ``memory_map`` (default: one region at GPA 0).

    The header fields are checked on construction; the ops by :meth:`validate`.
    """

    name: str
    memory: int
    vcpus: int
    ops: tuple[Op, ...] = field(default=())
    memory_map: GuestMemoryMap | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        check_memory(self.memory)
        check_vcpus(self.vcpus)
        if self.memory_map is None:
            object.__setattr__(self, "memory_map", GuestMemoryMap.flat(self.memory))
        elif not isinstance(self.memory_map, GuestMemoryMap):
            raise InvalidArgument("memory_map", self.memory_map, "must be a GuestMemoryMap", hex_value=False)
        elif self.memory_map.ram_bytes != self.memory:
            raise InvalidArgument("memory", self.memory, f"differs from the RAM of the regions "
                                  f"({self.memory_map.describe()})")
        if not isinstance(self.ops, tuple):
            object.__setattr__(self, "ops", tuple(self.ops))

    @classmethod
    def on_map(cls, name: str, memory_map: GuestMemoryMap, vcpus: int, ops: Iterable[Op] = ()) -> "Trace":
        return cls(name, memory_map.ram_bytes, vcpus, tuple(ops), memory_map)

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return (f"Trace(name={self.name!r}, {self.memory_map.describe()}, vcpus={self.vcpus}, "
                f"ops=<{len(self.ops)} ops>)")

    def __iter__(self):
        return iter(self.ops)

    def validate(self) -> "Trace":
        """Check every op against the memory map and vcpus; raises InvalidArgument naming
        ``ops[i].field``.  Returns self so calls chain."""
        for index, op in enumerate(self.ops):
            if not isinstance(op, Op):
                raise InvalidArgument(f"ops[{index}]", op, "not an Op", hex_value=False)
            try:
                check_op_fits(op, self.memory_map, self.vcpus)
            except InvalidArgument as err:
                raise InvalidArgument(f"ops[{index}].{err.field}", err.value, err.why,
                                      hex_value=err.field != "vcpu") from None
        return self

    def per_vcpu(self) -> list[list[Op]]:
        """The ops of each vCPU, in trace order."""
        out: list[list[Op]] = [[] for _ in range(self.vcpus)]
        for op in self.ops:
            out[op.vcpu].append(op)
        return out

    def replace(self, **changes) -> "Trace":
        values = {"name": self.name, "memory": self.memory, "vcpus": self.vcpus, "ops": self.ops,
                  "memory_map": self.memory_map}
        values.update(changes)
        if "memory" in changes and "memory_map" not in changes:
            values["memory_map"] = None
        return Trace(**values)


def make_trace(name: str, memory: int, vcpus: int, ops: Iterable[Op]) -> Trace:
    """Build and validate a trace."""
    return Trace(name, memory, vcpus, tuple(ops)).validate()
