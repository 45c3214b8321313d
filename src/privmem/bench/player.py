"""`privmem bench player`: guest instructions per op in the trace player, counted by
single-stepping the vCPU (``roundtrip.instructions_per_op``).  A count, not a timing: the same
on any host, and what a player change must not make worse (each instruction is emulated here,
~1 µs)."""

from __future__ import annotations

from .roundtrip import instructions_per_op


def run(repeat: int = 16) -> dict[str, float]:
    return instructions_per_op(repeat)


def as_json(results: dict) -> dict:
    return results


def table(results: dict):
    from .tables import compact

    out = compact("privmem bench player: guest instructions per op (single-stepped)", ("op", "instructions"),
                  left=("op",))
    for name, count in results.items():
        out.add_row(name, f"{count:.1f}")
    return out


def headline(results: dict) -> list[str]:
    return [f"a one-page conversion takes {results['convert 1 page']:.0f} guest instructions besides its exit; "
            f"OUT instructions end in an exit, not a debug step, and are not counted"]
