"""`privmem bench`: the seed's boot-time experiment, reproduced and fixed.

Runs the workload (default ``boot`` and ``ovmf-dma`` on a 1 GiB guest) under every discard
policy, side by side in one run: policies are interleaved round by round so machine noise
spreads over all of them, and each policy's time is its best round.  Times are reported as
ratios to ``never`` (no discard at all, the seed's plain-SNP lower bound).  On KVM it also
measures a bare port-I/O exit round trip and a one-page conversion round trip under
``never`` in the same run, and runs ``ovmf-dma`` with conversions done by splitting memslots
(the design the seed rejected) for contrast.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ..convert import POLICIES
from ..runner import RunResult, compile_trace, default_backend, run_program
from ..units import GiB, format_size
from ..workload import generate

DEFAULT_WORKLOADS = ("boot", "ovmf-dma")
DEFAULT_POLICIES = tuple(POLICIES)


@dataclass
class BenchConfig:
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    policies: tuple[str, ...] = DEFAULT_POLICIES
    memory: int = GiB
    vcpus: int = 1
    backend: str | None = None
    repeat: int = 5
    scale: float = 1.0
    seed: int = 0
    memslots: bool = True
    roundtrips: int = 20_000
    layout: str = "flat"

    @classmethod
    def quick(cls, **overrides) -> "BenchConfig":
        base = dict(memory=256 << 20, repeat=2, scale=0.25, roundtrips=5_000)
        base.update(overrides)
        return cls(**base)


@dataclass
class BenchReport:
    config: BenchConfig
    backend: str
    runs: list[RunResult] = field(default_factory=list)
    conversion_cost: dict | None = None   # Machine.measure_conversion_cost under never

    def best(self, workload: str, policy: str, tracking: str = "store") -> RunResult | None:
        runs = [r for r in self.runs if (r.workload, r.policy, r.tracking) == (workload, policy, tracking)]
        return min(runs, key=lambda r: r.wall_s) if runs else None

    def ratio(self, workload: str, policy: str, tracking: str = "store") -> float | None:
        run, base = self.best(workload, policy, tracking), self.best(workload, "never")
        return run.wall_s / base.wall_s if run and base and base.wall_s else None

    def spread(self, workload: str, policy: str) -> float:
        """Relative spread (max - min) / min of a policy's rounds: the noise to read ratios against."""
        walls = [r.wall_s for r in self.runs if (r.workload, r.policy, r.tracking) == (workload, policy, "store")]
        return (max(walls) - min(walls)) / min(walls) if len(walls) > 1 and min(walls) else 0.0

    def as_json(self) -> dict:
        summary = []
        for workload in self.config.workloads:
            for policy in self.config.policies:
                run = self.best(workload, policy)
                if run:
                    summary.append({"workload": workload, "policy": policy, "tracking": "store",
                                    "wall_s": run.wall_s, "ratio_to_never": self.ratio(workload, policy),
                                    "spread": self.spread(workload, policy), **_figures(run)})
            memslot = self.best(workload, "never", "memslots")
            if memslot:
                summary.append({"workload": workload, "policy": "never", "tracking": "memslots",
                                "wall_s": memslot.wall_s, "ratio_to_never": self.ratio(workload, "never", "memslots"),
                                **_figures(memslot)})
        return {"backend": self.backend, "memory": self.config.memory, "vcpus": self.config.vcpus,
                "repeat": self.config.repeat, "scale": self.config.scale, "seed": self.config.seed,
                "conversion_cost": self.conversion_cost,
                "summary": summary, "runs": [r.as_dict(timeline=True) for r in self.runs]}


def _figures(run: RunResult) -> dict:
    return {k: getattr(run, k) for k in ("conversions", "pages_converted", "exits", "discards", "discarded_bytes",
                                         "peak_double_alloc_bytes", "peak_double_alloc_measured_bytes",
                                         "peak_host_bytes", "budget_bytes",
                                         "data_errors", "dma_errors")}


def planned_runs(config: BenchConfig, backend: str) -> int:
    per_round = len(config.workloads) * len(config.policies)
    memslot_runs = sum(1 for w in config.workloads if w == "ovmf-dma") if config.memslots and backend == "kvm" else 0
    return config.repeat * (per_round + memslot_runs) + (2 if backend == "kvm" else 0)


def conversion_cost(memory: int, count: int, layout: str = "flat") -> dict:
    """On one KVM machine under ``never``, in one call: a bare port-I/O exit round trip, a
    one-page conversion round trip, and the VMM's own time per conversion (µs)."""
    from ..vmm.machine import Machine
    from .roundtrip import conversion_cost as measure

    with Machine(memory, 1, policy="never", layout=layout) as machine:
        return measure(machine, count)


