"""The conversions of pass one, kept on disk until the trace's header can be written.

A trace file starts with the guest's layout and vCPU count, which an importer learns only at
the end of the recording.  Pass one therefore writes each conversion as a fixed 35-byte record
to an anonymous temporary file (removed by the OS even if privmem is killed); pass two reads
them back once the header is known.  Memory stays bounded whatever the recording's length.
"""

from __future__ import annotations

import math
import struct
import tempfile
from collections.abc import Iterator
from typing import NamedTuple

from ...units import PAGE_SHIFT

# line, gpa, pages (a size of 2**64 bytes does not fit 64 bits), to_private, thread index, t (NaN: none)
_RECORD = struct.Struct("<QQQBHd")
_CHUNK = 4096                            # records per read


class Spooled(NamedTuple):
    line: int
    gpa: int
    size: int
    to_private: bool
    thread: int
    t: float | None


class Spool:
    """Append records, then iterate them once in order.  A context manager."""

    def __init__(self, directory: str | None = None):
        self._file = tempfile.TemporaryFile(prefix=".privmem-import-", dir=directory)
        self.count = 0

    def append(self, line: int, gpa: int, size: int, to_private: bool, thread: int, t: float | None) -> None:
        self._file.write(_RECORD.pack(line, gpa, size >> PAGE_SHIFT, to_private, thread, math.nan if t is None else t))
        self.count += 1

    def __iter__(self) -> Iterator[Spooled]:
        self._file.flush()
        self._file.seek(0)
        while True:
            chunk = self._file.read(_RECORD.size * _CHUNK)
            if not chunk:
                return
            for line, gpa, pages, to_private, thread, t in _RECORD.iter_unpack(chunk):
                yield Spooled(line, gpa, pages << PAGE_SHIFT, bool(to_private), thread, None if math.isnan(t) else t)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Spool", "Spooled"]
