"""Two saved bench results side by side: B's time (and kernel-measured double allocation) as a
ratio to A's, row by row, each time ratio read against the noise the two runs measured.

A row is a (workload, policy, tracking, backing).  Its noise is the larger of the two rows' spreads
(the relative spread (max - min) / min of each row's rounds), and never less than the median
spread of all rows of both files: two rounds can agree by chance, leaving a row a spread
near 0 that says nothing about the machine, whose noise every row shares.  A ratio with
|B/A - 1| within the noise is "within noise", one outside it is B faster or slower.  Results of different hosts or guests are
still compared, with a warning: their ratios mix the change with the difference.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ..results import HOST_KEYS
from ..units import format_size
from .figures import png
from .report import blocks_by_workload, label, row_key, short_label

# The settings two results must share to describe the same guest and experiment.
SAME_GUEST_KEYS = ("backend", "backing", "layout", "memory", "vcpus", "scale", "seed")
WITHIN, FASTER, SLOWER, ONLY_A, ONLY_B = "within noise", "B faster", "B slower", "only in A", "only in B"


@dataclass
class RowComparison:
    key: tuple[str, str, str, str]           # (workload, policy, tracking, backing)
    a: dict | None
    b: dict | None
    noise_floor: float = 0.0

    @property
    def time_ratio(self) -> float | None:
        return self.b["wall_s"] / self.a["wall_s"] if self.a and self.b and self.a["wall_s"] else None

    @property
    def noise(self) -> float:
        return max(self.noise_floor, *((row.get("spread") or 0.0) for row in (self.a, self.b) if row))

    @property
    def double_alloc_ratio(self) -> float | None:
        if not (self.a and self.b):
            return None
        a, b = self.a["peak_double_alloc_measured_bytes"], self.b["peak_double_alloc_measured_bytes"]
        return b / a if a else (1.0 if b == 0 else None)

    @property
    def verdict(self) -> str:
        if self.a is None:
            return ONLY_B
        if self.b is None:
            return ONLY_A
        ratio = self.time_ratio
        if ratio is None or abs(ratio - 1) <= self.noise:
            return WITHIN
        return FASTER if ratio < 1 else SLOWER


@dataclass
class Comparison:
    a_path: str
    b_path: str
    rows: list[RowComparison] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    noise_floor: float = 0.0

    @property
    def compared(self) -> list[RowComparison]:
        return [row for row in self.rows if row.a and row.b]

    @property
    def within_noise(self) -> int:
        return sum(row.verdict == WITHIN for row in self.compared)


def differences(a: dict, b: dict, keys) -> list[str]:
    """``key A vs B`` for each of ``keys`` where two dicts differ."""
    return [f"{key} {a.get(key)!r} vs {b.get(key)!r}" for key in keys if a.get(key) != b.get(key)]


def compare(a: dict, b: dict, a_path: str = "A", b_path: str = "B") -> Comparison:
    """Compare two bench documents (as ``report.load`` returns them), rows in A's order then B's own."""
    out = Comparison(a_path, b_path)
    rows_a, rows_b = {row_key(row): row for row in a["summary"]}, {row_key(row): row for row in b["summary"]}
    spreads = [row["spread"] for row in a["summary"] + b["summary"] if row.get("spread") is not None]
    out.noise_floor = statistics.median(spreads) if spreads else 0.0
    out.rows = [RowComparison(k, rows_a.get(k), rows_b.get(k), out.noise_floor) for k in {**rows_a, **rows_b}]
    host_a, host_b = a.get("host") or {}, b.get("host") or {}
    unknown = [name for name, host in (("A", host_a), ("B", host_b)) if not any(host.get(k) for k in HOST_KEYS)]
    if unknown:
        out.warnings.append(f"{' and '.join(unknown)} did not record its host (written before schema 1): "
                            "cannot tell whether both ran on the same host")
    else:
        hosts = differences(host_a, host_b, HOST_KEYS)
        if hosts:
            out.warnings.append("A and B ran on different hosts (" + "; ".join(hosts) + "): the ratios mix the "
                                "change with the host")
    guests = differences(a["requested"], b["requested"], SAME_GUEST_KEYS)
    if guests:
        out.warnings.append("A and B ran different guests (" + "; ".join(guests) + "): the ratios mix the change "
                            "with the guest")
    single = [name for name, doc in (("A", a), ("B", b)) if any(row.get("rounds") == 1 for row in doc["summary"])]
    if single:
        out.warnings.append(f"{' and '.join(single)} has single-round rows: they measured no spread of their "
                            "own, so only the median spread of all rows stands for their noise")
    return out


COLUMNS = (("workload", False), ("policy", False), ("time A", True), ("time B", True), ("time B/A", True),
           ("noise", True), ("verdict", False), ("double alloc A (kernel)", True), ("double alloc B (kernel)", True),
           ("alloc B/A", True))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def cells(row: RowComparison) -> list[str]:
    either = row.a or row.b

    def figure(side, key, shown):
        return shown(side[key]) if side else "-"

    return [either["workload"], label(either), figure(row.a, "wall_s", "{:.3f} s".format),
            figure(row.b, "wall_s", "{:.3f} s".format), _ratio(row.time_ratio),
            f"±{row.noise:.1%}" if row.a and row.b else "-", row.verdict,
            figure(row.a, "peak_double_alloc_measured_bytes", format_size),
            figure(row.b, "peak_double_alloc_measured_bytes", format_size), _ratio(row.double_alloc_ratio)]


# The columns the compact table keeps (it fits 80 columns: one block per workload).
COMPACT = ("policy", "time A", "time B", "time B/A", "noise", "verdict", "alloc B/A")


def table(comparison: Comparison, wide: bool = False):
    """Every column in one table with ``wide``; else a block per workload in 80 columns."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    from .tables import compact

    heading = escape(f"privmem compare: A = {comparison.a_path}, B = {comparison.b_path}")
    if wide:
        out = Table(title=heading)
        for header, right in COLUMNS:
            out.add_column(header, justify="right" if right else "left")
        for index, block in enumerate(blocks_by_workload(comparison.rows, key=lambda row: row.key[0])):
            if index:
                out.add_section()
            for row in block:
                out.add_row(*(escape(cell) for cell in cells(row)))
        return out
    headers = [header for header, _ in COLUMNS]
    shown = [headers.index(name) for name in COMPACT]
    tables = []
    for block in blocks_by_workload(comparison.rows, key=lambda row: row.key[0]):
        out = compact(escape(f"\n{block[0].key[0]}"), [COLUMNS[index][0] for index in shown],
                      left=("policy", "verdict"))
        for row in block:
            row_cells = cells(row)
            row_cells[1] = short_label(row.a or row.b)
            out.add_row(*(escape(row_cells[index]) for index in shown))
        tables.append(out)
    return Group(heading, *tables, "", "alloc B/A: the kernel's peak double allocation, B over A; --wide: every column")


