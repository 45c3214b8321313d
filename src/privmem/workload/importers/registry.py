"""The importers, by name: ``IMPORTERS``, filled by ``@importer``.  The CLI's ``--from``
choices, the docs and the tests iterate it, so adding a source is one module that registers
its line parser."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...registry import Registry
from .events import LineResult


@dataclass(frozen=True)
class Importer:
    """A named source: ``parse(text)`` reads one line (without its newline) into a Conversion,
    a Skipped or a Dropped, or raises Malformed."""

    name: str
    summary: str
    parse: Callable[[str], LineResult]


IMPORTERS: Registry[Importer] = Registry("importer")


def importer(name: str, summary: str):
    """Register ``parse(text) -> LineResult`` as the importer ``name``."""
    def register(parse: Callable[[str], LineResult]):
        IMPORTERS.add(name, Importer(name, summary, parse))
        return parse
    return register


__all__ = ["IMPORTERS", "Importer", "importer"]
