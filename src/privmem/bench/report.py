"""A saved bench result, rendered: its table (rich, markdown or CSV), headline and plot.

Everything here reads the bench's JSON document (``BenchReport.as_json``), never runs in
memory: ``privmem bench`` prints through these functions from the document it saves, so
``privmem report`` of the saved file prints the same table by construction.  ``load``
upgrades a file from before the envelope (schema 0) to the current shape, or refuses it
naming the key it lacks.
"""

from __future__ import annotations

import csv
import io
import json
import numbers

from ..errors import InvalidArgument
from ..results import HOST_KEYS, SCHEMA, load as load_result, requested
from ..runner import TIMELINE_KEYS
from ..units import MiB, format_size
from .boot import ROW_KEYS, describe
from .figures import png

FORMATS = ("table", "markdown", "csv", "json")
# The columns: (header, header in the compact table or None where only --wide shows it,
# right-justified?).  The compact table fits 80 columns: one block per workload, so the
# workload is its title, and conversions (the same for every row of a trace) go there too.
COLUMNS_SHOWN = (("workload", None, False), ("policy", "policy", False), ("time", "time", True),
                 ("vs never", "vs\nnever", True), ("spread", "spread", True), ("conversions", None, True),
                 ("discards", "discards", True), ("peak held (books)", "held\n(books)", True),
                 ("peak double alloc (kernel)", "double\n(kernel)", True), ("budget", None, True),
                 ("peak host memory", None, True), ("errors (data + DMA)", "errors", True))
COLUMNS = tuple((header, right) for header, _, right in COLUMNS_SHOWN)
# Row keys every cell needs; the others may be None (shown as "-").
NEEDED_ROW_KEYS = ("wall_s", "conversions", "discards", "peak_double_alloc_bytes",
                   "peak_double_alloc_measured_bytes", "peak_host_bytes", "data_errors", "dma_errors")
NEEDED_REQUESTED_KEYS = ("workloads", "policies", "backend", "memory", "vcpus", "repeat")
COST_KEYS = ("exit_roundtrip_us", "conversion_roundtrip_us", "vmm_us_per_conversion", "ratio", "conversions")
OLD_CONFIG_KEYS = ("backend", "memory", "vcpus", "repeat", "scale", "seed")


def load(path: str, field: str = "file") -> dict:
    """A bench result from ``path`` in the current shape; InvalidArgument names what is wrong."""
    doc = load_result(path, "bench", field)
    if doc["schema"] == 0:
        doc = upgrade(doc, path, field)
    check(doc, path)
    return doc


def upgrade(old: dict, path: str, field: str = "file") -> dict:
    """A bench file from before the envelope, in the current shape: its settings move into
    ``requested``, the envelope's facts it never recorded are None, every row gets every
    key, and timeline points get their names."""
    for key in ("summary", "runs", *OLD_CONFIG_KEYS[:4]):
        if key not in old:
            raise InvalidArgument(field, path, f"not a privmem bench result: no {key!r} key", hex_value=False)
    if not isinstance(old["summary"], list) or not all(isinstance(row, dict) for row in old["summary"]):
        raise InvalidArgument("summary", old["summary"], f"{path}: must be a list of rows", hex_value=False)
    workloads = list(dict.fromkeys(row.get("workload") for row in old["summary"]))
    policies = list(dict.fromkeys(row.get("policy") for row in old["summary"] if row.get("tracking") == "store"))
    settings = requested(workloads=workloads, policies=policies, layout=old.get("layout"),
                         **{key: old.get(key) for key in OLD_CONFIG_KEYS})
    summary = [{**dict.fromkeys(ROW_KEYS), **row} for row in old["summary"]]
    runs = [{**run, "timeline": [dict(zip(TIMELINE_KEYS, point)) if isinstance(point, list) else point
                                 for point in run.get("timeline", [])]} if isinstance(run, dict) else run
            for run in old["runs"]] if isinstance(old["runs"], list) else old["runs"]
    return {"schema": SCHEMA, "kind": "bench", "privmem_version": None, "created": None, "argv": None,
            "host": dict.fromkeys(HOST_KEYS), "requested": settings, "upgraded_from_schema": 0,
            "conversion_cost": old.get("conversion_cost"), "summary": summary, "runs": runs}


