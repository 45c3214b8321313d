"""Trace format v1: JSON Lines, one header line, one op per line, then an end marker.

Header (``layout``, ``regions`` and ``end_marker`` are optional, so traces written before them
stay valid)::

    {"privmem_trace": 1, "memory": 17179869184, "vcpus": 1, "name": "boot", "layout": "q35",
     "regions": [{"gpa": 0, "size": 2147483648}, {"gpa": 4294967296, "size": 15032385536}],
     "end_marker": true}

``memory`` is the guest's RAM in bytes.  ``regions`` lists where that RAM lies in guest-physical
space (they must add up to ``memory``); without it, ``layout`` names a layout that builds them
(``privmem.memmap.LAYOUTS``); without either, the RAM is one region at GPA 0.

Ops (``vcpu`` may be left out and defaults to 0; the writer always writes it; ``t`` is the time
of the recorded event, in seconds from the start of the recording, written by importers)::

    {"op": "convert", "gpa": 4096, "size": 8192, "vcpu": 0, "to": "shared", "t": 0.0125}
    {"op": "write", "gpa": 4096, "size": 8192, "vcpu": 0, "view": "private", "pattern": 17}
    {"op": "dma_in", "gpa": 4096, "size": 4096, "vcpu": 0, "pattern": 3}
    {"op": "touch", "gpa": 4096, "size": 4096, "vcpu": 0, "view": "shared"}

End marker: ``{"privmem_trace_end": <number of ops>}``.  A header with ``"end_marker": true``
promises it, so a file cut short (a full disk, an interrupted writer) is refused instead of
replaying as a valid shorter trace; a trace without the promise (older writers) is read with
a warning in ``TraceReader.warnings``.  Writers write to a temporary file and rename it into
place, so an interrupted write leaves no file at all.

Integers (gpa, size, memory, vcpu, pattern) are JSON integers or ``"0x..."`` hex strings below
2**64; the writer writes integers.  Blank lines are ignored.  Files compressed with gzip,
bzip2 or xz are read as they are (recognised by their magic bytes); other compressed formats
are refused by name.

The reader is strict and bounded: every problem raises :class:`~privmem.errors.TraceError`
naming the line number, the field and the value (clipped): bytes that are not UTF-8, a line
longer than ``MAX_LINE_BYTES``, bad JSON, nesting, duplicate keys, a missing or wrong header,
unknown ops or keys, missing fields, non-integer, negative or too large numbers, unaligned or
empty ranges, ranges outside guest RAM (named with the regions around them), ``vcpu >=
vcpus``, unknown ``to`` / ``view`` values, patterns outside 0..255, a missing or wrong end
marker.  It streams: ops are parsed one line at a time, so memory does not grow with the
trace.  Op lines take a fast path (msgspec decodes each into a typed struct; ``privmem bench
parse`` measures it against the standard library), and any line the fast path does not accept
goes through the strict standard-library path, which names the problem.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import tempfile
from zlib import error as zlib_error
from collections.abc import Iterable, Iterator
from typing import IO

import msgspec

from ..errors import InvalidArgument, TraceError
from ..memmap import LAYOUTS, GuestMemoryMap
from ..ops import OPTIONAL_FIELDS, Op, Trace, check_memory, check_name, check_op_fits, check_vcpus
from ..units import ADDRESS_LIMIT

FORMAT_VERSION = 1
HEADER_KEYS = ("privmem_trace", "memory", "vcpus", "name", "layout", "regions", "end_marker")
OP_KEYS = ("op", "gpa", "size", "vcpu") + OPTIONAL_FIELDS + ("t",)
END_KEY = "privmem_trace_end"
MAX_LINE_BYTES = 64 * 1024        # an op line is ~100 bytes; a header with many regions a few KiB
MAX_REGIONS = 64
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_HEX_RE = re.compile(r"^0[xX][0-9a-fA-F]{1,16}$")
_COMPRESSED = ((b"\x1f\x8b", "gzip", lambda raw: gzip.GzipFile(fileobj=raw)), (b"BZh", "bzip2", bz2.BZ2File),
               (b"\xfd7zXZ\x00", "xz", lzma.LZMAFile))
_REFUSED = ((b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"), (b"\x04\x22\x4d\x18", "lz4"))


# -- lines ----------------------------------------------------------------------------------

def open_binary(source) -> tuple[IO[bytes], IO[bytes] | None]:
    """(binary file to read lines from, the file to close or None) for a path or an open
    text or binary file; compressed files decompressed."""
    if isinstance(source, (str, os.PathLike)):
        raw: IO[bytes] = open(source, "rb")
        owned = raw
    elif isinstance(source, io.TextIOBase):
        return _TextAsBinary(source), None
    else:
        raw, owned = source, None
    try:
        head = _peek(raw, 6)
        for magic, _, opener in _COMPRESSED:
            if head.startswith(magic):
                return opener(raw), owned
        for magic, name in _REFUSED:
            if head.startswith(magic):
                raise TraceError(1, "file", head, f"{name}-compressed: decompress it first "
                                 "(gzip, bzip2 and xz files are read as they are)")
    except BaseException:
        if owned is not None:
            owned.close()
        raise
    return raw, owned


def close_binary(file: IO[bytes], owned: IO[bytes] | None) -> None:
    """Close what ``open_binary`` opened: the decompressor, then the file it read."""
    if owned is not None:
        if file is not owned:
            file.close()
        owned.close()


def _peek(raw: IO[bytes], n: int) -> bytes:
    if hasattr(raw, "peek"):
        return raw.peek(n)[:n]
    if raw.seekable():
        where = raw.tell()
        head = raw.read(n)
        raw.seek(where)
        return head
    return b""


class _TextAsBinary(io.RawIOBase):
    """An open text file read as UTF-8 bytes, line by line (for StringIO and text files)."""

    def __init__(self, text: IO[str]):
        self._text = text

    def readable(self) -> bool:
        return True

    def readline(self, limit: int = -1) -> bytes:
        return self._text.readline(limit).encode("utf-8", "surrogateescape")


class Lines:
    """Iterates ``(line number, bytes)`` over the non-blank lines of a binary file, each at
    most MAX_LINE_BYTES; ``number`` is the last line read, blank or not.

    A longer line raises TraceError, or with ``skip_long`` yields ``(number, None)`` after
    reading past its rest in MAX_LINE_BYTES pieces (an importer reports it and goes on;
    memory stays bounded either way)."""

    def __init__(self, file: IO[bytes], skip_long: bool = False):
        self._file = file
        self._skip_long = skip_long
        self.number = 0

    def _read(self) -> bytes:
        try:
            return self._file.readline(MAX_LINE_BYTES + 1)
        except (OSError, EOFError, lzma.LZMAError, zlib_error) as err:
            raise TraceError(self.number + 1, "file", str(err),
                             "could not be read (corrupt compressed data?)") from None

    def __iter__(self) -> Iterator[tuple[int, bytes | None]]:
        while True:
            raw = self._read()
            if not raw:
                return
            self.number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                if not self._skip_long:
                    raise TraceError(self.number, "line", raw[:40], f"longer than {MAX_LINE_BYTES} bytes")
                while raw and not raw.endswith(b"\n"):
                    raw = self._read()
                yield self.number, None
                continue
            if raw.strip():
                yield self.number, raw


# -- the strict path: standard-library JSON, every problem named -----------------------------

def _parse_object(line: int, raw: bytes | str) -> dict:
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise TraceError(line, "encoding", raw[max(0, err.start - 8):err.start + 8],
                             f"not UTF-8 ({err.reason} at byte {err.start})") from None
    else:
        text = raw

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
        raise TraceError(line, "json", text.strip(), f"not valid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise TraceError(line, "json", text.strip(), "nested too deeply") from None
    if not isinstance(obj, dict):
        raise TraceError(line, "json", obj, "not a JSON object")
    return obj


def _integer(line: int, field: str, value: object) -> int:
    """A JSON integer or a "0x..." hex string below 2**64; never a bool, float or decimal string."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _HEX_RE.match(value):
        number = int(value, 16)
    else:
        raise TraceError(line, field, value, "must be an integer or a \"0x...\" hex string")
    if number < 0:
        raise TraceError(line, field, value, "must not be negative")
    if number >= ADDRESS_LIMIT:
        raise TraceError(line, field, value, "must be below 2**64")
    return number


