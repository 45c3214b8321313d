"""One import, end to end, in two passes and bounded memory.

Pass one (:meth:`Import.read`) reads the recording a line at a time through the importer's
parser: conversions are deduplicated (:mod:`.dedup`), timed from the first event, tagged with
their thread (:mod:`.threads`) and spooled to disk (:mod:`.spool`); skipped lines are counted
per reason; malformed lines and the tracer's dropped-events marks are reported.  At its end
the guest is known: its memory map (:mod:`.layout`) and its vCPUs.

Pass two (:meth:`Import.ops`) turns the spool into ops for that guest: a conversion outside
its RAM (an MMIO page, a hole of the layout, past ``memory``) is reported with its line and
skipped; the rest become ``convert`` ops with their vCPU and time, and those whose pages were
all in that state already are counted as no-ops (they stay: KVM traces every
KVM_SET_MEMORY_ATTRIBUTES call, and the replay's store ignores no-ops as the kernel does).

Each problem goes to ``on_problem(line, message)`` as it is found and is counted in the
report; with ``strict`` the first one raises :class:`~privmem.errors.TraceError` instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from ...errors import InvalidArgument, TraceError
from ...memmap import LAYOUTS, GuestMemoryMap
from ...ops import MAX_NAME_CHARS, Op, Trace, check_memory, check_name, check_vcpus
from ...units import PAGE_SHIFT
from ..history import ConversionHistory, is_noop
from ..trace import MAX_LINE_BYTES, TraceWriter
from .dedup import Deduplicator
from .events import Dropped, Malformed, Skipped
from .layout import guest_map, sizes_the_guest
from .registry import IMPORTERS, Importer
from .report import ImportReport
from .source import Source, SourceLines
from .spool import Spool
from .threads import MAX_THREADS, ThreadMap

_SHOWN_CHARS = 60


def find_importer(name: str) -> Importer:
    entry = IMPORTERS.get(name)
    if entry is None:
        raise InvalidArgument("from", name, f"unknown importer (choose from {', '.join(IMPORTERS)})",
                              hex_value=False)
    return entry


class Import:
    """An import in progress: ``read(source)``, then ``memory_map`` / ``vcpus`` are known and
    ``ops()`` yields the trace's ops once.  ``memory``, ``layout`` and ``vcpus`` override what
    is inferred.  A context manager (it owns the spool)."""

    def __init__(self, importer: str | Importer, *, memory: int | None = None, layout: str | None = None,
                 vcpus: int | None = None, strict: bool = False, file: str | None = None,
                 on_problem: Callable[[int, str], None] | None = None, spool_dir: str | None = None):
        self.importer = find_importer(importer) if isinstance(importer, str) else importer
        self._memory = None if memory is None else check_memory(memory)
        if layout is not None and layout not in LAYOUTS:
            raise InvalidArgument("layout", layout, f"unknown (choose from {', '.join(LAYOUTS)})", hex_value=False)
        self._layout = layout
        self._vcpus = None if vcpus is None else check_vcpus(vcpus)
        self._strict = strict
        self._on_problem = on_problem
        self.report = ImportReport(self.importer.name, file)
        self._threads = ThreadMap()
        self._spool = Spool(spool_dir)
        self.memory_map: GuestMemoryMap | None = None
        self.vcpus: int | None = None
        self._mapping: list[int] = []

    # -- problems ------------------------------------------------------------------------------

    def _lose(self, line: int, field: str, value: object, message: str) -> None:
        """One line's content does not reach the trace: raise (strict) or report and go on."""
        if self._strict:
            raise TraceError(line, field, value, message)
        self.report.problem(line, message)
        if self._on_problem is not None:
            self._on_problem(line, message)

    def _malformed(self, line: int, text: str, message: str) -> None:
        self.report.malformed += 1
        self._lose(line, "line", text[:_SHOWN_CHARS], message)

    # -- pass one ------------------------------------------------------------------------------

    def read(self, source: Source) -> None:
        """Read every line of the recording; afterwards the guest is known."""
        parse, report = self.importer.parse, self.report
        dedup = Deduplicator()
        first_stamp: int | None = None
        highest: tuple[int, int] | None = None
        lines = SourceLines(source)
        for number, text in lines:
            if text is None:
                self._malformed(number, "", f"longer than {MAX_LINE_BYTES} bytes")
                continue
            try:
                result = parse(text)
            except Malformed as err:
                self._malformed(number, text, str(err))
                continue
            if isinstance(result, Skipped):
                report.skipped[result.reason] += 1
                continue
            if isinstance(result, Dropped):
                self._dropped(number, result)
                continue
            report.events += 1
            report.by_event[result.event] += 1
            thread = self._threads.index(result.thread)
            if thread is None:
                self._malformed(number, text, f"a thread beyond the first {MAX_THREADS} (KVM's vCPU limit)")
                continue
            if not dedup.admit(result):
                continue
            t = None
            if result.stamp_ns is not None:
                if first_stamp is None:
                    first_stamp = result.stamp_ns
                # Threads print their lines a little out of order; an event stamped before the
                # first one is taken as simultaneous with it (times are never negative).
                t = max(0, result.stamp_ns - first_stamp) / 1e9
            if sizes_the_guest(result.gpa, result.size) and (
                    highest is None or result.gpa + result.size > highest[0] + highest[1]):
                highest = (result.gpa, result.size)
            self._spool.append(number, result.gpa, result.size, result.to_private, thread, t)
        report.lines = lines.number
        report.deduplicated = dedup.dropped
        self._settle(highest)

    def _dropped(self, line: int, mark: Dropped) -> None:
        report = self.report
        report.dropped_reports += 1
        if mark.events is None:
            report.dropped_uncounted += 1
            how_many = "events"
        else:
            report.dropped_events += mark.events
            how_many = f"{mark.events:,} events"
        self._lose(line, "dropped", mark.where, f"the tracer dropped {how_many} on {mark.where}: "
                   "the recording is incomplete")

    def _settle(self, highest: tuple[int, int] | None) -> None:
        """The guest the recording implies, with the caller's overrides."""
        report = self.report
        self.memory_map, report.inferred = guest_map(highest, self._memory, self._layout)
        self._mapping, self.vcpus = self._threads.vcpus(self._vcpus)
        report.memory_map, report.vcpus = self.memory_map, self.vcpus
        report.vcpus_inferred = self._vcpus is None
        report.threads = self._threads.rows(self._mapping)

    # -- pass two ------------------------------------------------------------------------------

    def ops(self) -> Iterator[Op]:
        """The trace's ops, in recording order (after ``read``)."""
        if self.memory_map is None:
            raise InvalidArgument("import", self.importer.name, "read() the recording first", hex_value=False)
        memory_map, report, threads, mapping = self.memory_map, self.report, self._threads, self._mapping
        history = ConversionHistory()
        for record in self._spool:
            if not memory_map.contains(record.gpa, record.size):
                report.outside += 1
                self._lose(record.line, "gpa", hex(record.gpa), memory_map.outside(record.gpa, record.size).why)
                continue
            op = Op("convert", record.gpa, record.size, threads.vcpu_of(mapping, record.thread),
                    to="private" if record.to_private else "shared", t=record.t)
            if is_noop(history.convert(op.gpa, op.size, record.to_private), record.to_private):
                report.noop += 1
            report.conversions += 1
            if record.to_private:
                report.to_private += 1
                report.pages_to_private += op.size >> PAGE_SHIFT
            else:
                report.to_shared += 1
                report.pages_to_shared += op.size >> PAGE_SHIFT
            if op.t is not None:
                report.timed += 1
                report.duration_s = op.t if report.duration_s is None else max(report.duration_s, op.t)
            yield op

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> "Import":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_name(importer: str, source: Source) -> str:
    """A trace's name when none is given: the recording's file name, else the importer's."""
    if not isinstance(source, (str, os.PathLike)):
        return importer
    base = os.path.basename(os.fspath(source))[:MAX_NAME_CHARS]
    return "".join(c if c.isprintable() else "?" for c in base) or importer