def check(doc: dict, path: str) -> None:
    """Every value the table, headline and plot read has the type they need."""
    settings = doc.get("requested")
    if not isinstance(settings, dict):
        raise InvalidArgument("requested", settings, f"{path}: must be an object", hex_value=False)
    for key in NEEDED_REQUESTED_KEYS:
        if key not in settings:
            raise InvalidArgument("requested", sorted(settings), f"{path}: has no {key!r} key", hex_value=False)
    for key in ("memory", "vcpus", "repeat"):
        _number(f"requested.{key}", settings[key], path)
    for key in ("workloads", "policies"):
        if not isinstance(settings[key], list) or not all(isinstance(name, str) for name in settings[key]):
            raise InvalidArgument(f"requested.{key}", settings[key], f"{path}: must be a list of names",
                                  hex_value=False)
    for key in ("summary", "runs"):
        if not isinstance(doc.get(key), list) or not all(isinstance(item, dict) for item in doc[key]):
            raise InvalidArgument(key, doc.get(key), f"{path}: must be a list of objects", hex_value=False)
    for index, row in enumerate(doc["summary"]):
        for key in ("workload", "policy", "tracking"):
            if not isinstance(row.get(key), str):
                raise InvalidArgument(f"summary[{index}].{key}", row.get(key), f"{path}: must be a name",
                                      hex_value=False)
        for key in NEEDED_ROW_KEYS:
            _number(f"summary[{index}].{key}", row.get(key), path)
        for key in ("ratio_to_never", "spread", "budget_bytes"):
            if row.get(key) is not None:
                _number(f"summary[{index}].{key}", row[key], path)
    cost = doc.get("conversion_cost")
    if cost is not None:
        if not isinstance(cost, dict):
            raise InvalidArgument("conversion_cost", cost, f"{path}: must be an object or null", hex_value=False)
        for key in COST_KEYS:
            _number(f"conversion_cost.{key}", cost.get(key), path)
    for index, run in enumerate(doc["runs"]):
        timeline = run.get("timeline", [])
        if not isinstance(timeline, list) or not all(isinstance(point, dict) and set(TIMELINE_KEYS) <= set(point)
                                                     for point in timeline):
            raise InvalidArgument(f"runs[{index}].timeline", "...", f"{path}: points must be objects with the "
                                  f"keys {', '.join(TIMELINE_KEYS)}", hex_value=False)


