"""`privmem advise`: which discard policy, lazy budget and max age a guest needs.

One sweep on one backend, in one run: ``never`` (the baseline), ``eager`` and
``keep-shared``, ``lazy`` over every budget × max age, and ``adaptive`` over every budget
(it drains by budget only; its age changes nothing).  The workload or trace is compiled once
and every setting runs it on a fresh machine, round by round in a rotated order as the bench
does.  A setting's time is its best round, as a ratio to never's best; its peak double
allocation is the highest the kernel measured in any of its rounds, since a recommendation
must hold on a bad round too.

The result is the Pareto front of time against kernel-measured peak double allocation (the
settings no other setting beats on both), and one recommendation by a stated rule: the
lowest peak double allocation among the settings within ``tolerance`` (2%) of never's time,
ties going to the faster; settings with data errors are never recommended.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from ..results import document, requested
from ..runner import RunResult, default_backend, open_trace, run_program, workload_program
from ..units import GiB, KiB, MiB, PAGE_SIZE, format_size, format_size_exact
from . import rounds
from .figures import png

FIXED_POLICIES = ("never", "eager", "keep-shared")
SWEPT_POLICIES = ("lazy", "adaptive")
BUDGET_DIVISORS = (4096, 1024, 256, 64)     # default budgets: these fractions of guest memory
DEFAULT_AGES = (0.005, 0.020, 0.050)        # seconds; 50 ms is the lazy policy's own default
DEFAULT_REPEAT = 3
DEFAULT_TOLERANCE = 0.02
MAX_BUDGETS = MAX_AGES = 8
MAX_REPEAT = 10
MAX_AGE = 10.0                              # seconds: past this, an age never drains a run
MAX_TOLERANCE = 1.0
# The sampler's interval for these runs: the kernel is read every 5th sample, so every 50 ms
# (the runner's default reads it every 250 ms, which misses most of a 0.7 s run's peaks).
SAMPLE_INTERVAL = 0.01


@dataclass(frozen=True)
class Setting:
    policy: str
    budget: int | None = None               # bytes, for the draining policies
    max_age: float | None = None            # seconds, for lazy

    @property
    def spec(self) -> str:
        """The policy spec that runs this setting (``lazy:budget=4194304,max_age=0.02s``)."""
        params = ([f"budget={self.budget}"] if self.budget is not None else []) + \
                 ([f"max_age={self.max_age!r}s"] if self.max_age is not None else [])
        return self.policy + (":" + ",".join(params) if params else "")

    @property
    def label(self) -> str:
        parts = [self.policy]
        if self.budget is not None:
            parts.append(f"budget {format_size(self.budget)}")
        if self.max_age is not None:
            parts.append(f"max age {format_age(self.max_age)}")
        return parts[0] + (" " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def format_age(seconds: float) -> str:
    return f"{seconds * 1000:g} ms"


_AGE_UNITS = {"ms": 1000, "s": 1, "": 1000}     # divisors to seconds; a bare number is milliseconds


def parse_age(text: str) -> float:
    """'20ms', '0.5s' or '20' (milliseconds) in seconds."""
    stripped = text.strip().lower()
    number = stripped.rstrip("ms")
    unit = stripped[len(number):]
    try:
        value = float(number) / _AGE_UNITS[unit]
    except (KeyError, ValueError):
        raise InvalidArgument("ages", text, "not an age (use e.g. 20ms, 0.5s, or 20 for milliseconds)",
                              hex_value=False) from None
    return value


def default_budgets(memory: int) -> tuple[int, ...]:
    """Fractions of guest memory from 1/4096 to 1/64 (256 KiB to 16 MiB for 1 GiB), in pages."""
    budgets = (max(memory // divisor // PAGE_SIZE * PAGE_SIZE, PAGE_SIZE) for divisor in BUDGET_DIVISORS)
    return tuple(dict.fromkeys(budgets))


def check_budgets(budgets, memory: int | None = None) -> tuple[int, ...]:
    """Budgets in bytes: 1 to MAX_BUDGETS distinct values, each at least a page and at most
    ``memory`` (where known)."""
    budgets = tuple(dict.fromkeys(budgets))
    if not 1 <= len(budgets) <= MAX_BUDGETS:
        raise InvalidArgument("budgets", list(budgets), f"give 1 to {MAX_BUDGETS} budgets", hex_value=False)
    for budget in budgets:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < PAGE_SIZE:
            raise InvalidArgument("budgets", budget, f"each budget must be at least {PAGE_SIZE} bytes (a page)",
                                  hex_value=False)
        if memory is not None and budget > memory:
            raise InvalidArgument("budgets", budget, f"larger than the guest's memory ({format_size(memory)})",
                                  hex_value=False)
    return budgets


def check_ages(ages) -> tuple[float, ...]:
    """Max ages in seconds: 1 to MAX_AGES distinct values in (0, MAX_AGE]."""
    ages = tuple(dict.fromkeys(ages))
    if not 1 <= len(ages) <= MAX_AGES:
        raise InvalidArgument("ages", list(ages), f"give 1 to {MAX_AGES} ages", hex_value=False)
    for age in ages:
        if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 < age <= MAX_AGE:
            raise InvalidArgument("ages", age, f"each age must be in (0, {MAX_AGE:g}] seconds", hex_value=False)
    return ages


def settings_for(budgets, ages) -> list[Setting]:
    """Every setting one sweep runs, never first."""
    return ([Setting(policy) for policy in FIXED_POLICIES]
            + [Setting("lazy", budget, age) for budget in budgets for age in ages]
            + [Setting("adaptive", budget) for budget in budgets])


@dataclass
class AdviseConfig:
    workload: str | None = "ovmf-dma"       # a built-in workload, or None with ``trace``
    trace: str | None = None                # a trace v1 file
    backend: str | None = None              # default: kvm where /dev/kvm works
    memory: int = GiB                       # these four apply to a workload, not to a trace
    vcpus: int = 1
    layout: str = "flat"
    scale: float = 1.0
    seed: int = 0
    repeat: int = DEFAULT_REPEAT
    budgets: tuple[int, ...] | None = None  # default: ``default_budgets(memory)``
    ages: tuple[float, ...] = DEFAULT_AGES
    tolerance: float = DEFAULT_TOLERANCE

    def check(self) -> None:
        """Everything that can be checked before a trace is read or a machine made."""
        if (self.workload is None) == (self.trace is None):
            raise InvalidArgument("workload", self.workload, "give a workload or a trace, not both or neither",
                                  hex_value=False)
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or not 1 <= self.repeat <= MAX_REPEAT:
            raise InvalidArgument("repeat", self.repeat, f"must be in 1..{MAX_REPEAT}", hex_value=False)
        tolerance = self.tolerance
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) \
                or not 0 <= tolerance <= MAX_TOLERANCE or math.isnan(tolerance):
            raise InvalidArgument("tolerance", tolerance, f"must be in [0, {MAX_TOLERANCE:g}]", hex_value=False)
        if self.budgets is not None:
            check_budgets(self.budgets)
        check_ages(self.ages)


@dataclass
class AdviseReport:
    config: AdviseConfig
    backend: str
    name: str                               # the workload's or the trace's name
    memory: int
    vcpus: int
    layout: str
    budgets: tuple[int, ...]
    settings: list[Setting]
    runs: dict[Setting, list[RunResult]] = field(default_factory=dict)
    sweep_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """One row per setting (``ROW_KEYS``), in sweep order."""
        base = rounds.best(self.runs[Setting("never")])
        out = []
        for setting in self.settings:
            runs = self.runs[setting]
            best = rounds.best(runs)
            out.append({"setting": setting.label, "policy": setting.policy, "budget_bytes": setting.budget,
                        "max_age_s": setting.max_age, "rounds": len(runs), "wall_s": best.wall_s,
                        "ratio_to_never": best.wall_s / base.wall_s if base.wall_s else None,
                        "spread": rounds.spread(runs),
                        "peak_double_alloc_measured_bytes": max(r.peak_double_alloc_measured_bytes for r in runs),
                        "peak_double_alloc_bytes": max(r.peak_double_alloc_bytes for r in runs),
                        "discards": best.discards, "discarded_bytes": best.discarded_bytes,
                        "reclaimed_bytes": best.reclaimed_bytes,
                        "data_errors": sum(r.data_errors for r in runs), "dma_errors": sum(r.dma_errors for r in runs)})
        return out

    def as_json(self, argv: list[str] | None = None) -> dict:
        config = self.config
        rows = self.rows()
        front = pareto_front(rows)
        chosen = recommend(rows, config.tolerance)
        for index, row in enumerate(rows):
            row["on_front"] = index in front
        settings = requested(workloads=[self.name] if config.workload else None,
                             policies=list(FIXED_POLICIES + SWEPT_POLICIES), backend=self.backend,
                             layout=self.layout, memory=self.memory, vcpus=self.vcpus, repeat=config.repeat,
                             scale=config.scale if config.workload else None,
                             seed=config.seed if config.workload else None, trace=config.trace,
                             budgets=self.budgets, ages_s=config.ages, tolerance=config.tolerance,
                             sample_interval_s=SAMPLE_INTERVAL)
        return document("advise", settings, {
            "name": self.name, "sweep_s": round(self.sweep_s, 3), "runs": sum(map(len, self.runs.values())),
            "rows": rows, "front": [rows[index]["setting"] for index in front],
            "recommendation": {"setting": rows[chosen]["setting"], "rule": rule(config.tolerance),
                               "line": recommendation_line(rows[chosen])},
            "warnings": self.warnings}, argv)


ROW_KEYS = ("setting", "policy", "budget_bytes", "max_age_s", "rounds", "wall_s", "ratio_to_never", "spread",
            "peak_double_alloc_measured_bytes", "peak_double_alloc_bytes", "discards", "discarded_bytes",
            "reclaimed_bytes", "data_errors", "dma_errors")


def _clean(row: dict) -> bool:
    return not (row["data_errors"] or row["dma_errors"])


def pareto_front(rows: list[dict]) -> list[int]:
    """Indices of the error-free rows no other error-free row beats on both time and kernel-
    measured peak double allocation (at least as good on both, better on one), by peak
    ascending."""
    points = {index: (row["ratio_to_never"], row["peak_double_alloc_measured_bytes"])
              for index, row in enumerate(rows) if _clean(row) and row["ratio_to_never"] is not None}

    def beaten(point) -> bool:
        return any(other[0] <= point[0] and other[1] <= point[1] and other != point for other in points.values())

    return sorted((index for index, point in points.items() if not beaten(point)), key=lambda i: points[i][::-1])


def rule(tolerance: float) -> str:
    return (f"the lowest kernel-measured peak double allocation within {tolerance:.0%} of never's time "
            "(ties: the faster; settings with data errors excluded)")


def recommend(rows: list[dict], tolerance: float) -> int:
    """The index of the row ``rule(tolerance)`` picks; never (row 0, ratio 1) always qualifies."""
    fitting = [index for index, row in enumerate(rows)
               if _clean(row) and row["ratio_to_never"] is not None and row["ratio_to_never"] <= 1 + tolerance]
    if not fitting:
        return 0
    return min(fitting, key=lambda i: (rows[i]["peak_double_alloc_measured_bytes"], rows[i]["ratio_to_never"]))


def recommendation_line(row: dict) -> str:
    return (f"{row['setting']}: {row['ratio_to_never']:.2f}x never, "
            f"{format_size(row['peak_double_alloc_measured_bytes'])} peak double allocation "
            f"(kernel, sampled; books: {format_size(row['peak_double_alloc_bytes'])} at most)")


def run(config: AdviseConfig, progress=None) -> AdviseReport:
    """Run the sweep; ``progress(done, total, text)`` before each run."""
    config.check()
    started = time.perf_counter()
    warnings: list[str] = []
    if config.trace is not None:
        program, name, warnings = open_trace(config.trace)
        warnings = list(warnings)
    else:
        program, name = workload_program(config.workload, config.memory, config.vcpus, config.seed, config.scale,
                                         config.layout)
    with program:
        memory = program.memory_map.ram_bytes
        budgets = check_budgets(config.budgets, memory) if config.budgets else default_budgets(memory)
        settings = settings_for(budgets, config.ages)
        backend = config.backend or default_backend()
        report = AdviseReport(config, backend, name, memory, program.vcpus, program.memory_map.name, budgets,
                              settings, {setting: [] for setting in settings}, warnings=warnings)
        total, started_runs = config.repeat * len(settings), itertools.count()
        report.runs = rounds.interleaved(
            settings, config.repeat,
            lambda setting: run_program(program, name, setting.spec, backend, sample_interval=SAMPLE_INTERVAL),
            lambda setting: setting.label,
            (lambda text: progress(next(started_runs), total, text)) if progress else None)
    report.sweep_s = time.perf_counter() - started
    return report


# -- printing and plotting, from the saved document --------------------------------------

COLUMNS = (("setting", False), ("time", True), ("vs never", True), ("spread", True), ("discards", True),
           ("peak double alloc (kernel)", True), ("peak held (books)", True), ("data errors", True),
           ("front", False))


def cells(row: dict, recommended: bool) -> list[str]:
    return [row["setting"], f"{row['wall_s']:.3f} s", f"{row['ratio_to_never']:.3f}x", f"{row['spread']:.1%}",
            f"{row['discards']:,}", format_size(row["peak_double_alloc_measured_bytes"]),
            format_size(row["peak_double_alloc_bytes"]), str(row["data_errors"] + row["dma_errors"]),
            ("front" if row["on_front"] else "") + (", recommended" if recommended else "")]


def title(doc: dict) -> str:
    settings = doc["requested"]
    return (f"privmem advise: {doc['name']} on a {format_size(settings['memory'])} guest, {settings['vcpus']} vCPU, "
            f"{settings['backend']} backend, best of {settings['repeat']} interleaved rounds")


def exact_kib(nbytes: int) -> str:
    """Peaks in whole KiB: two peaks that differ are shown different (1,032 vs 1,040 KiB),
    as the front, which compares bytes, sees them."""
    return f"{nbytes / KiB:,.0f} KiB"


def short_setting(row: dict) -> str:
    """``lazy 4M 20ms``: a setting in the compact table's width."""
    parts = [row["policy"]]
    if row.get("budget_bytes") is not None:
        parts.append(format_size_exact(row["budget_bytes"]))
    if row.get("max_age_s") is not None:
        parts.append(f"{row['max_age_s'] * 1000:g}ms")
    return " ".join(parts)