def summary(comparison: Comparison) -> str:
    compared = comparison.compared
    return (f"{comparison.within_noise} of {len(compared)} rows within noise (|B/A - 1| <= noise: the larger of "
            "the two rows' spreads, (max - min) / min over their rounds, and at least "
            f"{comparison.noise_floor:.1%}, the median spread of all rows); "
            + ", ".join(f"{sum(row.verdict == v for row in comparison.rows)} {v}"
                        for v in (FASTER, SLOWER, ONLY_A, ONLY_B)))


def plot(comparison: Comparison, path: str) -> None:
    """B/A time per row, with the row's noise as an error bar around it."""
    rows = comparison.compared
    with png(path, figsize=(max(6.0, 0.55 * len(rows) + 2), 4.8)) as fig:
        axes = fig.add_subplot()
        colours = {WITHIN: "tab:grey", FASTER: "tab:green", SLOWER: "tab:red"}
        for index, row in enumerate(rows):
            axes.errorbar(index, row.time_ratio, yerr=row.noise, fmt="o", capsize=4, color=colours[row.verdict])
        axes.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        axes.set_xticks(range(len(rows)), [f"{row.key[0]}\n{label(row.a)}" for row in rows], rotation=60, ha="right",
                        fontsize=8)
        axes.set_ylabel("time B / time A (bars: noise)")
        axes.set_title(f"privmem compare: {comparison.within_noise} of {len(rows)} rows within noise")
