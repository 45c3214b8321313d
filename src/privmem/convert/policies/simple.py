"""The policies with a fixed answer per side: never, eager and keep-shared."""

from __future__ import annotations

from ..catalogue import policy
from ..held import HELD_SHARED
from ..protocol import DISCARD, HOLD, HoldEverything, Policy


@policy("never", "no discard at all: the time lower bound, as plain SNP had")
class NeverPolicy(HoldEverything):
    """Everything left behind stays held: no discard syscall ever, the most memory."""


@policy("eager", "discard the side being left in the same step (today's QEMU; the UPM thread's SNP+UPM)")
class EagerPolicy(Policy):
    """Everything left behind is punched at once: no double allocation, every flip-flop pays
    a punch and a re-fault."""

    def left_behind(self, side, gpa, size):
        return [(gpa, size, DISCARD)]


@policy("keep-shared", "never discard shared memory; still punch private memory on private->shared")
class KeepSharedPolicy(Policy):
    """The UPM thread's "disable shared discard": shared memory left behind stays held, private
    memory left behind is punched."""

    def holds(self, side):
        return side == HELD_SHARED

    def left_behind(self, side, gpa, size):
        return [(gpa, size, HOLD if side == HELD_SHARED else DISCARD)]
