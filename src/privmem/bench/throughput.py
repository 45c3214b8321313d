"""`privmem bench throughput`: one-page conversions per second with 1 and more vCPUs.

Each vCPU flips its own page (in its own 4 MiB window, so no two vCPUs ever contend for a
range) shared and back, ``conversions`` times, on one KVM machine per (vCPUs, policy); rounds
are interleaved and each configuration keeps its best.  The ratio of N vCPUs to 1 says how
far conversions scale: the VMM's Python work per exit runs under the GIL, KVM_RUN does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..ops import Op
from ..units import MiB, PAGE_SIZE
from . import rounds

MEMORY = 64 * MiB
WINDOW = 4 * MiB
MAX_CONVERSIONS = 1_000_000
WARMUP = 4


@dataclass
class ThroughputResult:
    vcpus: int
    policy: str
    conversions: int
    wall_s: float
    rounds: int
    spread: float

    @property
    def per_s(self) -> float:
        return self.conversions / self.wall_s if self.wall_s else 0.0


@dataclass
class _Round:
    wall_s: float
    conversions: int


def ops_for(vcpus: int, conversions: int) -> list[Op]:
    """``conversions`` one-page conversions per vCPU, alternating to shared and to private."""
    return [Op("convert", WINDOW + vcpu * WINDOW, PAGE_SIZE, vcpu, to=to)
            for _ in range(conversions // 2) for vcpu in range(vcpus) for to in ("shared", "private")]


def measure(vcpus: int, policy: str, conversions: int) -> _Round:
    from ..vmm.machine import Machine

    with Machine(MEMORY, vcpus, policy=policy) as machine:
        machine.run_ops(ops_for(vcpus, WARMUP))
        result = machine.run_ops(ops_for(vcpus, conversions))
        return _Round(result.wall_time, result.conversions)


PUNCH_BYTES = 256 * MiB
PUNCH_BASE = 256 * MiB
PUNCH_MEMORY = 1 << 30


PUNCHES = 8
BESIDE_PUNCHES = ("punches", "eager")      # the configuration beside the punches, among (vCPUs, policy)


def beside_punches(conversions: int, punches: int = PUNCHES) -> float:
    """Seconds for vCPU 1's ``conversions`` one-page conversions (eager) while vCPU 0
    converts 256 MiB to shared, fills it by DMA and converts it back ``punches`` times, so
    each of its conversions to private punches 256 MiB of allocated memory: how long one
    vCPU's large discard holds up the others'."""
    from ..vmm.machine import Machine

    big = [op for _ in range(punches) for op in (
        Op("convert", PUNCH_BASE, PUNCH_BYTES, 0, to="shared"),
        Op("dma_in", PUNCH_BASE, PUNCH_BYTES, 0, pattern=0x5A),
        Op("convert", PUNCH_BASE, PUNCH_BYTES, 0, to="private"))]
    small = [Op("convert", WINDOW, PAGE_SIZE, 1, to=to) for _ in range(conversions // 2) for to in ("shared", "private")]
    with Machine(PUNCH_MEMORY, 2, policy="eager") as machine:
        return machine.run_ops(big + small).wall_time


@dataclass
class ThroughputReport:
    rows: list[ThroughputResult]
    beside_punches_s: list[float]          # every round of ``beside_punches``
    conversions: int


def planned_runs(vcpu_counts, policies, repeat: int, punches: bool = True) -> int:
    return (len(vcpu_counts) * len(policies) + punches) * repeat


def run(vcpu_counts=(1, 2), policies=("never", "eager"), conversions: int = 20_000, repeat: int = 3,
        progress=None, punches: bool = True) -> ThroughputReport:
    """Every (vCPUs, policy), then (with ``punches``) the conversions beside large punches,
    ``repeat`` interleaved rounds."""
    configs = [(v, p) for v in vcpu_counts for p in policies] + ([BESIDE_PUNCHES] if punches else [])

    def one(config):
        return beside_punches(conversions) if config == BESIDE_PUNCHES else measure(*config, conversions)

    def describe(config):
        return "beside 256 MiB punches" if config == BESIDE_PUNCHES else f"{config[0]} vCPU {config[1]}"

    measured = rounds.interleaved(configs, repeat, one, describe, progress)
    beside = measured.pop(BESIDE_PUNCHES, [])
    rows = []
    for (vcpus, policy), runs in measured.items():
        best = rounds.best(runs)
        rows.append(ThroughputResult(vcpus, policy, best.conversions, best.wall_s, len(runs), rounds.spread(runs)))
    return ThroughputReport(rows, beside, conversions)


def as_json(report: ThroughputReport) -> dict:
    return {"rows": [{**asdict(r), "conversions_per_s": r.per_s} for r in report.rows],
            "beside_punches_s": report.beside_punches_s, "beside_punches_conversions": report.conversions}


def table(report: ThroughputReport):
    from .tables import compact

    rows = report.rows
    base = {r.policy: r.per_s for r in rows if r.vcpus == 1}
    out = compact(f"privmem bench throughput: best of {rows[0].rounds} rounds",
                  ("vCPUs", "policy", "conversions/s", "vs 1 vCPU", "spread", "µs/conversion"))
    for r in rows:
        ratio = r.per_s / base[r.policy] if base.get(r.policy) else None
        out.add_row(str(r.vcpus), r.policy, f"{r.per_s:,.0f}", "-" if ratio is None else f"{ratio:.2f}x",
                    f"{r.spread:.1%}", f"{1e6 / r.per_s:.1f}" if r.per_s else "-")
    return out


def headline(report: ThroughputReport) -> list[str]:
    base = {r.policy: r.per_s for r in report.rows if r.vcpus == 1}
    lines = [f"{r.policy}: {r.vcpus} vCPUs convert {r.per_s / base[r.policy]:.2f}x as fast as 1"
             for r in report.rows if r.vcpus > 1 and base.get(r.policy)]
    if report.beside_punches_s:
        lines.append(f"beside {PUNCHES} punches of {PUNCH_BYTES >> 20} MiB on vCPU 0, vCPU 1's {report.conversions:,} one-page conversions "
                     f"took {min(report.beside_punches_s):.3f} s (best of {len(report.beside_punches_s)}; eager)")
    return lines


__all__ = ["MAX_CONVERSIONS", "ThroughputReport", "ThroughputResult", "as_json", "beside_punches", "headline", "run", "table"]
