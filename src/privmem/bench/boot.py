"""`privmem bench`: the UPM thread's boot-time experiment, reproduced and fixed.

Runs the workload (default ``boot`` and ``ovmf-dma`` on a 1 GiB guest) under every discard
policy, side by side in one run: policies are interleaved round by round so machine noise
spreads over all of them, and each policy's time is its best round.  Times are reported as
ratios to ``never`` (no discard at all, the UPM thread's plain-SNP lower bound).  On KVM it also
measures a bare port-I/O exit round trip and a one-page conversion round trip under
``never`` in the same run, and runs ``ovmf-dma`` with conversions done by splitting memslots
(the design the UPM thread rejected) and every workload on the in-place backing (one guest_memfd
serving both views: nothing to discard, so only under ``never``) for contrast.

A row is a (workload, policy, tracking, backing): the policies run on the two-file backing
with the store's tracking; the contrasts are ``("never", "memslots", "two-file")`` and
``("never", "store", "in-place")``, ratioed to the two-file ``never`` row like the policies.
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
MAX_REPEAT = 100


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
    in_place: bool = True
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

    def best(self, workload: str, policy: str, tracking: str = "store", backing: str = "two-file") -> RunResult | None:
        return rounds.best(self.runs_of(workload, policy, tracking, backing))

    def runs_of(self, workload: str, policy: str, tracking: str = "store", backing: str = "two-file") -> list[RunResult]:
        key = (workload, policy, tracking, backing)
        return [r for r in self.runs if (r.workload, r.policy, r.tracking, r.backing) == key]

    def row(self, workload: str, policy: str, tracking: str = "store", backing: str = "two-file") -> dict | None:
        """The summary row of one (workload, policy, tracking, backing): ``ROW_KEYS``, figures
        of the best round."""
        runs = self.runs_of(workload, policy, tracking, backing)
        run = rounds.best(runs)
        if run is None:
            return None
        base = self.best(workload, "never")
        return {"workload": workload, "policy": policy, "tracking": tracking, "backing": backing,
                "rounds": len(runs), "wall_s": run.wall_s,
                "ratio_to_never": run.wall_s / base.wall_s if base and base.wall_s else None,
                "spread": rounds.spread(runs), **{key: getattr(run, key) for key in FIGURE_KEYS}}

    def as_json(self, argv: list[str] | None = None) -> dict:
        """The saved result: the envelope, then the summary rows (one per workload, policy and
        tracking, in table order) and every run with its timeline.  ``bench.report`` prints
        and plots it; the bench itself prints through the same functions."""
        summary = []
        for workload in self.config.workloads:
            keys = [(policy, "store", "two-file") for policy in self.config.policies] + list(CONTRASTS)
            summary += [row for row in (self.row(workload, *key) for key in keys) if row]
        config = self.config
        settings = requested(workloads=config.workloads, policies=config.policies, backend=self.backend,
                             layout=config.layout, memory=config.memory, vcpus=config.vcpus, repeat=config.repeat,
                             scale=config.scale, seed=config.seed, memslots=config.memslots, in_place=config.in_place,
                             roundtrips=config.roundtrips if self.conversion_cost else None)
        return document("bench", settings, {"conversion_cost": self.conversion_cost, "summary": summary,
                                            "runs": [r.as_dict(timeline=True) for r in self.runs]}, argv)


ROW_HEAD = ("workload", "policy", "tracking", "backing", "rounds", "wall_s", "ratio_to_never", "spread")
FIGURE_KEYS = ("conversions", "pages_converted", "exits", "discards", "discarded_bytes", "reclaimed_bytes",
               "peak_double_alloc_bytes", "peak_double_alloc_measured_bytes", "peak_host_bytes", "budget_bytes",
               "max_age_s", "data_errors", "dma_errors")
ROW_KEYS = ROW_HEAD + FIGURE_KEYS


MEMSLOT_CONTRAST = ("never", "memslots", "two-file")
IN_PLACE_CONTRAST = ("never", "store", "in-place")
CONTRASTS = (MEMSLOT_CONTRAST, IN_PLACE_CONTRAST)


def variants(config: BenchConfig, backend: str, workload: str) -> list[tuple[str, str, str]]:
    """The (policy, tracking, backing) of each run of ``workload`` in one round: every policy
    on the two-file backing, then the contrasts that apply (memslot splitting needs KVM and
    is run on ``ovmf-dma``, the DMA-heavy workload it was rejected for)."""
    out = [(policy, "store", "two-file") for policy in config.policies]
    if workload == "ovmf-dma" and config.memslots and backend == "kvm":
        out.append(MEMSLOT_CONTRAST)
    if config.in_place:
        out.append(IN_PLACE_CONTRAST)
    return out


def planned_runs(config: BenchConfig, backend: str) -> int:
    per_round = sum(len(variants(config, backend, workload)) for workload in config.workloads)
    return config.repeat * per_round + (1 if backend == "kvm" else 0)


def conversion_cost(memory: int, count: int, layout: str = "flat") -> dict:
    """On one KVM machine under ``never``, in one call: a bare port-I/O exit round trip, a
    one-page conversion round trip, and the VMM's own time per conversion (µs)."""
    from ..vmm.machine import Machine
    from .roundtrip import conversion_cost as measure

    with Machine(memory, 1, policy="never", layout=layout) as machine:
        return measure(machine, count)


def describe(policy: str, tracking: str, backing: str) -> str:
    """A row's name: the policy, and the design where it is not the two-file store's."""
    if tracking != "store":
        return f"{policy}, {'memslot' if tracking == 'memslots' else tracking} tracking"
    return policy if backing == "two-file" else f"{policy}, {backing}"


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
        for round_index in range(config.repeat):
            for workload, program in programs.items():
                for policy, tracking, backing in rounds.rotated(variants(config, backend, workload), round_index):
                    report.runs.append(run_program(program, workload, policy, backend, tracking=tracking,
                                                   backing=backing))
                    tick(f"{workload} {describe(policy, tracking, backing)} (round {round_index + 1}/{config.repeat})")
    finally:
        for program in programs.values():
            program.close()
    return report
