"""The lines of a recording, one at a time: a path or an open file (gzip, bzip2 and xz
decompressed, as trace files are), or any iterable of lines (str or bytes).

Lines are read with the trace reader's length cap (``MAX_LINE_BYTES``); a longer one comes out
as None, after its rest is read and thrown away, for the importer to report.  Blank lines are
not yielded.  Bytes that are not UTF-8 are replaced (a recording is text from another program;
a bad byte in a line that matters makes that line malformed, not the file unreadable).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import IO

from ..trace import MAX_LINE_BYTES, Lines, close_binary, open_binary

Source = str | os.PathLike | IO | Iterable[str] | Iterable[bytes]


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return text.rstrip("\r\n")


class SourceLines:
    """Iterates ``(line number, text or None)``; ``number`` is the last line read."""

    def __init__(self, source: Source):
        self._source = source
        self.number = 0

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        source = self._source
        if isinstance(source, (str, os.PathLike)) or hasattr(source, "readline"):
            yield from self._file_lines(source)
            return
        for raw in source:
            self.number += 1
            text = _text(raw)
            if text.strip():
                yield self.number, text if len(text) <= MAX_LINE_BYTES else None

    def _file_lines(self, source) -> Iterator[tuple[int, str | None]]:
        file, owned = open_binary(source)
        lines = Lines(file, skip_long=True)
        try:
            for number, raw in lines:
                self.number = number
                yield number, None if raw is None else _text(raw)
            self.number = lines.number
        finally:
            close_binary(file, owned)


__all__ = ["Source", "SourceLines"]
