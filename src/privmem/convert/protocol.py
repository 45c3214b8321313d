"""The discard-policy protocol: exactly what the conversion engine asks a policy, and when.

A policy decides what happens to the backing memory a conversion leaves behind: discard it
now, or hold it (the page may come back and reclaim it for free) and perhaps discard it
later.  It is pure logic: the engine issues the syscalls and keeps the books
(``HeldMemory``).  Subclass :class:`Policy`, register the class with ``@policy(name,
summary)`` (``privmem.convert.catalogue``), and every consumer sees it: ``make_policy``, the
machines, the CLI, the bench and the registry-driven tests.  docs/api.md walks through one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from ..errors import InvalidArgument
from .spec import Param, ShareOfMemory, format_spec

if TYPE_CHECKING:
    from .held import HeldMemory
    from .tracker import Conversion

DISCARD, HOLD = "discard", "hold"

EXACT_BOOKS, BUDGET_BOUNDED = "exact-books", "budget-bounded"
MODEL_PROPERTIES = {
    EXACT_BOOKS: "the engine's held books equal, page for page and at every step, those of a per-page "
                 "model running a twin of the policy over naive books",
    BUDGET_BOUNDED: "the held books never exceed the policy's budget_bytes at a conversion boundary",
}


class Policy:
    """Base class of discard policies; the docstrings below are the contract.

    **Attributes** (the engine reads them once, when it is built):

    - ``name``, ``summary``: set by ``@policy``; the spec name and a one-line description.
    - ``params``: the :class:`~privmem.convert.spec.Param` a spec may set; each becomes an
      attribute of the instance, checked by ``__init__``.
    - ``queues``: memory held now will be discarded later, so it counts as
      ``stats.queued_bytes``; ``flush()`` then discards it all (the default ``drain``).
      False: held memory stays held (``never``), and only failed discards awaiting a retry
      count as queued.
    - ``ages``: the held books keep a fifo of holds by time, so ``drain`` may call
      ``held.take_oldest`` and ``held.oldest_time``; without ages the books cost less and
      ``take_oldest`` takes everything.
    - ``tick_interval``: None, or seconds between a ``Drainer``'s ``engine.tick()`` calls while
      a machine runs (for policies whose ``drain`` depends on time passing, not only on
      conversions).
    - ``budget_bytes``: None, or the bound this policy keeps held memory under (reported with
      each run; the model test holds ``budget-bounded`` policies to it).
    - ``model_property``: what the model test holds the policy to (``MODEL_PROPERTIES``);
      ``model_params``: parameter values for its tiny guest (64 pages, 25 steps a run) where
      the defaults would never act (a budget it sets for every policy that has one).

    **Calls** (all under the engine lock, so never two at once and never concurrent with
    the books changing; ranges are page aligned, non-empty and validated guest RAM; ``side``
    is ``HELD_SHARED`` or ``HELD_PRIVATE``; ``now`` is the engine's clock).  For each
    committed conversion that changed at least one page: ``converted`` once, then for each
    changed range in ascending order ``entered`` and (unless ``holds`` answered True for the
    side left) ``left_behind``; then, after every conversion request whether it changed
    anything or not, ``drain``.  ``tick()`` and ``flush()`` call ``drain`` alone.  The
    conversion is committed before any of these run, so a policy must not raise (an error
    propagates to the converting vCPU with the conversion done and the books half-kept)
    and must not block: the converting vCPU and every other converting vCPU wait on it.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    queues: ClassVar[bool] = False
    ages: ClassVar[bool] = False
    tick_interval: float | None = None
    budget_bytes: int | None = None
    model_property: ClassVar[str] = EXACT_BOOKS
    model_params: ClassVar[dict[str, object]] = {}

    def __init__(self, **values: object):
        """Set every parameter from ``values`` (spec text or Python values) or its default;
        InvalidArgument naming ``<name>.<param>`` for an unknown one or a bad value.
        ``make_policy`` supplies defaults that follow the guest's memory."""
        known = {param.name: param for param in self.params}
        for key in values:
            if key not in known:
                raise InvalidArgument(f"{self.name}.{key}", values[key],
                                      f"unknown parameter ({self.name} takes {self.describe_params()})",
                                      hex_value=False)
        for param in self.params:
            given = values.get(param.name, param.default)
            if isinstance(given, ShareOfMemory):
                raise InvalidArgument(f"{self.name}.{param.name}", None, f"needs a value (make_policy defaults "
                                      f"it to {given})", hex_value=False)
            setattr(self, param.name, param.value(given, self.name))

    @classmethod
    def describe_params(cls) -> str:
        """``budget=SIZE, max_age=TIME`` (or ``no parameters``), for messages."""
        return ", ".join(f"{p.name}={p.kind.name.upper()}" for p in cls.params) or "no parameters"

    @property
    def spec(self) -> str:
        """The canonical spec, every parameter written out: ``make_policy(policy.spec, m)``
        builds an equal policy whatever the memory ``m``."""
        return format_spec(self.name, self.params, {p.name: getattr(self, p.name) for p in self.params})

    def __str__(self) -> str:
        return self.spec

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec}>"

    # -- what the engine calls ------------------------------------------------------------

    def converted(self, conversion: "Conversion", now: float) -> None:
        """Once per committed conversion that changed pages, before any per-range call:
        ``conversion.changed`` lists the ``(gpa, size)`` ranges that changed (ascending,
        disjoint), ``conversion.to_private`` the direction.  For policies that act per
        conversion (count them, decide for the whole conversion); what to discard is still
        answered by ``left_behind`` and ``drain``.  The engine checks once, when it is built,
        whether a policy overrides this, so the others pay nothing for it."""

    def holds(self, side: int) -> bool:
        """True when memory left on ``side`` is always held whole: the engine's fast path
        books each changed range at once and skips ``left_behind`` (which must then answer one
        HOLD piece for any range).  Asked once per conversion, for the side it leaves."""
        return False

    def entered(self, gpa: int, size: int, reclaimed: int) -> None:
        """The pages of a changed range entered a side; ``reclaimed`` bytes of them found
        their memory there still held (a flip back: brought back into use, no discard)."""

    def left_behind(self, side: int, gpa: int, size: int) -> list[tuple[int, int, str]]:
        """A changed range whose ``side`` was left, split into ``(gpa, size, DISCARD|HOLD)``
        pieces that tile it exactly, ascending.  DISCARD pieces are punched after the engine
        lock is dropped; HOLD pieces are booked, aged from ``now``."""
        raise NotImplementedError

    def drain(self, held: "HeldMemory", now: float, force: bool = False) -> list[tuple[int, int, int]]:
        """Held memory to discard now, as the ``(gpa, size, side)`` runs returned by the
        books' own ``take_all()`` or ``take_oldest(max_bytes, older_than=None)`` (which release
        what they return); it may read ``held.total``, ``held.held_bytes[side]`` and
        ``held.oldest_time(before=None)``.  ``force`` (``flush()``): everything the policy
        would discard eventually.  The default takes all on ``force`` if the policy queues."""
        return held.take_all() if force and self.queues else []


class HoldEverything(Policy):
    """A policy that holds all memory left behind (the engine's fast path) and decides only
    in ``drain`` (and ``converted``) when it goes: never, lazy and batch are ones."""

    def holds(self, side: int) -> bool:
        return True

    def left_behind(self, side: int, gpa: int, size: int) -> list[tuple[int, int, str]]:
        return [(gpa, size, HOLD)]


__all__ = ["BUDGET_BOUNDED", "DISCARD", "EXACT_BOOKS", "HOLD", "HoldEverything", "MODEL_PROPERTIES", "Policy"]
