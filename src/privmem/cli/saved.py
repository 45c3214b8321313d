"""``privmem report`` and ``privmem compare``: saved bench results, re-read."""

from __future__ import annotations


from . import arguments as a
from .output import console, note
from .shared import check_outputs


def cmd_report(args) -> int:
    from ..bench import report

    check_outputs(args, "plot_out")
    doc = report.load(args.file)
    report.print_result(console(args.wide), doc, args.format, wide=args.wide)
    if args.plot_out:
        report.plot(doc, args.plot_out)
        note(f"plot written to {args.plot_out}")
    return 0


def cmd_compare(args) -> int:
    from ..bench import compare, report

    check_outputs(args, "plot_out")
    first, second = report.load(args.a, "A"), report.load(args.b, "B")
    comparison = compare.compare(first, second, args.a, args.b)
    for warning in comparison.warnings:
        note(f"warning: {warning}")
    out = console(args.wide)
    out.print(compare.table(comparison, wide=args.wide))
    out.print(compare.summary(comparison))
    if args.plot_out:
        compare.plot(comparison, args.plot_out)
        note(f"plot written to {args.plot_out}")
    return 0


def add_parsers(commands) -> None:
    from ..bench.report import FORMATS

    report = commands.add_parser("report", help="re-print and re-plot a saved bench result",
                                 epilog="examples:\n  privmem report privmem-bench.json\n  privmem report "
                                        "privmem-bench.json --format csv > rows.csv")
    report.add_argument("file", metavar=a.FILE, help="a JSON file privmem bench wrote (any privmem version)")
    report.add_argument("--format", type=a.choice("format", FORMATS), metavar=a.braces(FORMATS), default="table",
                        help="table: what privmem bench printed; markdown, csv or json (default: %(default)s)")
    report.add_argument("--wide", action="store_true", help="every column (the default table fits 80 columns)")
    report.add_argument("--plot-out", metavar=a.PNG, help="also draw the bench's plot into PNG")
    report.set_defaults(handler=cmd_report)

    compare = commands.add_parser("compare", help="two saved bench results side by side: B/A and the noise",
                                  epilog="example:\n  privmem compare before.json after.json --plot-out ab.png")
    compare.add_argument("a", metavar="A", help="the baseline bench JSON")
    compare.add_argument("b", metavar="B", help="the bench JSON to compare with it")
    compare.add_argument("--wide", action="store_true", help="every column (the default table fits 80 columns)")
    compare.add_argument("--plot-out", metavar=a.PNG, help="also draw B/A per row with its noise into PNG")
    compare.set_defaults(handler=cmd_compare)


__all__ = ["add_parsers"]