def table(doc: dict, wide: bool = False):
    """Every column with ``wide``; else the figures that decide, in 80 columns."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    from .tables import compact

    chosen = doc["recommendation"]["setting"]
    if wide:
        out = Table(title=escape(title(doc)))
        for header, right in COLUMNS:
            out.add_column(header, justify="right" if right else "left")
        for row in doc["rows"]:
            out.add_row(*(escape(cell) for cell in cells(row, row["setting"] == chosen)))
        return out
    out = compact(None, ("setting", "vs never", "spread", "discards", "double\n(kernel)", "errors", "front"),
                  left=("setting", "front"))
    for row in doc["rows"]:
        mark = ("yes" if row["on_front"] else "") + (" *" if row["setting"] == chosen else "")
        out.add_row(escape(short_setting(row)), f"{row['ratio_to_never']:.3f}x", f"{row['spread']:.1%}",
                    f"{row['discards']:,}", exact_kib(row["peak_double_alloc_measured_bytes"]),
                    str(row["data_errors"] + row["dma_errors"]), mark)
    return Group(escape(title(doc)), out, "", "front: on the Pareto front of time against the kernel's peak double "
                 "allocation; *: recommended; --wide: every column")


def headline(doc: dict) -> list[str]:
    by_setting = {row["setting"]: row for row in doc["rows"]}
    front = "; ".join(f"{short_setting(by_setting[name])} ({by_setting[name]['ratio_to_never']:.3f}x, "
                      f"{exact_kib(by_setting[name]['peak_double_alloc_measured_bytes'])})" for name in doc["front"])
    recommendation = doc["recommendation"]
    return [*(f"warning: {warning}" for warning in doc["warnings"]),
            f"Pareto front (time vs never, kernel-measured peak double allocation): {front}",
            f"recommended: {recommendation['line']}",
            f"  rule: {recommendation['rule']}",
            f"sweep: {doc['runs']} runs in {doc['sweep_s']:.1f} s"]


def plot(doc: dict, path: str) -> None:
    """Time vs never against kernel-measured peak double allocation: every setting, the front
    as a line, the recommendation starred, and the tolerance as a line above never."""
    with png(path, figsize=(9, 5.5)) as fig:
        axes = fig.add_subplot()
        rows = doc["rows"]
        unit, scale = ("MiB", MiB) if max(row["peak_double_alloc_measured_bytes"] for row in rows) >= MiB else ("KiB", KiB)

        def xy(subset):
            return [row["peak_double_alloc_measured_bytes"] / scale for row in subset], [row["ratio_to_never"]
                                                                                          for row in subset]

        for policy in FIXED_POLICIES + SWEPT_POLICIES:
            axes.scatter(*xy([row for row in rows if row["policy"] == policy]), label=policy, alpha=0.75)
        by_setting = {row["setting"]: row for row in rows}
        axes.step(*xy([by_setting[name] for name in doc["front"]]), where="post", color="black", linewidth=0.8,
                  label="Pareto front")
        chosen = by_setting[doc["recommendation"]["setting"]]
        axes.scatter(*xy([chosen]), marker="*", s=260, facecolors="none", edgecolors="red", label="recommended")
        axes.annotate(chosen["setting"], [value[0] for value in xy([chosen])], textcoords="offset points",
                      xytext=(8, 8), fontsize=8)
        tolerance = doc["requested"]["tolerance"]
        axes.axhline(1.0, color="grey", linewidth=0.8)
        axes.axhline(1.0 + tolerance, color="green", linewidth=0.8, linestyle="--",
                     label=f"never + {tolerance:.0%}: the recommendation's limit")
        axes.set_xlabel(f"peak double allocation, kernel-measured ({unit})")
        axes.set_ylabel("time / time under never")
        axes.set_title(title(doc), fontsize=9)
        axes.legend(fontsize=8)
