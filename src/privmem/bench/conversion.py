"""`privmem bench conversion`: what one conversion costs in each design, side by side on KVM.

One page flips private -> shared -> private through the PSC doorbell, ``flips`` times, on one
KVM guest per design: the two-file store under ``never`` (nothing discarded), the two-file
store under ``eager`` (every conversion punches the side it leaves) and in-place (one
guest_memfd, the shared view's protection changed and the page zeroed on every conversion).
The guest touches the page after every flip, so what a conversion takes away (a punched
page, a mapping KVM had to drop) is paid back in the same run.  Rounds are interleaved; each
design keeps its best.  Per conversion: the guest-to-guest wall time and the VMM's own time
(the PSC handler), and their excess over ``never``.

Then the host-side steps each design adds, timed call by call on the live machines' own
backings (so KVM's MMU notifier is part of what an mprotect costs):

* eager: punch one allocated page (fallocate PUNCH_HOLE) and re-fault it (the first write
  after the punch, less a write to an allocated page);
* in-place: one protection change of the shared view (mprotect; KVM zaps the page from its
  mappings), zeroing an allocated page (cachestat + memset), and the check of a page never
  allocated (cachestat alone: a conversion never allocates).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from ..ops import Op
from ..units import MiB, PAGE_SIZE, format_size
from . import rounds

MEMORY = 1 << 30
PAGE = 2 * MiB                  # the page the guest flips
SCRATCH = 4 * MiB               # pages the host-side steps use: the guest never touches them
MAX_FLIPS = 200_000             # round trips per round: about 12 s per design on this host
DESIGNS = (("never", "two-file"), ("eager", "two-file"), ("never", "in-place"))
STEP_CALLS = 5_000


@dataclass
class DesignCost:
    design: str                  # "never", "eager" or "in-place"
    conversions: int
    roundtrip_us: float          # guest to guest, per conversion, touch included
    vmm_us: float                # the PSC handler's time per conversion
    rounds: int
    spread: float


@dataclass
class ConversionReport:
    flips: int
    designs: list[DesignCost]
    steps: dict[str, dict[str, float]] = field(default_factory=dict)   # design -> step -> µs


@dataclass
class _Round:
    wall_s: float
    vmm_ns: int
    conversions: int


def flip_ops(flips: int) -> list[Op]:
    """``flips`` round trips of one page, touched through the view of each state."""
    return [op for _ in range(flips) for op in (
        Op("convert", PAGE, PAGE_SIZE, to="shared"), Op("touch", PAGE, PAGE_SIZE, view="shared"),
        Op("convert", PAGE, PAGE_SIZE, to="private"), Op("touch", PAGE, PAGE_SIZE, view="private"))]


def design_name(policy: str, backing: str) -> str:
    return "in-place" if backing == "in-place" else policy


def _measure(policy: str, backing: str, flips: int) -> _Round:
    from ..vmm.machine import Machine

    with Machine(MEMORY, 1, policy=policy, backing=backing) as machine:
        machine.run_ops(flip_ops(2))               # warm up: the player's pages, the page's first faults
        before = machine.psc_handler_ns
        result = machine.run_ops(flip_ops(flips))
        return _Round(result.wall_time, machine.psc_handler_ns - before, result.conversions)


def _per_call_us(calls: int, step) -> float:
    total = 0
    for _ in range(calls):
        total += step()
    return total / calls / 1e3


def _timed(call, *args) -> int:
    start = time.perf_counter_ns()
    call(*args)
    return time.perf_counter_ns() - start


def eager_steps(calls: int = STEP_CALLS) -> dict[str, float]:
    """Punch and re-fault of one page of the shared memfd, on a live eager machine."""
    from ..vmm.machine import Machine

    data = b"\x5a" * 8
    with Machine(MEMORY, 1, policy="eager") as machine:
        shared = machine.engine.shared
        shared.write(SCRATCH, data)

        def punch() -> int:
            elapsed = _timed(shared.discard, SCRATCH, PAGE_SIZE)
            shared.write(SCRATCH, data)
            return elapsed

        def refault() -> int:
            shared.discard(SCRATCH, PAGE_SIZE)
            return _timed(shared.write, SCRATCH, data) - _timed(shared.write, SCRATCH, data)

        return {"punch a page (fallocate PUNCH_HOLE)": _per_call_us(calls, punch),
                "re-fault it (first write after the punch)": _per_call_us(calls, refault)}


def in_place_steps(calls: int = STEP_CALLS) -> dict[str, float]:
    """One protection change, one zeroing and one allocation check, on a live in-place machine."""
    from ..vmm.machine import Machine

    with Machine(MEMORY, 1, policy="never", backing="in-place") as machine:
        backing = machine.engine.backing
        allocated, untouched = SCRATCH, SCRATCH + PAGE_SIZE
        backing.protect(allocated, PAGE_SIZE, shared=True)
        backing.write(allocated, b"\x5a" * 8)

        def protect() -> int:
            return _timed(backing.protect, allocated, PAGE_SIZE, False) + _timed(backing.protect, allocated,
                                                                                 PAGE_SIZE, True)

        steps = {"change the shared view's protection (mprotect)": _per_call_us(calls, protect) / 2,
                 "zero an allocated page (cachestat + memset)":
                     _per_call_us(calls, lambda: _timed(backing.zero_allocated, allocated, PAGE_SIZE)),
                 "check a page never allocated (cachestat)":
                     _per_call_us(calls, lambda: _timed(backing.zero_allocated, untouched, PAGE_SIZE))}
        backing.protect(allocated, PAGE_SIZE, shared=False)
        return steps


def planned_runs(repeat: int) -> int:
    """Progress steps of ``run``: every design's rounds, then the host-side steps."""
    return len(DESIGNS) * repeat + 1


