"""The compact table every benchmark prints by default: no vertical rules, one space of
padding shared between columns, headers on two lines where they are long, so a table of a
handful of figures fits 80 columns without cutting a digit."""

from __future__ import annotations


def compact(title: str | None = None, columns=(), left=("policy", "workload", "pattern", "structure")):
    """A rich Table with ``columns`` (header text; right-justified unless in ``left``)."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  collapse_padding=True)
    for header in columns:
        # A long policy spec folds onto a second line: a cell is never cut.
        table.add_column(header, justify="left" if header in left else "right", overflow="fold")
    return table


__all__ = ["compact"]
