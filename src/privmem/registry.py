"""Registries: one table per extension point, filled by a decorator.

A :class:`Registry` maps a name to an entry (a policy class, a workload generator), in the
order the entries were registered.  The module that defines an entry registers it with its
extension point's decorator (``@policy``, ``@workload``), so adding an entry is one file;
the CLI, the bench, ``list`` and the tests iterate the table.

Other packages add entries through an ``importlib.metadata`` entry-point group (for
policies ``privmem.policies``, for workloads ``privmem.workloads``): each entry point names
a module whose import registers its entries with the same decorator::

    [project.entry-points."privmem.policies"]
    my-policy = "my_package.my_policy"

The group is loaded once, on the first read of the table, not when privmem is imported
(scanning the installed distributions costs tens of milliseconds).  Pure logic.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from .errors import InvalidState

Entry = TypeVar("Entry")


class Registry(Mapping[str, Entry], Generic[Entry]):
    """``name -> entry`` for one extension point (module docstring).  ``kind`` names an entry
    in messages ("policy", "workload"); ``group`` is the entry-point group read on first use
    (None: none).  Reads load the group first; ``add`` never does (a plugin's module calls it
    while the group loads).  A plugin that fails to import raises InvalidState naming it."""

    def __init__(self, kind: str, group: str | None = None):
        self.kind, self.group = kind, group
        self._entries: dict[str, Entry] = {}
        self._loaded = group is None
        self._loading = threading.RLock()

    def add(self, name: str, entry: Entry) -> Entry:
        """Register ``entry`` as ``name``; a name is registered once (ValueError otherwise)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    @property
    def summaries(self) -> Mapping[str, str]:
        """A live view ``name -> entry.summary`` (what ``list`` prints and callers choose from)."""
        return _Summaries(self)

    def _load_plugins(self) -> None:
        if self._loaded:
            return
        with self._loading:
            if self._loaded:
                return
            self._loaded = True             # before loading: each plugin's module calls add()
            from importlib.metadata import entry_points

            for point in entry_points(group=self.group):
                try:
                    point.load()
                except Exception as error:
                    raise InvalidState(f"{self.kind} plugin {point.name!r} ({point.value}, entry-point group "
                                       f"{self.group}) failed to load: {error}") from error

    def __getitem__(self, name: str) -> Entry:
        self._load_plugins()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(self._entries)

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self)})"


class _Summaries(Mapping[str, str]):
    def __init__(self, registry: Registry):
        self._registry = registry

    def __getitem__(self, name: str) -> str:
        return self._registry[name].summary

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)

    def __repr__(self) -> str:
        return repr(dict(self))


__all__ = ["Registry"]