def _number(field: str, value, path: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgument(field, value, f"{path}: must be a number", hex_value=False)


# -- the table --------------------------------------------------------------------------

def title(doc: dict) -> str:
    settings = doc["requested"]
    return (f"privmem bench: {format_size(settings['memory'])} guest, {settings['vcpus']} vCPU, "
            f"{settings['backend']}, best of {settings['repeat']} interleaved rounds")


def backing_of(row: dict) -> str:
    """A row's backing: rows saved before the in-place backing existed name none (two-file)."""
    return row.get("backing") or "two-file"


def row_key(row: dict) -> tuple[str, str, str, str]:
    """What a row measured: (workload, policy, tracking, backing)."""
    return row["workload"], row["policy"], row["tracking"], backing_of(row)


def is_policy_row(row: dict) -> bool:
    """A discard policy's own row (two-file backing, the store's tracking), not a contrast."""
    return row["tracking"] == "store" and backing_of(row) == "two-file"


def label(row: dict) -> str:
    """A row's name in the policy column: the policy, and the design where it is not the
    two-file store's."""
    return describe(row["policy"], row["tracking"], backing_of(row))


def _or_dash(value, shown) -> str:
    return "-" if value is None else shown(value)


def cells(row: dict) -> list[str]:
    """One row's cells, in ``COLUMNS`` order, as every format shows them."""
    return [row["workload"], label(row), f"{row['wall_s']:.3f} s", _or_dash(row["ratio_to_never"], "{:.3f}x".format),
            _or_dash(row["spread"], "{:.1%}".format), f"{row['conversions']:,}", f"{row['discards']:,}",
            format_size(row["peak_double_alloc_bytes"]), format_size(row["peak_double_alloc_measured_bytes"]),
            format_size(row["budget_bytes"]) if row["budget_bytes"] else "-", format_size(row["peak_host_bytes"]),
            str(row["data_errors"] + row["dma_errors"])]


def grouped(doc: dict) -> list[list[dict]]:
    """The summary rows, one group per workload, in the order they were saved."""
    groups: dict[str, list[dict]] = {}
    for row in doc["summary"]:
        groups.setdefault(row["workload"], []).append(row)
    return list(groups.values())


def short_label(row: dict) -> str:
    """A row's name in the compact table: contrasts by their design alone (both run under
    never, which the table's note says)."""
    if is_policy_row(row):
        return row["policy"].replace(",", ", ")      # a long spec may wrap after a comma
    return "memslots" if row["tracking"] == "memslots" else backing_of(row)


def table(doc: dict, wide: bool = False):
    """The rich table ``privmem bench`` prints: every column in one table with ``wide``,
    else one compact block per workload that fits 80 columns."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    from .tables import compact

    if wide:
        out = Table(title=escape(title(doc)))
        for header, right in COLUMNS:
            out.add_column(header, justify="right" if right else "left")
        for group in grouped(doc):
            for row in group:
                out.add_row(*(escape(cell) for cell in cells(row)))
            out.add_section()
        return out
    shown = [index for index, (_, compact, _) in enumerate(COLUMNS_SHOWN) if compact]
    blocks = []
    for group in grouped(doc):
        first = group[0]
        block = compact(escape(f"\n{first['workload']}: {first['conversions']:,} conversions"),
                        [COLUMNS_SHOWN[index][1] for index in shown])
        for row in group:
            row_cells = cells(row)
            row_cells[1] = short_label(row)
            block.add_row(*(escape(row_cells[index]) for index in shown))
        blocks.append(block)
    notes = [escape(title(doc)), ""]
    meanings = {"memslots": "never + memslot splitting", "in-place": "never + one guest_memfd"}
    present = dict.fromkeys(short_label(row) for row in doc["summary"] if not is_policy_row(row))
    if present:
        notes.append("; ".join(f"{name} = {meanings.get(name, 'never')}" for name in present))
    notes.append("held (books): memory the engine holds undiscarded (its own count)\n"
                 "double (kernel): double allocation the kernel measured; --wide: every column")
    return Group(notes[0], *blocks, *notes[1:])


def blocks_by_workload(rows, key=lambda row: row["workload"]) -> list[list]:
    """``rows`` cut into runs of the same workload, in order."""
    out: list[list] = []
    for row in rows:
        if not out or key(out[-1][0]) != key(row):
            out.append([])
        out[-1].append(row)
    return out


def markdown(doc: dict) -> str:
    """The table as a GitHub pipe table (for README files and pull requests)."""
    def line(values) -> str:
        return "| " + " | ".join(value.replace("|", "\\|") for value in values) + " |"

    lines = [line(header for header, _ in COLUMNS), "|" + "|".join("---:" if right else "---" for _, right in COLUMNS)
             + "|"]
    lines += [line(cells(row)) for row in doc["summary"]]
    return "\n".join(lines)


def csv_text(doc: dict) -> str:
    """The summary rows as CSV: every row key, raw numbers (bytes, seconds), empty for None."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=ROW_KEYS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(doc["summary"])
    return out.getvalue()


def render(doc: dict, fmt: str, wide: bool = False):
    """The document in ``fmt`` (one of ``FORMATS``): a rich table, or text."""
    if fmt == "table":
        return table(doc, wide)
    if fmt == "markdown":
        return markdown(doc)
    if fmt == "csv":
        return csv_text(doc).rstrip("\n")
    if fmt == "json":
        return json.dumps(doc, indent=2)
    raise InvalidArgument("format", fmt, f"unknown (choose from {', '.join(FORMATS)})", hex_value=False)


def headline(doc: dict) -> list[str]:
    """The figures printed under the table, a line each (under 80 columns for usual names)."""
    lines = []
    for group in grouped(doc):
        workload = group[0]["workload"]
        shown = ", ".join(f"{row['policy']} {row['ratio_to_never']:.3f}x" for row in group
                          if is_policy_row(row) and row["policy"] != "never" and row["ratio_to_never"] is not None)
        lines.append(f"{workload} vs never: {shown or '- (no never row to divide by)'}")
        contrasts = [f"{short_label(row)} {row['ratio_to_never']:.2f}x" for row in group
                     if not is_policy_row(row) and row["ratio_to_never"]]
        if contrasts:
            lines.append(f"{workload} designs vs the two-file store (all under never): {', '.join(contrasts)}")
    cost = doc.get("conversion_cost")
    if cost:
        lines.append(f"under never: VMM {cost['vmm_us_per_conversion']:.1f} µs per conversion = "
                     f"{cost['ratio']:.2f}x a bare exit round trip ({cost['exit_roundtrip_us']:.1f} µs)")
        lines.append(f"conversion round trip, guest to guest: {cost['conversion_roundtrip_us']:.1f} µs = "
                     f"{1e6 / cost['conversion_roundtrip_us']:,.0f}/s ({cost['conversions']:,} measured)")
    errors = sum((run.get("data_errors") or 0) + (run.get("dma_errors") or 0) for run in doc["runs"])
    lines.append(f"data errors across all runs: {errors}")
    return lines


def print_result(console, doc: dict, fmt: str = "table", wide: bool = False) -> None:
    """What ``privmem bench`` and ``privmem report`` print: the table and its headline, or
    the document in another format (text formats are printed as they are, never wrapped)."""
    if fmt == "table":
        console.print(table(doc, wide))
        for line in headline(doc):
            console.print(line)                     # wrapped at words to the table's width (80 in a pipe)
    else:
        print(render(doc, fmt), file=console.file)


# -- the plot ---------------------------------------------------------------------------

def best_run(doc: dict, row: dict) -> dict | None:
    """The saved run a summary row reports (its fastest round)."""
    runs = [run for run in doc["runs"] if (run.get("workload"), run.get("policy"), run.get("tracking", "store"),
                                           run.get("backing") or "two-file") == row_key(row)]
    return min(runs, key=lambda run: run.get("wall_s", float("inf"))) if runs else None


def plot_title(doc: dict) -> str:
    """The settings a figure stands for, so it can be read away from its JSON."""
    host = doc.get("host") or {}
    facts = ", ".join(str(value) for value in (host.get("kernel"), host.get("kvm_module"), host.get("cpu_model"))
                      if value) or "host not recorded"
    return f"{title(doc)}\nhost: {facts}; privmem {doc.get('privmem_version') or '?'}"


def _ratio_panel(axes, doc: dict, groups: list[list[dict]]) -> None:
    """One bar per row label (the policies, then the contrasts: memslot splitting, in-place)
    per workload, up to its best round; its whisker up to its slowest round."""
    categories = list(doc["requested"]["policies"])
    categories += [name for name in dict.fromkeys(label(row) for row in doc["summary"]) if name not in categories]
    width = 0.8 / max(len(groups), 1)
    for index, group in enumerate(groups):
        by_label = {label(row): row for row in group}
        ratios = [(by_label.get(name) or {}).get("ratio_to_never") or 0 for name in categories]
        slowest = [ratio * ((by_label.get(name) or {}).get("spread") or 0) for name, ratio in zip(categories, ratios)]
        axes.bar([k + index * width for k in range(len(categories))], ratios, width, label=group[0]["workload"],
                 yerr=[[0] * len(ratios), slowest], capsize=2, error_kw={"linewidth": 0.8})
    axes.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    axes.set_xticks([k + width * (len(groups) - 1) / 2 for k in range(len(categories))],
                    [name.replace(", ", "\n") for name in categories], fontsize=8)
    axes.set_ylabel("time / time under never\n(bar: best round; whisker: slowest)")
    axes.set_title("Guest run time per discard policy and design (no bar: no never row, or not run)", fontsize=10)
    axes.legend(fontsize=8)


def _timeline_panel(axes, doc: dict, group: list[dict]) -> None:
    """One workload's best rounds over time, per policy: the kernel's measured double
    allocation (solid, with its samples) and the engine's books (dotted steps)."""
    highest = 1.0
    for row in group:
        run = best_run(doc, row)
        if not is_policy_row(row) or not run or not run.get("timeline"):
            continue
        points = run["timeline"]
        kernel = [(point["t_s"], point["double_alloc_kernel_bytes"] / MiB) for point in points
                  if point["double_alloc_kernel_bytes"] is not None]
        books = [point["held_books_bytes"] / MiB for point in points]
        highest = max(highest, *books, *(value for _, value in kernel))
        (line,) = axes.plot(*zip(*kernel), marker="o", markersize=3, label=f"{row['policy']} (kernel)") \
            if kernel else axes.plot([], [], label=row["policy"])
        axes.step([point["t_s"] for point in points], books, where="post", linestyle=":", linewidth=1,
                  color=line.get_color(), label=f"{row['policy']} (books)")
    budget = next((row["budget_bytes"] for row in group if row.get("budget_bytes")), None)
    if budget:
        axes.axhline(budget / MiB, color="red", linewidth=0.8, linestyle="--", label="lazy/adaptive budget")
    axes.set_xlabel("seconds into the run")
    axes.set_ylabel("MiB (solid: double allocation\nthe kernel measured; dotted: books)")
    axes.set_title(f"{group[0]['workload']}: double allocation over time", fontsize=10)
    axes.set_yscale("symlog", linthresh=1)
    axes.set_ylim(0, highest * 2)
    axes.legend(fontsize=6, ncol=2)


def plot(doc: dict, path: str) -> None:
    """The ratio panel across the top; under it, one timeline panel per workload."""
    groups = grouped(doc)
    columns = max(len(groups), 1)
    with png(path, figsize=(max(10.0, 5.5 * columns), 9.5)) as fig:
        grid = fig.add_gridspec(2, columns)
        _ratio_panel(fig.add_subplot(grid[0, :]), doc, groups)
        for index, group in enumerate(groups):
            _timeline_panel(fig.add_subplot(grid[1, index]), doc, group)
        fig.suptitle(plot_title(doc), fontsize=10)


__all__ = ["COLUMNS", "FORMATS", "cells", "csv_text", "headline", "load", "markdown", "plot",
           "print_result", "render", "table", "title", "upgrade"]
