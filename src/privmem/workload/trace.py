"""Trace format v1: JSON Lines, one header line then one op per line.

Header::

    {"privmem_trace": 1, "memory": 1073741824, "vcpus": 1, "name": "boot"}

Ops (``vcpu`` may be left out and defaults to 0; the writer always writes it)::

    {"op": "convert", "gpa": 4096, "size": 8192, "vcpu": 0, "to": "shared"}
    {"op": "write", "gpa": 4096, "size": 8192, "vcpu": 0, "view": "private", "pattern": 17}
    {"op": "dma_in", "gpa": 4096, "size": 4096, "vcpu": 0, "pattern": 3}
    {"op": "touch", "gpa": 4096, "size": 4096, "vcpu": 0, "view": "shared"}

Integers (gpa, size, memory, vcpu, pattern) are JSON integers or ``"0x..."`` hex strings; the
writer writes integers.  Blank lines are ignored.  The reader is strict: every problem raises
:class:`~privmem.errors.TraceError` naming the line number, the field and the value: bad JSON,
duplicate keys, a missing or wrong header, unknown ops or keys, missing fields, non-integer or
negative numbers, unaligned or empty ranges, ranges past guest memory, ``vcpu >= vcpus``, unknown
``to`` / ``view`` values and patterns outside 0..255.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import IO, Iterator

from ..errors import InvalidArgument, TraceError
from .ops import OPTIONAL_FIELDS, Op, Trace, check_memory, check_op_fits, check_vcpus

FORMAT_VERSION = 1
HEADER_KEYS = ("privmem_trace", "memory", "vcpus", "name")
OP_KEYS = ("op", "gpa", "size", "vcpu") + OPTIONAL_FIELDS
_HEX_RE = re.compile(r"^0[xX][0-9a-fA-F]+$")


def _parse_object(line: int, text: str) -> dict:
    def no_duplicates(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise TraceError(line, key, value, "duplicate key")
            out[key] = value
        return out

    try:
        obj = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as err:
        raise TraceError(line, "json", text.strip()[:80],
                         f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise TraceError(line, "json", obj, "not a JSON object")
    return obj


def _integer(line: int, field: str, value: object) -> int:
    """A JSON integer or a "0x..." hex string; never a bool, float or decimal string."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _HEX_RE.match(value):
        number = int(value, 16)
    else:
        raise TraceError(line, field, value, "must be an integer or a \"0x...\" hex string")
    if number < 0:
        raise TraceError(line, field, value, "must not be negative")
    return number


def parse_header(line: int, text: str) -> tuple[str, int, int]:
    """(name, memory, vcpus) from a header line."""
    obj = _parse_object(line, text)
    if "privmem_trace" not in obj:
        raise TraceError(line, "privmem_trace", None, "missing header (the first line must be "
                         '{"privmem_trace": 1, "memory": ..., "vcpus": ..., "name": ...})')
    version = obj["privmem_trace"]
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise TraceError(line, "privmem_trace", version,
                         f"unsupported version (this reader reads {FORMAT_VERSION})")
    for key in obj:
        if key not in HEADER_KEYS:
            raise TraceError(line, key, obj[key], "unknown header key")
    for key in ("memory", "vcpus"):
        if key not in obj:
            raise TraceError(line, key, None, "missing header field")
    memory = _integer(line, "memory", obj["memory"])
    vcpus = _integer(line, "vcpus", obj["vcpus"])
    name = obj.get("name", "trace")
    if not isinstance(name, str):
        raise TraceError(line, "name", name, "must be a string")
    try:
        check_memory(memory)
        check_vcpus(vcpus)
    except InvalidArgument as err:
        raise TraceError(line, err.field, obj[err.field], err.why) from None
    return name, memory, vcpus


def parse_op(line: int, text: str, memory: int, vcpus: int) -> Op:
    """One op line, checked against the header."""
    obj = _parse_object(line, text)
    for key in obj:
        if key not in OP_KEYS:
            raise TraceError(line, key, obj[key], "unknown key")
    for key in ("op", "gpa", "size"):
        if key not in obj:
            raise TraceError(line, key, None, "missing field")
    kind = obj["op"]
    if not isinstance(kind, str):
        raise TraceError(line, "op", kind, "must be a string")
    args = {"kind": kind}
    for key in ("gpa", "size", "vcpu", "pattern"):
        if key in obj:
            args[key] = _integer(line, key, obj[key])
    for key in ("to", "view"):
        if key in obj:
            if not isinstance(obj[key], str):
                raise TraceError(line, key, obj[key], "must be 'private' or 'shared'")
            args[key] = obj[key]
    try:
        op = Op(**args)
        check_op_fits(op, memory, vcpus)
    except InvalidArgument as err:
        raise TraceError(line, err.field, obj.get(err.field, err.value), err.why) from None
    return op


class TraceReader:
    """Streams a trace: the header is read on construction (``name``, ``memory``, ``vcpus``),
    iteration yields validated :class:`Op` one line at a time.

    ``source`` is a path (str / os.PathLike) or an open text or binary file.  A context manager;
    closes the file only if it opened it.
    """

    def __init__(self, source: str | os.PathLike | IO):
        if isinstance(source, (str, os.PathLike)):
            self._file: IO = open(source, "r", encoding="utf-8")
            self._owned = True
        else:
            self._file = source
            self._owned = False
        self._line = 0
        try:
            self.name, self.memory, self.vcpus = self._read_header()
        except BaseException:
            self.close()
            raise

    def _lines(self) -> Iterator[tuple[int, str]]:
        for raw in self._file:
            self._line += 1
            if isinstance(raw, bytes):
                try:
                    raw = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise TraceError(self._line, "encoding", raw[:40], f"not UTF-8 ({err.reason})") from None
            if raw.strip():
                yield self._line, raw

    def _read_header(self) -> tuple[str, int, int]:
        self._iter = self._lines()
        for line, text in self._iter:
            return parse_header(line, text)
        raise TraceError(self._line + 1, "privmem_trace", None, "missing header (empty trace)")

    def __iter__(self) -> Iterator[Op]:
        for line, text in self._iter:
            yield parse_op(line, text, self.memory, self.vcpus)

    def read(self) -> Trace:
        """All remaining ops as a Trace."""
        return Trace(self.name, self.memory, self.vcpus, tuple(self))

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def __enter__(self) -> "TraceReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_trace(source: str | os.PathLike | IO) -> Trace:
    """Load a whole trace file (path or open file); raises TraceError on the first problem."""
    with TraceReader(source) as reader:
        return reader.read()


def loads_trace(text: str) -> Trace:
    return read_trace(io.StringIO(text))


def header_dict(trace: Trace) -> dict:
    return {"privmem_trace": FORMAT_VERSION, "memory": trace.memory, "vcpus": trace.vcpus, "name": trace.name}


def iter_lines(trace: Trace) -> Iterator[str]:
    """The file's lines, each ending in a newline."""
    yield json.dumps(header_dict(trace)) + "\n"
    for op in trace.ops:
        yield json.dumps(op.to_dict()) + "\n"


def write_trace(trace: Trace, dest: str | os.PathLike | IO) -> int:
    """Validate ``trace`` and write it as JSON Lines to a path or an open text file.
    Returns the number of ops written."""
    trace.validate()
    if isinstance(dest, (str, os.PathLike)):
        with open(dest, "w", encoding="utf-8") as out:
            out.writelines(iter_lines(trace))
    else:
        dest.writelines(iter_lines(trace))
    return len(trace.ops)


def dumps_trace(trace: Trace) -> str:
    trace.validate()
    return "".join(iter_lines(trace))
