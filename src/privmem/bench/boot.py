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

from dataclasses import dataclass, field

from ..convert import POLICIES
from ..runner import RunResult, compile_trace, default_backend, run_program
from ..results import document, requested
from ..units import GiB
from ..workload import generate
from . import rounds

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
        return rounds.best(self.runs_of(workload, policy, tracking))

    def runs_of(self, workload: str, policy: str, tracking: str = "store") -> list[RunResult]:
        return [r for r in self.runs if (r.workload, r.policy, r.tracking) == (workload, policy, tracking)]

    def ratio(self, workload: str, policy: str, tracking: str = "store") -> float | None:
        run, base = self.best(workload, policy, tracking), self.best(workload, "never")
        return run.wall_s / base.wall_s if run and base and base.wall_s else None

    def spread(self, workload: str, policy: str, tracking: str = "store") -> float:
        """Relative spread of a row's rounds: the noise to read its ratio against."""
        return rounds.spread(self.runs_of(workload, policy, tracking))

    def row(self, workload: str, policy: str, tracking: str = "store") -> dict | None:
        """The summary row of one (workload, policy, tracking): ``ROW_KEYS``, figures of the best round."""
        run = self.best(workload, policy, tracking)
        if run is None:
            return None
        return {"workload": workload, "policy": policy, "tracking": tracking,
                "rounds": len(self.runs_of(workload, policy, tracking)), "wall_s": run.wall_s,
                "ratio_to_never": self.ratio(workload, policy, tracking),
                "spread": self.spread(workload, policy, tracking),
                **{key: getattr(run, key) for key in FIGURE_KEYS}}

    def as_json(self, argv: list[str] | None = None) -> dict:
        """The saved result: the envelope, then the summary rows (one per workload, policy and
        tracking, in table order) and every run with its timeline.  ``bench.report`` prints
        and plots it; the bench itself prints through the same functions."""
        summary = []
        for workload in self.config.workloads:
            keys = [(policy, "store") for policy in self.config.policies] + [("never", "memslots")]
            summary += [row for row in (self.row(workload, *key) for key in keys) if row]
        config = self.config
        settings = requested(workloads=config.workloads, policies=config.policies, backend=self.backend,
                             layout=config.layout, memory=config.memory, vcpus=config.vcpus, repeat=config.repeat,
                             scale=config.scale, seed=config.seed, memslots=config.memslots,
                             roundtrips=config.roundtrips if self.conversion_cost else None)
        return document("bench", settings, {"conversion_cost": self.conversion_cost, "summary": summary,
                                            "runs": [r.as_dict(timeline=True) for r in self.runs]}, argv)


ROW_HEAD = ("workload", "policy", "tracking", "rounds", "wall_s", "ratio_to_never", "spread")
FIGURE_KEYS = ("conversions", "pages_converted", "exits", "discards", "discarded_bytes", "reclaimed_bytes",
               "peak_double_alloc_bytes", "peak_double_alloc_measured_bytes", "peak_host_bytes", "budget_bytes",
               "max_age_s", "data_errors", "dma_errors")
ROW_KEYS = ROW_HEAD + FIGURE_KEYS


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
            order = rounds.rotated(config.policies, round_index)
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
