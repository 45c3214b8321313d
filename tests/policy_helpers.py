"""Helpers for the registry-driven policy tests: a policy with the test's knobs where it has
them, and the held books page by page (the naive twin of ``HeldMemory``)."""

from privmem.convert import make_policy, policy_class
from privmem.convert.held import HELD_PRIVATE, HELD_SHARED

PAGE = 4096


def policy_with(name: str, memory: int, **values):
    """``make_policy(name, memory, ...)`` with those of ``values`` the policy takes: a test sets
    e.g. a small budget for every policy that has one."""
    takes = {param.name for param in policy_class(name).params}
    return make_policy(name, memory, **{key: value for key, value in values.items() if key in takes})


def merged_runs(pages: dict[int, int]) -> list[tuple[int, int, int]]:
    """``(gpa, size, side)`` runs of a page -> side map, adjacent pages of one side merged."""
    out: list[list[int]] = []
    for page in sorted(pages):
        if out and out[-1][2] == pages[page] and out[-1][0] + out[-1][1] == page * PAGE:
            out[-1][1] += PAGE
        else:
            out.append([page * PAGE, PAGE, pages[page]])
    return [tuple(run) for run in out]


class NaiveHeld:
    """The held books one page at a time: each held page maps to ``(side, hold number,
    time)``.  Offers a policy's ``drain`` what ``HeldMemory`` documents for it (``total``,
    ``held_bytes``, ``take_all``, ``take_oldest``, ``oldest_time``), and the model the
    engine's two ways of booking a changed range (``hold``; ``reclaim``)."""

    def __init__(self, ages: bool):
        self.ages = ages
        self.pages: dict[int, tuple[int, int, float]] = {}
        self._holds = 0

    @property
    def total(self) -> int:
        return len(self.pages) * PAGE

    @property
    def held_bytes(self) -> dict[int, int]:
        counts = {HELD_SHARED: 0, HELD_PRIVATE: 0}
        for side, _, _ in self.pages.values():
            counts[side] += PAGE
        return counts

    def sides(self) -> dict[int, int]:
        return {page: side for page, (side, _, _) in self.pages.items()}

    def hold(self, first: int, end: int, side: int, now: float) -> int:
        """Pages ``[first, end)`` left ``side``: held from ``now`` under one new hold.  Returns
        the bytes they had held for the other side (reclaimed)."""
        reclaimed = sum(PAGE for page in range(first, end) if page in self.pages and self.pages[page][0] != side)
        self._holds += 1
        for page in range(first, end):
            self.pages[page] = (side, self._holds, now)
        return reclaimed

    def reclaim(self, first: int, end: int, side: int) -> int:
        taken = [page for page in range(first, end) if page in self.pages and self.pages[page][0] == side]
        for page in taken:
            del self.pages[page]
        return len(taken) * PAGE

    def take_all(self) -> list[tuple[int, int, int]]:
        runs = merged_runs(self.sides())
        self.pages.clear()
        return runs

    def oldest_time(self, before: float | None = None) -> float | None:
        oldest = min((when for _, _, when in self.pages.values()), default=None)
        return None if oldest is None or (before is not None and oldest >= before) else oldest

    def take_oldest(self, max_bytes: int, older_than: float | None = None) -> list[tuple[int, int, int]]:
        if not self.ages:
            return self.take_all()
        holds: dict[int, list[int]] = {}
        for page, (_, number, _) in self.pages.items():
            holds.setdefault(number, []).append(page)
        taken: dict[int, int] = {}
        for number in sorted(holds):
            if taken and len(taken) * PAGE >= max_bytes:
                break
            pages = holds[number]
            if older_than is not None and self.pages[pages[0]][2] >= older_than:
                break
            for page in pages:
                taken[page] = self.pages.pop(page)[0]
        return merged_runs(taken)
