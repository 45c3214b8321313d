"""What a trace does, read in one streaming pass: ``privmem trace stats``.

Conversions and pages each way, the distinct pages converted, no-op conversions, the
flip-flop share (page conversions that bring a page back to the state it left within
``flip_ms`` milliseconds, the pattern a discard-at-once policy pays twice for and the lazy
policy reclaims for free within its max age), a histogram of conversion sizes in powers of
two, the layout and the ops per vCPU.

Bounded for any guest: the trace is read a line at a time (:class:`TraceReader`) and the
per-page state is a :class:`~privmem.workload.history.ConversionHistory` of runs, never an
array sized by guest memory; the counters are per kind, per vCPU and per size class.

Flip-flops need times.  A conversion back is counted within the window only when both it
and the conversion it undoes carry ``t`` (importers write it; generated traces have none);
the share is then "n/a" when no conversion back has times, and conversions back at any
delay are always reported beside it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

from ..convert.policies.lazy import DEFAULT_MAX_AGE
from ..errors import InvalidArgument
from ..memmap import GuestMemoryMap
from ..ops import KINDS
from ..units import GiB, KiB, MiB, PAGE_SHIFT, TiB, format_size
from .history import ConversionHistory, is_noop
from .trace import TraceReader

DEFAULT_FLIP_MS = DEFAULT_MAX_AGE * 1000      # what lazy would reclaim for free by default
_VCPUS_SHOWN = 16
_NANOSECOND = 1e-9


@dataclass
class TraceStats:
    name: str
    memory_map: GuestMemoryMap
    vcpus: int
    flip_ms: float
    ops: int = 0
    by_kind: Counter = field(default_factory=lambda: Counter({kind: 0 for kind in KINDS}))
    to_private: int = 0
    to_shared: int = 0
    pages_to_private: int = 0
    pages_to_shared: int = 0
    noop_conversions: int = 0          # every page already in the state asked for
    back_pages: int = 0                # page conversions undoing the page's previous conversion
    back_timed_pages: int = 0          # ... of which both conversions carry a time
    flip_pages: int = 0                # ... of which within flip_ms
    back_conversions: int = 0          # conversions with at least one page converted back
    flip_conversions: int = 0          # ... within flip_ms
    timed_conversions: int = 0
    first_t: float | None = None
    last_t: float | None = None
    distinct_pages: int = 0
    history_runs: int = 0              # what the per-page state cost, in runs
    sizes: Counter = field(default_factory=Counter)   # largest power of two <= size -> conversions
    per_vcpu: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def conversions(self) -> int:
        return self.to_private + self.to_shared

    @property
    def page_conversions(self) -> int:
        return self.pages_to_private + self.pages_to_shared

    @property
    def flip_share(self) -> float | None:
        """Share of page conversions that flip a page back within ``flip_ms``; None when no
        conversion back has times on both sides."""
        if not self.back_timed_pages:
            return None
        return self.flip_pages / self.page_conversions

    @property
    def back_share(self) -> float | None:
        return self.back_pages / self.page_conversions if self.page_conversions else None

    def as_dict(self) -> dict:
        return {
            "name": self.name, "memory": self.memory_map.ram_bytes, "layout": self.memory_map.name,
            "regions": self.memory_map.as_json(), "vcpus": self.vcpus, "ops": self.ops,
            "by_kind": dict(self.by_kind), "conversions": self.conversions,
            "to_private": self.to_private, "to_shared": self.to_shared,
            "pages_to_private": self.pages_to_private, "pages_to_shared": self.pages_to_shared,
            "bytes_to_private": self.pages_to_private << PAGE_SHIFT,
            "bytes_to_shared": self.pages_to_shared << PAGE_SHIFT,
            "distinct_pages_converted": self.distinct_pages, "noop_conversions": self.noop_conversions,
            "flip_flop": {"window_ms": self.flip_ms, "pages": self.flip_pages, "share": self.flip_share,
                          "conversions": self.flip_conversions,
                          "converted_back_pages": self.back_pages, "converted_back_share": self.back_share,
                          "converted_back_conversions": self.back_conversions,
                          "converted_back_timed_pages": self.back_timed_pages,
                          "basis": "event times (t)" if self.back_timed_pages else "n/a: no times"},
            "timed_conversions": self.timed_conversions, "first_t": self.first_t, "last_t": self.last_t,
            "sizes": {str(size): count for size, count in sorted(self.sizes.items())},
            "per_vcpu": self.per_vcpu, "history_runs": self.history_runs, "warnings": self.warnings,
        }

    def format(self) -> list[str]:
        """The human summary, one string per line."""
        kinds = ", ".join(f"{count:,} {kind}" for kind, count in self.by_kind.items() if count)
        out = [f"trace {self.name!r}: {self.ops:,} ops" + (f" ({kinds})" if kinds else ""),
               f"  layout: {self.memory_map.describe()}",
               f"  vCPUs: {self.vcpus}: " + _per_vcpu(self.per_vcpu),
               f"  conversions: {self.conversions:,}: to private {self.to_private:,} "
               f"({_pages(self.pages_to_private)}), to shared {self.to_shared:,} ({_pages(self.pages_to_shared)})",
               f"  distinct pages converted: {_pages(self.distinct_pages)}; no-op conversions (every page "
               f"already in that state): {self.noop_conversions:,}"]
        window = f"{self.flip_ms:g} ms"
        if self.flip_share is None:
            why = "no conversion back carries event times" if self.back_pages else "no page is converted back"
            flip = f"n/a ({why})"
        else:
            flip = (f"{self.flip_pages:,} of {self.page_conversions:,} page conversions ({self.flip_share:.2%}), "
                    f"in {self.flip_conversions:,} of {self.conversions:,} conversions")
            if self.back_timed_pages < self.back_pages:
                flip += f"; {self.back_pages - self.back_timed_pages:,} pages converted back without times not counted"
        back = (f"{_count(self.back_pages, 'page')} ({self.back_share:.2%}) in "
                f"{_count(self.back_conversions, 'conversion')}"
                if self.back_pages else "none")
        out.append(f"  flip-flop (pages converted back within {window}): {flip}")
        out.append(f"  converted back at any delay: {back}")
        if self.first_t is not None:
            out.append(f"  times: {self.timed_conversions:,} of {self.conversions:,} conversions, "
                       f"{self.first_t:.6f} s to {self.last_t:.6f} s")
        else:
            out.append("  times: none (ops carry no event time)")
        if self.sizes:
            out.append("  conversion sizes (from, up to twice that):")
            for size, count in sorted(self.sizes.items()):
                out.append(f"    {_power(size):>8}  {count:>10,}  {count / self.conversions:6.1%}")
        for warning in self.warnings:
            out.append(f"  warning: {warning}")
        return out


def _pages(pages: int) -> str:
    return f"{pages:,} pages, {format_size(pages << PAGE_SHIFT)}"


def _power(size: int) -> str:
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            return f"{size // scale} {unit}"
    return f"{size} B"


def _per_vcpu(counts: list[int]) -> str:
    shown = [f"vCPU {vcpu} {count:,} ops" for vcpu, count in enumerate(counts[:_VCPUS_SHOWN])]
    if len(counts) > _VCPUS_SHOWN:
        shown.append(f"... {len(counts) - _VCPUS_SHOWN:,} more")
    return ", ".join(shown)


def trace_stats(source: str | os.PathLike | IO, flip_ms: float = DEFAULT_FLIP_MS) -> TraceStats:
    """Read a trace file (path or open file) once and count what it does."""
    if isinstance(flip_ms, bool) or not isinstance(flip_ms, (int, float)) or not 0 <= flip_ms < float("inf"):
        raise InvalidArgument("flip_ms", flip_ms, "must be a number of milliseconds >= 0", hex_value=False)
    window = flip_ms / 1000
    with TraceReader(source) as reader:
        stats = TraceStats(reader.name, reader.memory_map, reader.vcpus, flip_ms, per_vcpu=[0] * reader.vcpus)
        history = ConversionHistory()
        for op in reader:
            stats.ops += 1
            stats.by_kind[op.kind] += 1
            stats.per_vcpu[op.vcpu] += 1
            if op.kind != "convert":
                continue
            _count_conversion(stats, history, op, window)
        stats.warnings = list(reader.warnings)
    stats.distinct_pages = history.converted_pages()
    stats.history_runs = len(history)
    return stats


def _count_conversion(stats: TraceStats, history: ConversionHistory, op, window: float) -> None:
    to_private, t = op.to_private, op.t
    if to_private:
        stats.to_private += 1
        stats.pages_to_private += op.pages
    else:
        stats.to_shared += 1
        stats.pages_to_shared += op.pages
    stats.sizes[1 << (op.size.bit_length() - 1)] += 1
    if t is not None:
        stats.timed_conversions += 1
        stats.first_t = t if stats.first_t is None else min(stats.first_t, t)
        stats.last_t = t if stats.last_t is None else max(stats.last_t, t)
    pieces = history.convert(op.gpa, op.size, to_private, t)
    if is_noop(pieces, to_private):
        stats.noop_conversions += 1
    back = flipped = 0
    for piece in pieces:
        # "Back" means undoing the page's previous conversion; a first conversion to shared
        # leaves the initial private state, it does not come back to anything.
        if not piece.converted or piece.was_private == to_private:
            continue
        back += piece.pages
        if t is not None and piece.t is not None:
            stats.back_timed_pages += piece.pages
            # Times are whole nanoseconds: allow one for the float subtraction's rounding, so
            # a page back at exactly the window counts.
            if t - piece.t <= window + _NANOSECOND:
                flipped += piece.pages
    stats.back_pages += back
    stats.flip_pages += flipped
    stats.back_conversions += back > 0
    stats.flip_conversions += flipped > 0


def _count(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


__all__ = ["DEFAULT_FLIP_MS", "TraceStats", "trace_stats"]