def run(config: BenchConfig, progress=None) -> BenchReport:
    """Every workload × policy, ``repeat`` interleaved rounds; ``progress(text)`` after each run."""
    backend = config.backend or default_backend()
    report = BenchReport(config, backend)
    programs = {w: compile_trace(generate(w, memory=config.memory, vcpus=config.vcpus, seed=config.seed,
                                          scale=config.scale, layout=config.layout))
                for w in config.workloads}

    def tick(text):
        if progress:
            progress(text)

    try:
        if backend == "kvm":
            report.conversion_cost = conversion_cost(config.memory, config.roundtrips, config.layout)
            tick("exit and conversion round trips")
            tick("")
        for round_index in range(config.repeat):
            # Rotate the order each round so no policy always runs first (cold caches) or last.
            shift = round_index % len(config.policies)
            order = config.policies[shift:] + config.policies[:shift]
            for workload, program in programs.items():
                for policy in order:
                    report.runs.append(run_program(program, workload, policy, backend))
                    tick(f"{workload} {policy} (round {round_index + 1}/{config.repeat})")
                if workload == "ovmf-dma" and config.memslots and backend == "kvm":
                    report.runs.append(run_program(program, workload, "never", backend, tracking="memslots"))
                    tick(f"{workload} memslot tracking (round {round_index + 1}/{config.repeat})")
    finally:
        for program in programs.values():
            program.close()
    return report


def table(report: BenchReport):
    from rich.table import Table

    out = Table(title=f"privmem bench: {format_size(report.config.memory)} guest, {report.config.vcpus} vCPU, "
                      f"{report.backend} backend, best of {report.config.repeat} interleaved rounds")
    columns = ("workload", "policy", "time", "vs never", "spread", "conversions", "discards",
               "peak held (books)", "peak double alloc (kernel)", "budget", "peak host memory", "data errors")
    for column in columns:
        out.add_column(column, justify="left" if column in ("workload", "policy") else "right")
    for workload in report.config.workloads:
        rows = [(p, "store") for p in report.config.policies]
        if report.best(workload, "never", "memslots"):
            rows.append(("never", "memslots"))
        for policy, tracking in rows:
            run = report.best(workload, policy, tracking)
            if run is None:
                continue
            label = policy if tracking == "store" else "never, memslot tracking"
            out.add_row(workload, label, f"{run.wall_s:.3f} s", f"{report.ratio(workload, policy, tracking):.3f}x",
                        f"{report.spread(workload, policy):.1%}" if tracking == "store" else "-",
                        f"{run.conversions:,}", f"{run.discards:,}", format_size(run.peak_double_alloc_bytes),
                        format_size(run.peak_double_alloc_measured_bytes),
                        format_size(run.budget_bytes) if run.budget_bytes else "-",
                        format_size(run.peak_host_bytes), str(run.data_errors + run.dma_errors))
        out.add_section()
    return out


def headline(report: BenchReport) -> list[str]:
    lines = []
    for workload in report.config.workloads:
        ratios = {p: report.ratio(workload, p) for p in report.config.policies}
        shown = ", ".join(f"{p} {r:.3f}x" for p, r in ratios.items() if r is not None)
        lines.append(f"{workload}: time vs never: {shown}")
        memslot = report.ratio(workload, "never", "memslots")
        if memslot:
            lines.append(f"{workload}: memslot-splitting tracking takes {memslot:.2f}x the store's time (both under never)")
    cost = report.conversion_cost
    if cost:
        lines.append(f"under never: VMM time per conversion {cost['vmm_us_per_conversion']:.1f} µs = "
                     f"{cost['ratio']:.2f}x a bare port-I/O exit round trip ({cost['exit_roundtrip_us']:.1f} µs); "
                     f"guest-to-guest conversion round trip {cost['conversion_roundtrip_us']:.1f} µs = "
                     f"{1e6 / cost['conversion_roundtrip_us']:,.0f} conversions/s ({cost['conversions']:,} measured)")
    errors = sum(r.data_errors + r.dma_errors for r in report.runs)
    lines.append(f"data errors across all runs: {errors}")
    return lines


def plot(report: BenchReport, path: str) -> None:
    """Two panels: time per policy (ratio to never) per workload; double allocation over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    policies = list(report.config.policies)
    width = 0.8 / max(len(report.config.workloads), 1)
    for index, workload in enumerate(report.config.workloads):
        ratios = [report.ratio(workload, p) or 0 for p in policies]
        positions = [k + index * width for k in range(len(policies))]
        left.bar(positions, ratios, width, label=workload)
    left.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    left.set_xticks([k + width * (len(report.config.workloads) - 1) / 2 for k in range(len(policies))], policies)
    left.set_ylabel("time / time under never")
    left.set_title("Guest run time per discard policy")
    left.legend()
    workload = report.config.workloads[0]
    highest = 1.0
    for policy in policies:
        run = report.best(workload, policy)
        if run and run.timeline:
            xs, ys = [t[0] for t in run.timeline], [t[1] for t in run.timeline]
            mib = [y / (1 << 20) for y in ys]
            highest = max(highest, *mib)
            right.step(xs, mib, where="post", label=policy)
    budget = next((r.budget_bytes for r in report.runs if r.budget_bytes), None)
    if budget:
        right.axhline(budget / (1 << 20), color="red", linewidth=0.8, linestyle=":", label="lazy budget")
    right.set_xlabel("seconds")
    right.set_ylabel("double-allocated MiB (held, not yet discarded)")
    right.set_title(f"Double allocation over time ({workload})")
    right.set_yscale("symlog", linthresh=1)
    right.set_ylim(0, highest * 2)
    right.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110, format="png")
    finally:
        plt.close(fig)


def median(values):
    return statistics.median(values) if values else None
