"""The op model shared by every backend: what a guest (or its device) does to its memory.

A :class:`Trace` is a named list of :class:`Op` for a guest of ``memory`` bytes and ``vcpus`` vCPUs.
Each op acts on the half-open page range ``[gpa, gpa + size)`` and belongs to one vCPU.

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
* Guest memory starts PRIVATE (QEMU sets the whole slot private at creation); runners pre-mark
  ``[reserved, memory)`` private before launch.
* vCPUs run their own ops in order; the order between vCPUs is not promised.  A trace is
  deterministic when every page a vCPU reads or writes is converted by that vCPU only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..errors import InvalidArgument
from ..units import PAGE_SIZE, is_page_aligned

KINDS = ("convert", "write", "verify", "dma_in", "dma_out", "touch")
VIEWS = ("private", "shared")
MAX_VCPUS = 4096          # KVM_MAX_VCPUS on x86 since 6.x
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

    def __post_init__(self) -> None:
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
        if self.vcpu >= MAX_VCPUS:
            raise InvalidArgument("vcpu", self.vcpu, f"must be < {MAX_VCPUS}", hex_value=False)
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
        """The trace-file form: op, gpa, size, vcpu, then the kind's own fields."""
        out = {"op": self.kind, "gpa": self.gpa, "size": self.size, "vcpu": self.vcpu}
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
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
    if not 1 <= vcpus <= MAX_VCPUS:
        raise InvalidArgument(field, vcpus, f"must be in 1..{MAX_VCPUS}", hex_value=False)
    return vcpus


def check_op_fits(op: Op, memory: int, vcpus: int) -> None:
    """The checks that need the trace header: the range inside guest memory, vcpu < vcpus."""
    if op.end > memory:
        raise InvalidArgument("size" if op.gpa < memory else "gpa", op.size if op.gpa < memory else op.gpa,
                              f"range [{op.gpa:#x}, {op.end:#x}) is past guest memory ({memory:#x})")
    if op.vcpu >= vcpus:
        raise InvalidArgument("vcpu", op.vcpu, f"must be < vcpus ({vcpus})", hex_value=False)


@dataclass(frozen=True)
class Trace:
    """A named op list for a guest of ``memory`` bytes with ``vcpus`` vCPUs.

    The header fields are checked on construction; the ops by :meth:`validate`.
    """

    name: str
    memory: int
    vcpus: int
    ops: tuple[Op, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise InvalidArgument("name", self.name, "must be a string", hex_value=False)
        check_memory(self.memory)
        check_vcpus(self.vcpus)
        if not isinstance(self.ops, tuple):
            object.__setattr__(self, "ops", tuple(self.ops))

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return (f"Trace(name={self.name!r}, memory={self.memory:#x}, vcpus={self.vcpus}, "
                f"ops=<{len(self.ops)} ops>)")

    def __iter__(self):
        return iter(self.ops)

    def validate(self) -> "Trace":
        """Check every op against memory and vcpus; raises InvalidArgument naming ``ops[i].field``.
        Returns self so calls chain."""
        for index, op in enumerate(self.ops):
            if not isinstance(op, Op):
                raise InvalidArgument(f"ops[{index}]", op, "not an Op", hex_value=False)
            try:
                check_op_fits(op, self.memory, self.vcpus)
            except InvalidArgument as err:
                raise InvalidArgument(f"ops[{index}].{err.field}", err.value, err.why,
                                      hex_value=err.field != "vcpu") from None
        return self

    def check_reserved(self, reserved: int) -> None:
        """Raise InvalidArgument if an op touches the low ``reserved`` bytes (the machine's own)."""
        for index, op in enumerate(self.ops):
            if op.gpa < reserved:
                raise InvalidArgument(f"ops[{index}].gpa", op.gpa,
                                      f"inside the reserved low {reserved:#x} bytes")

    def per_vcpu(self) -> list[list[Op]]:
        """The ops of each vCPU, in trace order."""
        out: list[list[Op]] = [[] for _ in range(self.vcpus)]
        for op in self.ops:
            out[op.vcpu].append(op)
        return out

    def replace(self, **changes) -> "Trace":
        values = {"name": self.name, "memory": self.memory, "vcpus": self.vcpus, "ops": self.ops}
        values.update(changes)
        return Trace(**values)


def make_trace(name: str, memory: int, vcpus: int, ops: Iterable[Op]) -> Trace:
    """Build and validate a trace."""
    return Trace(name, memory, vcpus, tuple(ops)).validate()