class Header:
    """What a header line says: ``name``, ``memory_map``, ``vcpus``, ``end_marker``."""

    __slots__ = ("name", "memory_map", "vcpus", "end_marker")

    def __init__(self, name: str, memory_map: GuestMemoryMap, vcpus: int, end_marker: bool):
        self.name, self.memory_map, self.vcpus, self.end_marker = name, memory_map, vcpus, end_marker

    @property
    def memory(self) -> int:
        return self.memory_map.ram_bytes


def parse_header(line: int, raw: bytes | str) -> Header:
    obj = _parse_object(line, raw)
    if "privmem_trace" not in obj:
        raise TraceError(line, "privmem_trace", None, "missing header (the first line must be "
                         '{"privmem_trace": 1, "memory": ..., "vcpus": ..., "name": ...})')
    version = obj["privmem_trace"]
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise TraceError(line, "privmem_trace", version, f"unsupported version (this reader reads {FORMAT_VERSION})")
    for key in obj:
        if key not in HEADER_KEYS:
            raise TraceError(line, key, obj[key], "unknown header key")
    for key in ("memory", "vcpus"):
        if key not in obj:
            raise TraceError(line, key, None, "missing header field")
    memory = _integer(line, "memory", obj["memory"])
    vcpus = _integer(line, "vcpus", obj["vcpus"])
    end_marker = obj.get("end_marker", False)
    if not isinstance(end_marker, bool):
        raise TraceError(line, "end_marker", end_marker, "must be true or false")
    try:
        name = check_name(obj.get("name", "trace"))
        check_memory(memory)
        check_vcpus(vcpus)
        memory_map = _header_map(line, obj, memory)
    except TraceError:
        raise
    except InvalidArgument as err:
        raise TraceError(line, err.field, obj.get(err.field, err.value), err.why) from None
    return Header(name, memory_map, vcpus, end_marker)


