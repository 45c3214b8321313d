"""Where results and progress go: results to stdout (tables that fit 80 columns, ``key: value``
blocks), everything else to stderr (progress, warnings, the backend actually used), so a pipe
gets the results alone and a terminal still shows what is happening."""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

# Pipes and CI logs have no width: keep tables at the width a terminal user gets by default,
# or at COLUMNS where it is set (rich reads it).
PIPE_WIDTH = 80
WIDE_PIPE_WIDTH = 200         # --wide: wide enough for every table's every column
PLAIN_EVERY = 2.0          # seconds between plain progress lines in a pipe


class _TrimmedLines:
    """stdout without the spaces rich pads table rows and wrapped lines with, so a saved
    output diffs cleanly; a partial line waits for its end or a flush."""

    def __init__(self, out):
        self.out, self.partial = out, ""

    def write(self, text: str) -> int:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        if lines:
            self.out.write("".join(line.rstrip(" ") + "\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        if self.partial:
            self.out.write(self.partial)
            self.partial = ""
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self.out, "encoding", "utf-8")


def console(wide: bool = False):
    """The results console (stdout)."""
    from rich.console import Console

    if wide:                        # asked for every column: whole lines, whatever the terminal
        return Console(width=WIDE_PIPE_WIDTH, file=_TrimmedLines(sys.stdout))
    if sys.stdout.isatty():         # a terminal: rich's own colours, nothing to trim
        return Console()
    if os.environ.get("COLUMNS", "").isdigit():
        return Console(file=_TrimmedLines(sys.stdout))
    return Console(width=PIPE_WIDTH, file=_TrimmedLines(sys.stdout))


def note(text: str) -> None:
    """One line for the user that is not a result (stderr)."""
    print(f"privmem: {text}", file=sys.stderr, flush=True)


def fields(rows) -> str:
    """A ``key: value`` block, values aligned, like ``privmem info``."""
    rows = list(rows)
    width = max((len(key) for key, _ in rows), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in rows)


class _PlainProgress:
    """Progress as plain stderr lines (pipes, logs): a command done within PLAIN_EVERY
    seconds prints none; a longer one prints what it is doing by then, and at most one line
    every PLAIN_EVERY seconds after (a timer prints the latest state if nothing else does)."""

    def __init__(self, title: str, total: int | None):
        self.title, self.total, self.done = title, total, 0
        self.last = time.monotonic()
        self.pending: str | None = None
        self.timer: threading.Timer | None = None
        self.lock = threading.Lock()

    def advance(self, text: str, steps: int = 1) -> None:
        self.done += steps
        of = f"/{self.total}" if self.total else ""
        self.status(f"[{self.done}{of}] {text}")

    def status(self, text: str) -> None:
        with self.lock:
            self.pending = text
            wait = PLAIN_EVERY - (time.monotonic() - self.last)
            if wait <= 0:
                self._emit()
            elif self.timer is None:
                self.timer = threading.Timer(wait, self._flush)
                self.timer.daemon = True
                self.timer.start()

    def _flush(self) -> None:
        with self.lock:
            self.timer = None
            if self.pending is not None:
                self._emit()

    def _emit(self) -> None:
        print(f"{self.title}: {self.pending}", file=sys.stderr, flush=True)
        self.pending, self.last = None, time.monotonic()

    def close(self) -> None:
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None


class _BarProgress:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, text: str, steps: int = 1) -> None:
        self.progress.update(self.task, advance=steps, description=text)

    def status(self, text: str) -> None:
        self.progress.update(self.task, description=text)


@contextmanager
def progress(title: str, total: int | None = None):
    """A progress reporter on stderr: a bar on a terminal (gone when done), plain lines
    elsewhere.  ``advance(text)`` after each step, ``status(text)`` for what is running."""
    if not sys.stderr.isatty():
        plain = _PlainProgress(title, total)
        try:
            yield plain
        finally:
            plain.close()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Column

    # The description takes what the counts, a short bar and the clock leave, and is the one
    # cut ("...") on a narrow terminal: the count and the elapsed time always show.
    description = Column(ratio=1, no_wrap=True, overflow="ellipsis")
    columns = [TextColumn("[progress.description]{task.description}", table_column=description), BarColumn(20)]
    columns += [MofNCompleteColumn()] if total else []
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True, expand=True) as bar:
        yield _BarProgress(bar, bar.add_task(title, total=total))


def resolve_backend(requested: str | None, what: str) -> str:
    """The backend to run on.  Asked for kvm without a usable /dev/kvm: an error saying why.
    Not asked, and KVM unusable: the host backend, said on stderr with the reason, since its
    timings are not KVM's."""
    from ..errors import InvalidArgument
    from ..runner import kvm_unusable_reason

    if requested == "host":
        return "host"
    reason = kvm_unusable_reason()
    if reason is None:
        return "kvm"
    if requested == "kvm":
        raise InvalidArgument("backend", "kvm", f"no usable KVM ({reason}); try --backend host", hex_value=False)
    note(f"no usable KVM ({reason}): {what} runs on the host backend (Python threads, no guest): "
         "its timings are host-backend timings, not KVM's")
    return "host"


__all__ = ["console", "fields", "note", "progress", "resolve_backend"]