def run(flips: int = 10_000, repeat: int = 3, progress=None) -> ConversionReport:
    measured = rounds.interleaved(DESIGNS, repeat, lambda design: _measure(*design, flips),
                                  lambda design: design_name(*design), progress)
    designs = []
    for (policy, backing), runs in measured.items():
        best = rounds.best(runs)
        conversions = max(best.conversions, 1)
        designs.append(DesignCost(design_name(policy, backing), best.conversions, best.wall_s / conversions * 1e6,
                                  best.vmm_ns / conversions / 1e3, len(runs), rounds.spread(runs)))
    if progress:
        progress("host-side steps")
    return ConversionReport(flips, designs, {"eager": eager_steps(), "in-place": in_place_steps()})


def as_json(report: ConversionReport) -> dict:
    return {"flips": report.flips, "memory": MEMORY, "designs": [asdict(d) for d in report.designs],
            "steps_us": report.steps}


def table(report: ConversionReport):
    from rich.console import Group

    from .tables import compact

    never = next(d for d in report.designs if d.design == "never")
    rounds_said = f"{never.rounds} round{'s' if never.rounds != 1 else ''}"
    out = compact(f"privmem bench conversion: a {format_size(MEMORY)} kvm guest, best of {rounds_said}\n"
                  f"one page flipped and touched {report.flips:,} times each way, per conversion:",
                  ("design", "round trip\nµs", "vs never\nµs", "VMM\nµs", "vs never\nµs", "spread"),
                  left=("design",))
    for d in report.designs:
        out.add_row(d.design, f"{d.roundtrip_us:.1f}", f"{d.roundtrip_us - never.roundtrip_us:+.1f}",
                    f"{d.vmm_us:.1f}", f"{d.vmm_us - never.vmm_us:+.1f}", f"{d.spread:.1%}")
    steps = compact("host-side steps, per call on the live machine's backing",
                    ("design", "step", "µs"), left=("design", "step"))
    for design, timed in report.steps.items():
        for step, us in timed.items():
            steps.add_row(design, step, f"{us:.2f}")
    return Group(out, "", steps)


def headline(report: ConversionReport) -> list[str]:
    by = {d.design: d for d in report.designs}
    never = by["never"]
    extra = ", ".join(f"{name} {by[name].roundtrip_us - never.roundtrip_us:+.1f} µs" for name in ("eager", "in-place"))
    return [f"per conversion beyond never, guest to guest: {extra}; in-place allocates and discards nothing, "
            f"eager punches a page every conversion"]


__all__ = ["ConversionReport", "DesignCost", "MAX_FLIPS", "as_json", "flip_ops", "headline", "run", "table"]
