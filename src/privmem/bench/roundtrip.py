"""What one exit and one conversion cost on a KVM machine, and how many guest instructions
each player op takes: the measurements behind the bench's headline.

* ``exit_roundtrip(machine, n)``: seconds per bare port-I/O exit round trip (guest OUT to the
  no-op port, KVM_RUN returns, the loop re-enters), from the difference of n exits and none.
* ``conversion_cost(machine, n)``: in one call, a bare exit round trip, the wall time per
  conversion while the guest flip-flops one page through the PSC doorbell (less an empty
  run), and the VMM's own time per conversion (the PSC handler: parse, validate,
  ``engine.convert``, write back).
* ``instructions_per_op(...)``: guest instructions each kind of op takes in the player,
  counted by single-stepping the vCPU (KVM_SET_GUEST_DEBUG): a count, not a timing, so it is
  the same on any host.  OUT instructions end in an I/O exit instead of a debug exit and are
  not counted; a player with fewer instructions per op is faster on every host.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from ..kvm import uapi
from ..ops import Op
from ..units import MiB, PAGE_SIZE
from ..vmm.program import Program


def _exits(machine, count: int) -> float:
    with Program(machine.memory_map, machine.vcpus) as program:
        program.add_exits(0, count)
        return machine.run_ops(program).wall_time


def exit_roundtrip(machine, n: int = 20000) -> float:
    """Seconds per bare port-I/O exit round trip on vCPU 0."""
    empty = _exits(machine, 0)
    full = _exits(machine, n)
    return max(full - empty, 0.0) / max(n, 1)


def conversion_cost(machine, n: int = 10000) -> dict:
    """``exit_roundtrip_us``, ``conversion_roundtrip_us``, ``vmm_us_per_conversion``, their
    ``ratio`` (VMM time / exit round trip), ``conversions`` and ``policy``, measured in this
    one call.  The page flipped is the first page of RAM; it ends in the state it started in
    (its contents depend on the policy)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 2:
        raise InvalidArgument("n", n, "must be an integer >= 2", hex_value=False)
    exit_s = exit_roundtrip(machine, n)
    page = machine.memory_map.regions[0].gpa
    first, second = ("shared", "private") if machine.store.get(page) else ("private", "shared")
    flips = [Op("convert", page, PAGE_SIZE, to=to) for _ in range(n // 2) for to in (first, second)]
    machine.run_ops(flips[:2])             # warm up: the player's and the comm page's pages
    empty = _exits(machine, 0)
    handler_before = machine.psc_handler_ns
    result = machine.run_ops(flips)
    handler_ns = machine.psc_handler_ns - handler_before
    conversions = max(result.conversions, 1)
    exit_us = exit_s * 1e6
    vmm_us = handler_ns / conversions / 1e3
    return {"exit_roundtrip_us": exit_us,
            "conversion_roundtrip_us": max(result.wall_time - empty, 0.0) / conversions * 1e6,
            "vmm_us_per_conversion": vmm_us, "ratio": vmm_us / exit_us if exit_us else None,
            "conversions": result.conversions, "policy": getattr(getattr(machine.engine, "policy", None), "name",
                                                                 None)}


def _single_stepped(machine, program: Program) -> int:
    """Guest instructions (debug exits) the program takes on vCPU 0."""
    vcpu = machine.vcpu(0)
    machine.launch()
    machine.prepare_vcpu(0, program.spools[0])
    vcpu.set_guest_debug(uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_SINGLESTEP)
    steps = 0
    try:
        while True:
            reason = vcpu.run()
            if reason == uapi.KVM_EXIT_DEBUG:
                steps += 1
                continue
            if machine.dispatch(0, reason):
                return steps
    finally:
        vcpu.set_guest_debug(0)


def _cases(base: int) -> dict:
    page, huge = PAGE_SIZE, 2 * MiB
    return {
        "convert 1 page": lambda i: Op("convert", base + page * (i % 64), page, to="shared" if i % 2 == 0 else "private"),
        "convert 2 pages": lambda i: Op("convert", base + 2 * page * (i % 32), 2 * page, to="shared"),
        "convert 2 MiB": lambda i: Op("convert", base + huge * (i % 8), huge, to="shared"),
        "write 1 page": lambda i: Op("write", base, page, view="private", pattern=5),
        "write 4 pages": lambda i: Op("write", base, 4 * page, view="private", pattern=5),
        "verify 1 page": lambda i: Op("verify", base, page, view="private", pattern=0),
        "verify 4 pages": lambda i: Op("verify", base, 4 * page, view="private", pattern=0),
        "touch 1 page": lambda i: Op("touch", base, page, view="private"),
        "dma_in 1 page": lambda i: Op("dma_in", base, page, pattern=1),
    }


def instructions_per_op(repeat: int = 16) -> dict[str, float]:
    """Guest instructions per op, for each kind of op (the ``END`` a run needs subtracted),
    on a fresh 64 MiB machine per case (kvm backend)."""
    from ..vmm import Machine

    def count(ops) -> int:
        with Machine("64M", 1, policy="never", data_check="sampled") as machine, \
                Program.compile(ops, machine.memory_map, 1) as program:
            return _single_stepped(machine, program)

    base = count([])
    out = {name: (count([make(i) for i in range(repeat)]) - base) / repeat
           for name, make in _cases(2 * MiB).items()}
    out["end of run"] = float(base)
    return out


__all__ = ["conversion_cost", "exit_roundtrip", "instructions_per_op"]