def _header_map(line: int, obj: dict, memory: int) -> GuestMemoryMap:
    layout = obj.get("layout")
    if layout is not None and (not isinstance(layout, str) or (layout not in LAYOUTS and "regions" not in obj)):
        raise TraceError(line, "layout", layout, f"unknown (choose from {', '.join(LAYOUTS)}, or give regions)")
    if "regions" not in obj:
        return GuestMemoryMap.from_layout(layout or "flat", memory)
    regions = obj["regions"]
    if not isinstance(regions, list) or not regions or len(regions) > MAX_REGIONS:
        raise TraceError(line, "regions", regions, f"must be a list of 1 to {MAX_REGIONS} {{\"gpa\", \"size\"}} objects")
    spans = []
    for index, region in enumerate(regions):
        field = f"regions[{index}]"
        if not isinstance(region, dict) or set(region) != {"gpa", "size"}:
            raise TraceError(line, field, region, 'must be {"gpa": ..., "size": ...}')
        spans.append((_integer(line, f"{field}.gpa", region["gpa"]), _integer(line, f"{field}.size", region["size"])))
    try:
        memory_map = GuestMemoryMap(spans, layout or "custom")
    except InvalidArgument as err:
        raise TraceError(line, err.field, err.value, err.why) from None
    if memory_map.ram_bytes != memory:
        raise TraceError(line, "memory", memory, f"differs from the regions' {memory_map.ram_bytes:#x} bytes of RAM")
    return memory_map


def parse_op(line: int, raw: bytes | str, memory_map: GuestMemoryMap, vcpus: int) -> Op:
    """One op line, checked against the header (the strict path)."""
    return _op_from_object(line, _parse_object(line, raw), memory_map, vcpus)


def _op_from_object(line: int, obj: dict, memory_map: GuestMemoryMap, vcpus: int) -> Op:
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
    if "t" in obj:
        args["t"] = obj["t"]
    return _make_op(line, args, obj, memory_map, vcpus)


def _make_op(line: int, args: dict, raw_values: dict, memory_map: GuestMemoryMap, vcpus: int) -> Op:
    try:
        op = Op(**args)
        check_op_fits(op, memory_map, vcpus)
    except InvalidArgument as err:
        raise TraceError(line, err.field, raw_values.get(err.field, err.value), err.why) from None
    return op


# -- the fast path ------------------------------------------------------------------------------

