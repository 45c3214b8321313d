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


def run(vcpu_counts=(1, 2), policies=("never", "eager"), conversions: int = 20_000, repeat: int = 3,
        progress=None) -> list[ThroughputResult]:
    configs = [(v, p) for v in vcpu_counts for p in policies]
    measured: dict[tuple[int, str], list[_Round]] = {config: [] for config in configs}
    for round_index in range(repeat):
        for vcpus, policy in rounds.rotated(configs, round_index):
            if progress:
                progress(f"{vcpus} vCPU {policy} (round {round_index + 1}/{repeat})")
            measured[(vcpus, policy)].append(measure(vcpus, policy, conversions))
    out = []
    for (vcpus, policy), runs in measured.items():
        best = rounds.best(runs)
        out.append(ThroughputResult(vcpus, policy, best.conversions, best.wall_s, len(runs), rounds.spread(runs)))
    return out


def as_json(results):
    return [{**asdict(r), "conversions_per_s": r.per_s} for r in results]


def table(results):
    from .tables import compact

    base = {r.policy: r.per_s for r in results if r.vcpus == 1}
    out = compact(f"privmem bench throughput: one-page conversions, best of {results[0].rounds} rounds",
                  ("vCPUs", "policy", "conversions/s", "vs 1 vCPU", "spread", "µs/conversion"))
    for r in results:
        ratio = r.per_s / base[r.policy] if base.get(r.policy) else None
        out.add_row(str(r.vcpus), r.policy, f"{r.per_s:,.0f}", "-" if ratio is None else f"{ratio:.2f}x",
                    f"{r.spread:.1%}", f"{1e6 / r.per_s:.1f}" if r.per_s else "-")
    return out


def headline(results) -> list[str]:
    base = {r.policy: r.per_s for r in results if r.vcpus == 1}
    return [f"{r.policy}: {r.vcpus} vCPUs convert {r.per_s / base[r.policy]:.2f}x as fast as 1"
            for r in results if r.vcpus > 1 and base.get(r.policy)]


__all__ = ["MAX_CONVERSIONS", "ThroughputResult", "as_json", "headline", "run", "table"]
