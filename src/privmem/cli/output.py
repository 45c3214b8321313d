"""Where results and progress go: results to stdout (tables that fit 80 columns, ``key: value``
blocks), everything else to stderr (progress, warnings, the backend actually used), so a pipe
gets the results alone and a terminal still shows what is happening."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

# Pipes and CI logs have no width: keep tables at the width a terminal user gets by default,
# or at COLUMNS where it is set (rich reads it).
PIPE_WIDTH = 80
WIDE_PIPE_WIDTH = 200
PLAIN_EVERY = 2.0          # seconds between plain progress lines in a pipe


def console(wide: bool = False):
    """The results console (stdout)."""
    from rich.console import Console

    if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit():
        return Console()
    return Console(width=WIDE_PIPE_WIDTH if wide else PIPE_WIDTH)


def note(text: str) -> None:
    """One line for the user that is not a result (stderr)."""
    print(f"privmem: {text}", file=sys.stderr, flush=True)


def fields(rows) -> str:
    """A ``key: value`` block, values aligned, like ``privmem info``."""
    rows = list(rows)
    width = max((len(key) for key, _ in rows), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in rows)


class _PlainProgress:
    """Progress as plain stderr lines (pipes, logs): the first step, then at most one line
    every PLAIN_EVERY seconds, then the last."""

    def __init__(self, title: str, total: int | None):
        self.title, self.total, self.done, self.last = title, total, 0, 0.0

    def advance(self, text: str, steps: int = 1) -> None:
        self.done += steps
        now = time.monotonic()
        if self.done == 1 or self.done == self.total or now - self.last >= PLAIN_EVERY:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            print(f"{self.title}: [{self.done}{of}] {text}", file=sys.stderr, flush=True)

    def status(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= PLAIN_EVERY:
            self.last = now
            print(f"{self.title}: {text}", file=sys.stderr, flush=True)


class _BarProgress:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, text: str, steps: int = 1) -> None:
        self.progress.update(self.task, advance=steps, description=text)

    def status(self, text: str, force: bool = False) -> None:
        self.progress.update(self.task, description=text)


@contextmanager
def progress(title: str, total: int | None = None):
    """A progress reporter on stderr: a bar on a terminal (gone when done), plain lines
    elsewhere.  ``advance(text)`` after each step, ``status(text)`` for what is running (in a
    pipe at most one line every PLAIN_EVERY seconds, unless ``force``)."""
    if not sys.stderr.isatty():
        yield _PlainProgress(title, total)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[progress.description]{task.description}"), BarColumn()]
    columns += [MofNCompleteColumn()] if total else []
    with Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
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