_UNSET = msgspec.UNSET


class _OpLine(msgspec.Struct, forbid_unknown_fields=True):
    op: str | msgspec.UnsetType = _UNSET
    gpa: int | str | msgspec.UnsetType = _UNSET
    size: int | str | msgspec.UnsetType = _UNSET
    vcpu: int | str | msgspec.UnsetType = _UNSET
    to: str | msgspec.UnsetType = _UNSET
    view: str | msgspec.UnsetType = _UNSET
    pattern: int | str | msgspec.UnsetType = _UNSET
    t: float | msgspec.UnsetType = _UNSET


_decode_op_line = msgspec.json.Decoder(_OpLine).decode
_KEY_END = b'":'


def _fast_op(line: int, raw: bytes, memory_map: GuestMemoryMap, vcpus: int) -> Op | None:
    """The op on ``raw`` if the fast path accepts the line as it is, else None (the strict
    path then names the problem)."""
    try:
        obj = _decode_op_line(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    kind, gpa, size, vcpu = obj.op, obj.gpa, obj.size, obj.vcpu
    if kind is _UNSET or type(gpa) is not int or type(size) is not int:
        return None
    args = {"kind": kind, "gpa": gpa, "size": size}
    present = 3
    if vcpu is not _UNSET:
        if type(vcpu) is not int:
            return None
        args["vcpu"] = vcpu
        present += 1
    for key in ("to", "view", "pattern", "t"):
        value = getattr(obj, key)
        if value is not _UNSET:
            args[key] = value
            present += 1
    pattern = args.get("pattern")
    # A duplicate key is silently merged by msgspec; count the keys to send such lines (and
    # hex strings, which need their own check) to the strict path.
    if raw.count(_KEY_END) != present or (pattern is not None and type(pattern) is not int) \
            or gpa >= ADDRESS_LIMIT or size >= ADDRESS_LIMIT:
        return None
    return _make_op(line, args, args, memory_map, vcpus)


# -- reading ----------------------------------------------------------------------------------

class TraceReader:
    """Streams a trace: the header is read on construction (``name``, ``memory``,
    ``memory_map``, ``vcpus``), iteration yields validated :class:`Op` one line at a time and
    checks the end marker at the end (``ops_read`` counts them; ``warnings`` collects what is
    worth telling the user but not refusing).

    ``source`` is a path (str / os.PathLike) or an open text or binary file.  A context
    manager; closes the file only if it opened it.
    """

    def __init__(self, source: str | os.PathLike | IO):
        self._file, self._owned = open_binary(source)
        self.warnings: list[str] = []
        self.ops_read = 0
        self._ended = False
        try:
            self._lines = Lines(self._file)
            self._iter = iter(self._lines)
            for line, raw in self._iter:
                self.header = parse_header(line, raw)
                break
            else:
                raise TraceError(self._lines.number + 1, "privmem_trace", None, "missing header (empty trace)")
        except BaseException:
            self.close()
            raise
        self.name, self.memory_map, self.vcpus = self.header.name, self.header.memory_map, self.header.vcpus
        self.memory = self.memory_map.ram_bytes

    def __iter__(self) -> Iterator[Op]:
        memory_map, vcpus = self.memory_map, self.vcpus
        for line, raw in self._iter:
            if self._ended:
                raise TraceError(line, END_KEY, raw.strip()[:40], "ops after the end marker")
            op = _fast_op(line, raw, memory_map, vcpus)
            if op is None:
                obj = _parse_object(line, raw)
                if END_KEY in obj:
                    self._end(line, obj)
                    continue
                op = _op_from_object(line, obj, memory_map, vcpus)
            self.ops_read += 1
            yield op
        if not self._ended:
            if self.header.end_marker:
                raise TraceError(self._lines.number + 1, END_KEY, None, f"missing: the file ends after {self.ops_read:,} ops "
                                 "without the end marker its header promises (cut short?)")
            self.warnings.append(f"no end marker: {self.ops_read:,} ops read; a trace written before end "
                                 "markers, or one cut short")

    def _end(self, line: int, obj: dict) -> None:
        if set(obj) != {END_KEY}:
            raise TraceError(line, END_KEY, obj, "the end marker has one key")
        count = _integer(line, END_KEY, obj[END_KEY])
        if count != self.ops_read:
            raise TraceError(line, END_KEY, count, f"the file holds {self.ops_read:,} ops (cut or spliced?)")
        self._ended = True

    def read(self) -> Trace:
        """All remaining ops as a Trace."""
        return Trace(self.name, self.memory, self.vcpus, tuple(self), self.memory_map)

    def close(self) -> None:
        close_binary(self._file, self._owned)

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


# -- writing ------------------------------------------------------------------------------------

def header_dict(name: str, memory_map: GuestMemoryMap, vcpus: int) -> dict:
    header = {"privmem_trace": FORMAT_VERSION, "memory": memory_map.ram_bytes, "vcpus": vcpus, "name": name}
    if memory_map != GuestMemoryMap.flat(memory_map.ram_bytes):
        header["layout"] = memory_map.name
        header["regions"] = memory_map.as_json()
    header["end_marker"] = True
    return header


def iter_lines(trace: Trace) -> Iterator[str]:
    """The file's lines, each ending in a newline."""
    yield json.dumps(header_dict(trace.name, trace.memory_map, trace.vcpus)) + "\n"
    for op in trace.ops:
        yield json.dumps(op.to_dict()) + "\n"
    yield json.dumps({END_KEY: len(trace.ops)}) + "\n"


class TraceWriter:
    """Writes a trace one op at a time: ``with TraceWriter(path, name, memory_map, vcpus) as w:
    w.write(op)``.  Ops are checked against the header as they come.  For a path, the lines go
    to a temporary file in the same directory, renamed into place when the block ends without
    an exception (the end marker written first); on an exception, or an interrupt, the
    temporary file is removed and nothing is left at the path."""

    def __init__(self, dest: str | os.PathLike | IO, name: str, memory_map: GuestMemoryMap, vcpus: int):
        check_name(name)
        check_vcpus(vcpus)
        self.memory_map, self.vcpus, self.count = memory_map, vcpus, 0
        self._path = os.fspath(dest) if isinstance(dest, (str, os.PathLike)) else None
        self._tmp = None
        if self._path is None:
            self._out = dest
        else:
            directory = os.path.dirname(os.path.abspath(self._path))
            fd, self._tmp = tempfile.mkstemp(prefix=".privmem-trace-", suffix=".tmp", dir=directory)
            os.fchmod(fd, 0o666 & ~_UMASK)          # mkstemp makes 0600; a trace is an ordinary file
            self._out = os.fdopen(fd, "w", encoding="utf-8")
        self._out.write(json.dumps(header_dict(name, memory_map, vcpus)) + "\n")

    def write(self, op: Op) -> None:
        try:
            check_op_fits(op, self.memory_map, self.vcpus)
        except InvalidArgument as err:
            raise InvalidArgument(f"ops[{self.count}].{err.field}", err.value, err.why,
                                  hex_value=err.field != "vcpu") from None
        self._out.write(json.dumps(op.to_dict()) + "\n")
        self.count += 1

    def write_all(self, ops: Iterable[Op]) -> None:
        for op in ops:
            self.write(op)

    def __enter__(self) -> "TraceWriter":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self._out.write(json.dumps({END_KEY: self.count}) + "\n")
        if self._path is None:
            return
        try:
            self._out.close()
        finally:
            if kind is None:
                os.replace(self._tmp, self._path)
            else:
                os.unlink(self._tmp)


def write_trace(trace: Trace, dest: str | os.PathLike | IO) -> int:
    """Validate ``trace`` and write it as JSON Lines to a path (atomically) or an open text
    file.  Returns the number of ops written."""
    trace.validate()
    with TraceWriter(dest, trace.name, trace.memory_map, trace.vcpus) as writer:
        writer.write_all(trace.ops)
    return writer.count


def dumps_trace(trace: Trace) -> str:
    trace.validate()
    return "".join(iter_lines(trace))


__all__ = ["END_KEY", "FORMAT_VERSION", "Header", "Lines", "MAX_LINE_BYTES", "TraceReader", "TraceWriter",
           "close_binary", "dumps_trace", "header_dict", "iter_lines", "loads_trace", "open_binary", "parse_header",
           "parse_op", "read_trace", "write_trace"]
