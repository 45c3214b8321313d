"""What an import read, made and left out: the summary printed after ``privmem trace import``
(``format()``) and its JSON form (``as_dict()``).

Every counter is small whatever the recording's size: skipped lines are counted per reason
(a fixed set of phrases in the parsers), problems are all counted but only the first
``MAX_KEPT`` are kept (each one is handed to the caller as it is found), threads are capped by
:mod:`.threads`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ...errors import shown
from ...memmap import GuestMemoryMap
from ...units import PAGE_SHIFT, format_size

MAX_KEPT = 100
_THREADS_SHOWN = 8


@dataclass
class ImportReport:
    """Counts of one import.  ``lost`` says whether anything the recording holds, or should
    hold, is missing from the trace: a malformed line, a conversion outside the guest's RAM, or
    events the tracer itself dropped."""

    source: str
    file: str | None = None
    lines: int = 0
    events: int = 0                    # lines recording a conversion, duplicates included
    by_event: Counter = field(default_factory=Counter)
    conversions: int = 0               # convert ops written
    to_private: int = 0
    to_shared: int = 0
    pages_to_private: int = 0
    pages_to_shared: int = 0
    deduplicated: int = 0              # second lines of one conversion, dropped
    noop: int = 0                      # ops whose pages were all in that state already (kept)
    skipped: Counter = field(default_factory=Counter)
    malformed: int = 0
    outside: int = 0                   # conversions not inside the guest's RAM, skipped
    problems: list[tuple[int, str]] = field(default_factory=list)
    dropped_reports: int = 0           # tracer lines saying events were lost
    dropped_events: int = 0            # events they say were lost (those that say how many)
    dropped_uncounted: int = 0         # reports that do not say how many
    memory_map: GuestMemoryMap | None = None
    inferred: str | None = None        # "layout and memory", "layout", "memory" or None
    vcpus: int = 1
    vcpus_inferred: bool = True
    threads: list[dict] = field(default_factory=list)
    timed: int = 0                     # ops with an event time
    duration_s: float | None = None    # last op time (times start at the first event)

    @property
    def lost(self) -> bool:
        return bool(self.malformed or self.outside or self.dropped_reports)

    def problem(self, line: int, message: str) -> None:
        if len(self.problems) < MAX_KEPT:
            self.problems.append((line, message))

    def as_dict(self) -> dict:
        memory_map = self.memory_map
        return {
            "source": self.source, "file": self.file, "lines": self.lines, "events": self.events,
            "by_event": dict(self.by_event), "conversions": self.conversions,
            "to_private": self.to_private, "to_shared": self.to_shared,
            "pages_to_private": self.pages_to_private, "pages_to_shared": self.pages_to_shared,
            "bytes_to_private": self.pages_to_private << PAGE_SHIFT,
            "bytes_to_shared": self.pages_to_shared << PAGE_SHIFT,
            "deduplicated": self.deduplicated, "noop": self.noop, "skipped": dict(self.skipped),
            "malformed": self.malformed, "outside": self.outside,
            "problems": [{"line": line, "message": message} for line, message in self.problems],
            "problems_kept": len(self.problems),
            "dropped": {"reports": self.dropped_reports, "events": self.dropped_events,
                        "uncounted_reports": self.dropped_uncounted},
            "lost": self.lost,
            "memory": memory_map.ram_bytes if memory_map else None,
            "layout": memory_map.name if memory_map else None,
            "regions": memory_map.as_json() if memory_map else None,
            "inferred": self.inferred, "vcpus": self.vcpus, "vcpus_inferred": self.vcpus_inferred,
            "threads": self.threads, "timed": self.timed, "duration_s": self.duration_s,
        }

    def format(self) -> list[str]:
        """The human summary, one string per line."""
        out = [f"{self.source}: {self.file or '<input>'}: {self.lines:,} lines, {self.events:,} conversion events "
               f"-> {self.conversions:,} conversions"
               + _parenthesised((self.deduplicated, "duplicate dropped", "duplicates dropped"),
                                (self.outside, "outside guest RAM", "outside guest RAM"),
                                (self.malformed, "malformed line", "malformed lines"))]
        if self.by_event:
            out.append("  events: " + ", ".join(f"{name} {count:,}" for name, count in self.by_event.most_common()))
        out.append(f"  to private: {self.to_private:,} conversions, {_pages(self.pages_to_private)}; "
                   f"to shared: {self.to_shared:,} conversions, {_pages(self.pages_to_shared)}; "
                   f"no-ops (pages already in that state, kept): {self.noop:,}")
        if self.skipped:
            out.append(f"  skipped: {sum(self.skipped.values()):,} lines: "
                       + ", ".join(f"{reason} {count:,}" for reason, count in self.skipped.most_common()))
        if self.malformed or self.outside:
            out.append(f"  not imported: {self.malformed:,} malformed, {self.outside:,} outside guest RAM "
                       "(each reported on stderr as FILE:LINE: message)")
        if self.dropped_reports:
            lost = f"{self.dropped_events:,} events"
            if self.dropped_uncounted:
                lost += f" and an unknown number in {self.dropped_uncounted:,} of them"
            out.append(f"  dropped by the tracer: {_count(self.dropped_reports, 'report')}, {lost}: "
                       "the recording is incomplete")
        if self.memory_map is not None:
            how = f", {self.inferred} inferred from the highest address converted" if self.inferred else ""
            out.append(f"  layout: {self.memory_map.describe()}{how}")
        out.append(f"  vCPUs: {self.vcpus}" + (", inferred" if self.vcpus_inferred else ", as asked")
                   + (f" from {_count(len(self.threads), 'thread')}: " + _threads(self.threads) if self.threads
                      else " (the recording names no threads)"))
        if self.conversions:
            span = f", spanning {self.duration_s:.6f} s" if self.duration_s is not None else ""
            out.append(f"  times: {self.timed:,} of {self.conversions:,} ops carry one{span}")
        return out


def _parenthesised(*counts: tuple[int, str, str]) -> str:
    parts = [f"{count:,} {one if count == 1 else many}" for count, one, many in counts if count]
    return f" ({', '.join(parts)})" if parts else ""


def _count(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _pages(pages: int) -> str:
    return f"{pages:,} pages ({format_size(pages << PAGE_SHIFT)})"


def _threads(rows: list[dict]) -> str:
    shown_rows = [f"{row['tid']} {shown(row['comm']) if row['comm'] is not None else ''} -> vCPU {row['vcpu']} "
                  f"({row['events']:,} events)".replace("  ", " ") for row in rows[:_THREADS_SHOWN]]
    if len(rows) > _THREADS_SHOWN:
        shown_rows.append(f"... {len(rows) - _THREADS_SHOWN:,} more")
    return ", ".join(shown_rows)


__all__ = ["ImportReport", "MAX_KEPT"]
