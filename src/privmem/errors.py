"""One exception tree for privmem.

Everything privmem raises on purpose derives from :class:`PrivmemError`.  OS and
ioctl failures are translated once, at the ``kvm/`` and ``backing/`` boundary,
into :class:`KvmError` / :class:`SyscallError`, which keep the operation name and
errno so a reader can find the matching section of ``api.rst`` or the man page.
"""

from __future__ import annotations

import errno as _errno
import os


class PrivmemError(Exception):
    """Base of every error privmem raises on purpose."""


MAX_SHOWN = 80


def shown(value: object, hex_value: bool = False) -> str:
    """How a value appears in a message: ``repr`` (which escapes control characters, so
    nothing a file or a guest wrote can act on a terminal), or hex for an int if asked,
    clipped to MAX_SHOWN characters."""
    text = hex(value) if hex_value and isinstance(value, int) and not isinstance(value, bool) else repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


class InvalidArgument(PrivmemError, ValueError):
    """A caller (API, guest, trace file, CLI) passed a value that is not allowed.

    ``field`` and ``value`` name what was wrong; the message always contains both (the value
    clipped and escaped by ``shown``).
    """

    def __init__(self, field: str, value: object, why: str = "invalid", *, hex_value: bool = True,
                 shown_as: str | None = None):
        self.field = field
        self.value = value
        self.why = why
        # ``shown_as``: the value as the caller says it (a size given as 3G: "3.0 GiB").
        super().__init__(f"{field}={shown_as if shown_as is not None else shown(value, hex_value)}: {why}")


class InvalidState(PrivmemError, RuntimeError):
    """The operation is not allowed in the object's current state (e.g. after launch)."""


class Busy(PrivmemError):
    """The range overlaps a conversion still in flight, or a page a device holds; the guest
    retries (EAGAIN).  ``gpa`` is the first page of the overlap, where known (the in-place
    ABI's ``error_offset``)."""

    errno = _errno.EAGAIN

    def __init__(self, message: str = "", gpa: int | None = None):
        super().__init__(message)
        self.gpa = gpa


class Interrupted(PrivmemError):
    """A run was stopped before it finished: a timeout, ``close()`` from another thread, or
    a stop request.  ``reason`` says which; no partial result is reported as complete."""

    def __init__(self, message: str, reason: str = "stopped"):
        super().__init__(message)
        self.reason = reason


class AccessDenied(PrivmemError, PermissionError):
    """The host tried to touch memory that is private to the guest."""


class Unsupported(PrivmemError):
    """The host lacks a feature (a KVM capability, a syscall flag)."""


class OsCallError(PrivmemError, OSError):
    """A system call or ioctl failed; ``call`` names it and ``errno`` is kept."""

    def __init__(self, call: str, err: int, detail: str = ""):
        self.call = call
        text = f"{call} failed: [{_errno.errorcode.get(err, err)}] {os.strerror(err)}"
        if detail:
            text += f" ({detail})"
        OSError.__init__(self, err, text)
        self.args = (err, text)

    def __str__(self) -> str:
        return self.args[1]


class KvmError(OsCallError):
    """An ioctl on /dev/kvm, a VM fd or a vCPU fd failed."""


class SyscallError(OsCallError):
    """A syscall on a memory backing (memfd_create, fallocate, mmap, lseek, ...) failed."""


class GuestError(PrivmemError):
    """The guest stopped in a way the VMM reports: shutdown, triple fault, failed entry,
    internal error, or a verify failure it signalled.  ``registers`` holds its state."""

    def __init__(self, message: str, registers: dict | None = None):
        self.registers = registers or {}
        if self.registers:
            regs = " ".join(f"{k}={v:#x}" for k, v in self.registers.items() if isinstance(v, int))
            message = f"{message} [{regs}]"
        super().__init__(message)


class TraceError(InvalidArgument):
    """A trace file is malformed; the message names the line, the field and the value."""

    def __init__(self, line: int, field: str, value: object, why: str = "invalid", source: str | None = None):
        self.line, self.source, self.trace_field = line, source, field
        where = f"{shown(source, False).strip(chr(39))}:{line}: " if source else f"line {line}: "
        super().__init__(f"{where}{field}", value, why, hex_value=False)

    def located(self, source: str) -> "TraceError":
        """The same error, named as ``FILE:LINE:`` the way compilers and importers name theirs."""
        return TraceError(self.line, self.trace_field, self.value, self.why, source=source)