def _name_and_file(importer: str, source: Source, name: str | None, options: dict) -> str:
    """The trace's name (checked), and the recording's path in the report's ``file``."""
    if isinstance(source, (str, os.PathLike)):
        options.setdefault("file", os.fspath(source))
    return check_name(name if name is not None else default_name(importer, source))


def import_file(importer: str, source: Source, dest: str | os.PathLike, *, name: str | None = None,
                **options) -> ImportReport:
    """Import a recording into the trace file ``dest`` (written atomically by TraceWriter:
    nothing is left there if the import fails).  ``options`` are Import's; the spool lives
    beside ``dest``."""
    name = _name_and_file(importer, source, name, options)
    directory = os.path.dirname(os.path.abspath(os.fspath(dest)))
    with Import(importer, spool_dir=directory, **options) as job:
        job.read(source)
        with TraceWriter(dest, name, job.memory_map, job.vcpus) as writer:
            for op in job.ops():
                writer.write(op)
    return job.report


def import_trace(importer: str, source: Source, *, name: str | None = None, **options) -> tuple[Trace, ImportReport]:
    """Import a recording into a Trace in memory (for recordings that fit in it; the CLI
    streams to a file with ``import_file``)."""
    name = _name_and_file(importer, source, name, options)
    with Import(importer, **options) as job:
        job.read(source)
        ops = tuple(job.ops())
    return Trace.on_map(name, job.memory_map, job.vcpus, ops), job.report


def import_qemu_log(source: Source, memory: int | None = None, vcpus: int | None = None, strict: bool = False,
                    name: str = "qemu-log", layout: str | None = None) -> tuple[Trace, ImportReport]:
    """A QEMU trace log as a Trace (see :mod:`.qemu_log`)."""
    return import_trace("qemu-log", source, name=name, memory=memory, vcpus=vcpus, strict=strict, layout=layout)


__all__ = ["Import", "default_name", "find_importer", "import_file", "import_qemu_log", "import_trace"]
