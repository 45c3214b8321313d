"""The compact table every benchmark prints by default: no vertical rules, one space of
padding shared between columns, headers on two lines where they are long, so a table of a
handful of figures fits 80 columns without cutting a digit."""

from __future__ import annotations


class CompactTable:
    """A rich Table with its title on a line of its own above it: rich wraps a table's own
    title at the table's width, which folds the title of a narrow table onto several lines.
    ``add_row`` and ``add_section`` go to the table."""

    def __init__(self, title: str | None, table):
        self.title, self.table = title, table

    def add_row(self, *cells) -> None:
        self.table.add_row(*cells)

    def add_section(self) -> None:
        self.table.add_section()

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        return Group(Text(self.title, style="italic"), self.table) if self.title else self.table


def compact(title: str | None = None, columns=(), left=("policy", "workload", "pattern", "structure")) -> CompactTable:
    """A table with ``columns`` (header text; right-justified unless in ``left``)."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for header in columns:
        # A long policy spec folds onto a second line: a cell is never cut.
        table.add_column(header, justify="left" if header in left else "right", overflow="fold")
    return CompactTable(title, table)


__all__ = ["CompactTable", "compact"]
