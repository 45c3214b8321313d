"""The `privmem` command: argument parsing and printing only; the work lives in the layers."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from .errors import InvalidArgument, PrivmemError
from .results import json_writer, write_json, write_outputs


def _console():
    from rich.console import Console

    # Tables are read in CI logs and pipes as often as on terminals: keep them whole there.
    return Console(width=None if sys.stdout.isatty() else 190)


def _argument(field: str, parse_value):
    """An argparse type from a parser that raises InvalidArgument (its message becomes argparse's)."""
    def parse(text: str):
        try:
            return parse_value(text)
        except InvalidArgument as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = field
    return parse


def _size(field: str):
    from .units import parse_size
    return _argument(field, lambda text: parse_size(text, field))


def _positive_int(field: str):
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field}={text!r}: not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{field}={value}: must be at least 1")
        return value
    parse.__name__ = field
    return parse


def _choice(field: str, choices):
    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"{field}={text!r}: unknown (choose from {', '.join(choices)})")
        return text
    parse.__name__ = field
    return parse


def _choices(field: str, choices):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        for name in names:
            _choice(field, choices)(name)
        if not names:
            raise argparse.ArgumentTypeError(f"{field}={text!r}: empty list")
        return names
    parse.__name__ = field
    return parse


def _report(console, bench, results, args, **settings) -> None:
    """A benchmark module's table, its headline figures, and its JSON file (in the envelope,
    as ``bench-KIND``)."""
    from .results import document, requested

    console.print(bench.table(results))
    for line in bench.headline(results):
        console.print(line)
    doc = document(f"bench-{args.bench_kind}", requested(**settings), {"results": bench.as_json(results)}, args.argv)
    write_json(args.json_out, doc)
    console.print(f"JSON written to {args.json_out}")


def _check_outputs(args, *fields: str) -> None:
    """Fail before a long run, not after it, on an output path that cannot be written."""
    from .results import check_writable

    for field in fields:
        if getattr(args, field) is not None:
            check_writable(field.replace("_", "-"), getattr(args, field))


# -- bench ------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .bench import boot, report as bench_report

    _check_outputs(args, "json_out", "plot_out")
    overrides = {k: v for k, v in (("workloads", args.workloads), ("policies", args.policies),
                                   ("memory", args.memory), ("vcpus", args.vcpus), ("backend", args.backend),
                                   ("repeat", args.repeat), ("scale", args.scale), ("layout", args.layout))
                 if v is not None}
    if args.no_memslots:
        overrides["memslots"] = False
    if args.no_in_place:
        overrides["in_place"] = False
    config = boot.BenchConfig.quick(**overrides) if args.quick else boot.BenchConfig(**overrides)
    console = _console()
    backend = config.backend or boot.default_backend()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=not console.is_terminal) as progress:
        task = progress.add_task(f"privmem bench ({backend})", total=boot.planned_runs(config, backend))
        report = boot.run(config, progress=lambda text: progress.update(task, advance=1, description=text)
                          if text else None)
    doc = report.as_json(args.argv)
    bench_report.print_result(console, doc, args.format)
    write_outputs((args.json_out, json_writer(doc)), (args.plot_out, lambda path: bench_report.plot(doc, path)))
    console.print(f"JSON written to {args.json_out}; plot written to {args.plot_out}")
    return 1 if any(r.data_errors or r.dma_errors for r in report.runs) else 0


def cmd_bench_store(args) -> int:
    from .bench import store

    console = _console()
    with console.status("measuring") as status:
        results = store.run(args.guests, include_pagemap=not args.no_pagemap,
                            progress=lambda what: status.update(f"measuring {what}"))
    _report(console, store, results, args, guests=args.guests, pagemap=not args.no_pagemap)
    return 0


def cmd_bench_parse(args) -> int:
    from .bench import parse

    _report(_console(), parse, parse.run(scale=args.scale), args, scale=args.scale)
    return 0


def cmd_bench_player(args) -> int:
    from .bench import player

    _report(_console(), player, player.run(), args, backend="kvm")
    return 0


def cmd_bench_flipflop(args) -> int:
    from .bench import flipflop

    _report(_console(), flipflop, flipflop.run(args.flips), args, memory=flipflop.MEMORY, flips=args.flips)
    return 0


# -- report, compare, advise ------------------------------------------------------------

def cmd_report(args) -> int:
    from .bench import report

    _check_outputs(args, "plot_out")
    doc = report.load(args.file)
    report.print_result(_console(), doc, args.format)
    if args.plot_out:
        report.plot(doc, args.plot_out)
        print(f"plot written to {args.plot_out}", file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from .bench import compare, report

    _check_outputs(args, "plot_out")
    a, b = report.load(args.a, "A"), report.load(args.b, "B")
    comparison = compare.compare(a, b, args.a, args.b)
    for warning in comparison.warnings:
        print(f"privmem: warning: {warning}", file=sys.stderr)
    console = _console()
    console.print(compare.table(comparison))
    console.print(compare.summary(comparison))
    if args.plot_out:
        compare.plot(comparison, args.plot_out)
        console.print(f"plot written to {args.plot_out}")
    return 0


def cmd_advise(args) -> int:
    from .bench import advise

    if args.trace:
        given = [name for name in ("memory", "vcpus", "layout", "scale", "seed") if getattr(args, name) is not None]
        if given:
            raise InvalidArgument(given[0], getattr(args, given[0]), "a trace sets its own guest; give it with "
                                  "--workload only", hex_value=False)
    guest = {name: getattr(args, name) for name in ("memory", "vcpus", "layout", "scale", "seed", "budgets", "ages")
             if getattr(args, name) is not None}
    config = advise.AdviseConfig(workload=None if args.trace else args.workload, trace=args.trace,
                                 backend=args.backend, repeat=args.repeat, tolerance=args.tolerance, **guest)
    config.check()
    _check_outputs(args, "json_out", "plot_out")
    console = _console()
    with console.status("privmem advise") as status:
        result = advise.run(config, progress=lambda done, total, text: status.update(
            f"privmem advise: run {done + 1}/{total}: {text}"))
    doc = result.as_json(args.argv)
    console.print(advise.table(doc))
    for line in advise.headline(doc):
        console.print(line)
    write_outputs((args.json_out, json_writer(doc)), (args.plot_out, lambda path: advise.plot(doc, path)))
    console.print(f"JSON written to {args.json_out}; plot written to {args.plot_out}")
    return 1 if any(row["data_errors"] or row["dma_errors"] for row in doc["rows"]) else 0


# -- run, trace, info -------------------------------------------------------------------

def cmd_run(args) -> int:
    from .runner import compile_trace, open_trace, run_document, run_program
    from .workload import generate

    if args.trace:
        program, name, warnings = open_trace(args.trace, args.timing)
        for warning in warnings:
            print(f"privmem: {args.trace}: {warning}", file=sys.stderr)
    else:
        trace = generate(args.workload or "boot", memory=args.memory or (1 << 30), vcpus=args.vcpus or 1,
                         seed=args.seed, scale=args.scale or 1.0, layout=args.layout)
        program, name = compile_trace(trace, args.timing), trace.name
    with program:
        result = run_program(program, name, args.policy, args.backend, tracking=args.tracking, backing=args.backing)
    if args.json:
        seed, scale = (None, None) if args.trace else (args.seed, args.scale or 1.0)
        print(json.dumps(run_document(result, args.argv, scale=scale, seed=seed, trace=args.trace), indent=2))
    else:
        from .units import format_size
        print(f"{result.workload} on {result.backend} ({format_size(result.memory)}, {result.vcpus} vCPU), "
              f"policy {result.policy}, tracking {result.tracking}: {result.wall_s:.3f} s, "
              f"{result.conversions:,} conversions ({result.pages_converted:,} pages), {result.exits:,} exits, "
              f"{result.discards:,} discards ({format_size(result.discarded_bytes)}), peak held "
              f"{format_size(result.peak_double_alloc_bytes)}, peak double allocation (kernel) "
              f"{format_size(result.peak_double_alloc_measured_bytes)}, peak host memory "
              f"{format_size(result.peak_host_bytes)}, data errors {result.data_errors + result.dma_errors}")
    return 1 if result.data_errors or result.dma_errors else 0


IMPORT_CLEAN, IMPORT_LOST = 0, 3
IMPORT_EXIT_CODES = f"""exit status:
  {IMPORT_CLEAN}  every conversion the recording holds is in the trace (lines of other events
     and other output are skipped and counted; they lose nothing)
  {IMPORT_LOST}  the trace is written, but something did not reach it: a malformed line, a
     conversion outside the guest's RAM, or events the tracer itself dropped (each is
     reported on stderr as FILE:LINE: message)
  2  nothing is written: the file cannot be read, an option is wrong, or with --strict the
     first line that would lose something"""


def cmd_trace_import(args) -> int:
    from .workload import import_file

    def problem(line: int, message: str) -> None:
        print(f"{args.file}:{line}: {message}", file=sys.stderr)

    report = import_file(args.source_format, args.file, args.output, memory=args.memory, layout=args.layout,
                         vcpus=args.vcpus, strict=args.strict, on_problem=problem)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(report.format()))
        print(f"  written: {args.output} ({report.conversions:,} ops)")
    return IMPORT_LOST if report.lost else IMPORT_CLEAN


def cmd_trace_stats(args) -> int:
    from .workload.stats import trace_stats

    stats = trace_stats(args.file, flip_ms=args.flip_ms)
    print(json.dumps(stats.as_dict(), indent=2) if args.json else "\n".join(stats.format()))
    return 0


def cmd_trace_generate(args) -> int:
    from .workload import generate, write_trace

    trace = generate(args.workload, memory=args.memory, vcpus=args.vcpus, seed=args.seed, scale=args.scale,
                     layout=args.layout)
    write_trace(trace, args.output)
    print(f"{len(trace.ops):,} ops written to {args.output}")
    return 0


def cmd_soak(args) -> int:
    from .soak import format_soak, run_soak, soak_document

    result = run_soak(args.seconds, vcpus=args.vcpus, memory=args.memory, policy=args.policy,
                      backend=args.backend, seed=args.seed, data_check=args.data_check, backing=args.backing)
    print(json.dumps(soak_document(result, args.seconds, args.argv), indent=2) if args.json else format_soak(result))
    failed = any(result[key] for key in ("data_errors", "dma_errors", "psc_errors", "state_errors"))
    return 1 if failed else 0


def cmd_info(args) -> int:
    from .kvm.probe import format_info, probe

    info = probe()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _list_of(field: str, parse_one, check):
    """A comma list parsed item by item, then checked whole (bounds, duplicates)."""
    return _argument(field, lambda text: check(tuple(parse_one(item.strip()) for item in text.split(",")
                                                     if item.strip())))


def _fraction(field: str):
    """0.02 or 2%."""
    def parse_value(text: str) -> float:
        try:
            return float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise InvalidArgument(field, text, "not a number (e.g. 0.02 or 2%)", hex_value=False) from None
    return _argument(field, parse_value)


def build_parser() -> argparse.ArgumentParser:
    from .bench.advise import (DEFAULT_REPEAT, DEFAULT_TOLERANCE, MAX_AGES, MAX_BUDGETS, MAX_REPEAT, check_ages,
                               check_budgets, parse_age)
    from .bench.report import FORMATS as REPORT_FORMATS
    from .convert import POLICIES
    from .memmap import LAYOUTS
    from .runner import BACKENDS, TRACKINGS
    from .units import parse_size
    from .vmm.machine import BACKINGS
    from .vmm.program import TIMINGS
    from .workload import IMPORTERS, WORKLOADS
    from .workload.stats import DEFAULT_FLIP_MS

    parser = argparse.ArgumentParser(prog="privmem", description="fd-based private memory for confidential "
                                     "VMs on KVM: conversion tracking, discard policies, benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="the main job: the seed's boot experiment under every policy")
    bench.add_argument("--quick", action="store_true", help="a reduced run (256 MiB guest, 2 rounds), under a minute")
    bench.add_argument("--workloads", type=_choices("workloads", WORKLOADS), help="comma list (default boot,ovmf-dma)")
    bench.add_argument("--policies", type=_choices("policies", POLICIES), help="comma list (default all)")
    bench.add_argument("--memory", type=_size("memory"), help="guest memory (default 1G)")
    bench.add_argument("--vcpus", type=_positive_int("vcpus"))
    bench.add_argument("--backend", type=_choice("backend", BACKENDS), help="default: kvm where /dev/kvm works")
    bench.add_argument("--repeat", type=_positive_int("repeat"), help="interleaved rounds (default 5)")
    bench.add_argument("--scale", type=float, help="workload scale factor")
    bench.add_argument("--no-memslots", action="store_true", help="skip the memslot-splitting contrast run")
    bench.add_argument("--no-in-place", action="store_true", help="skip the in-place backing's contrast run")
    bench.add_argument("--layout", type=_choice("layout", LAYOUTS), help="guest memory layout (default flat)")
    bench.add_argument("--json-out", default="privmem-bench.json")
    bench.add_argument("--plot-out", default="privmem-bench.png")
    bench.add_argument("--format", type=_choice("format", REPORT_FORMATS), default="table",
                       help=f"how to print the table: {', '.join(REPORT_FORMATS)} (default table)")
    bench.set_defaults(handler=cmd_bench)
    kinds = bench.add_subparsers(dest="bench_kind")
    store = kinds.add_parser("store", help="the attribute store vs a bitmap and a per-page map")
    store.add_argument("--guests", type=_choices("guests", ("1GiB", "64GiB", "1TiB", "2TiB")), default=("1GiB", "64GiB", "1TiB", "2TiB"))
    store.add_argument("--no-pagemap", action="store_true", help="skip the per-page map")
    store.add_argument("--json-out", default="privmem-bench-store.json")
    store.set_defaults(handler=cmd_bench_store)
    flip = kinds.add_parser("flipflop", help="one page converted back and forth under every policy")
    flip.add_argument("--flips", type=_positive_int("flips"), default=10_000, help="round trips (default 10,000)")
    flip.add_argument("--json-out", default="privmem-bench-flipflop.json")
    flip.set_defaults(handler=cmd_bench_flipflop)
    parse = kinds.add_parser("parse", help="trace parsing rate: msgspec (the reader) vs the standard library")
    parse.add_argument("--scale", type=float, default=5.0, help="size of the random trace parsed (default 5: 50k ops)")
    parse.add_argument("--json-out", default="privmem-bench-parse.json")
    parse.set_defaults(handler=cmd_bench_parse)
    player = kinds.add_parser("player", help="guest instructions per op in the trace player (kvm)")
    player.add_argument("--json-out", default="privmem-bench-player.json")
    player.set_defaults(handler=cmd_bench_player)

    run = commands.add_parser("run", help="one workload or trace under one policy")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--workload", type=_choice("workload", WORKLOADS))
    source.add_argument("--trace", help="a privmem trace v1 file (JSON Lines)")
    run.add_argument("--policy", type=_choice("policy", POLICIES), default="never")
    run.add_argument("--memory", type=_size("memory"))
    run.add_argument("--vcpus", type=_positive_int("vcpus"))
    run.add_argument("--backend", type=_choice("backend", BACKENDS))
    run.add_argument("--tracking", type=_choice("tracking", TRACKINGS), default="store")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--scale", type=float)
    run.add_argument("--layout", type=_choice("layout", LAYOUTS), help="guest memory layout (default flat)")
    run.add_argument("--backing", type=_choice("backing", BACKINGS), default="two-file",
                     help="two-file (guest_memfd + memfd, the policy decides discards) or in-place (one "
                          "guest_memfd for both views: nothing discarded)")
    run.add_argument("--timing", type=_choice("timing", TIMINGS), default="none",
                     help="recorded: replay the gaps between a trace's recorded events")
    run.add_argument("--json", action="store_true")
    run.set_defaults(handler=cmd_run)

    trace = commands.add_parser("trace", help="make, import or inspect traces")
    trace_kinds = trace.add_subparsers(dest="trace_kind", required=True)
    imp = trace_kinds.add_parser("import", help="convert a recording (QEMU log, trace-cmd report, perf script) "
                                 "into a privmem trace", epilog=IMPORT_EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("--from", dest="source_format", type=_choice("from", IMPORTERS), required=True,
                     metavar="{" + ",".join(IMPORTERS) + "}",
                     help="the recording's kind: " + "; ".join(f"{name}: {entry.summary}"
                                                              for name, entry in IMPORTERS.items()))
    imp.add_argument("file", metavar="FILE", help="the recording (gzip, bzip2 and xz files are read as they are)")
    imp.add_argument("-o", "--output", metavar="FILE", required=True, help="the trace to write (atomically)")
    imp.add_argument("--memory", type=_size("memory"), metavar="SIZE",
                     help="guest RAM (default: the smallest that holds the highest address converted)")
    imp.add_argument("--layout", type=_choice("layout", LAYOUTS), metavar="{" + ",".join(LAYOUTS) + "}",
                     help="guest-physical layout (default: q35 when anything lies above 4 GiB, else flat)")
    imp.add_argument("--vcpus", type=_positive_int("vcpus"), metavar="N",
                     help="vCPUs in the trace; threads beyond N share vCPUs round-robin (default: one per "
                          "vCPU thread the recording shows)")
    imp.add_argument("--strict", action="store_true",
                     help="stop at the first line that would lose something (default: report it and go on)")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON (default: text)")
    imp.set_defaults(handler=cmd_trace_import)
    stats = trace_kinds.add_parser("stats", help="what a trace does: conversions, flip-flops, sizes, layout, vCPUs")
    stats.add_argument("file", metavar="FILE", help="a privmem trace v1 file")
    stats.add_argument("--flip-ms", type=float, metavar="N", default=DEFAULT_FLIP_MS,
                       help="a page converted back within N ms counts as a flip-flop (default: %(default)g, "
                            "the lazy policy's max age); needs event times")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON (default: text)")
    stats.set_defaults(handler=cmd_trace_stats)
    gen = trace_kinds.add_parser("generate", help="write a generated workload as a trace file")
    gen.add_argument("workload", type=_choice("workload", WORKLOADS))
    gen.add_argument("-o", "--output", required=True)
    gen.add_argument("--memory", type=_size("memory"), default=1 << 30)
    gen.add_argument("--vcpus", type=_positive_int("vcpus"), default=1)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--scale", type=float, default=1.0)
    gen.add_argument("--layout", type=_choice("layout", LAYOUTS), help="guest memory layout (default flat)")
    gen.set_defaults(handler=cmd_trace_generate)

    soak = commands.add_parser("soak", help="random conversions and DMA across vCPUs, verified at the end")
    soak.add_argument("--seconds", type=float, default=10.0)
    soak.add_argument("--vcpus", type=_positive_int("vcpus"), default=2)
    soak.add_argument("--memory", type=_size("memory"), default=64 << 20)
    soak.add_argument("--policy", type=_choice("policy", POLICIES),
                      help="discard policy (default lazy; never with --backing in-place)")
    soak.add_argument("--backing", type=_choice("backing", BACKINGS), default="two-file",
                      help="two-file (guest_memfd + memfd) or in-place (one guest_memfd for both views)")
    soak.add_argument("--backend", type=_choice("backend", BACKENDS))
    soak.add_argument("--seed", type=int, default=0)
    soak.add_argument("--data-check", type=_choice("data-check", ("full", "sampled")), default="full",
                      help="guest data checks: every byte, or a sample per page (faster on emulated guests)")
    soak.add_argument("--json", action="store_true")
    soak.set_defaults(handler=cmd_soak)

    report = commands.add_parser("report", help="re-print and re-plot a saved bench result")
    report.add_argument("file", metavar="FILE", help="a JSON file privmem bench wrote")
    report.add_argument("--format", type=_choice("format", REPORT_FORMATS), default="table",
                        help=f"{', '.join(REPORT_FORMATS)} (default table: the table privmem bench printed)")
    report.add_argument("--plot-out", metavar="PNG", help="also draw the bench's plot into PNG")
    report.set_defaults(handler=cmd_report)

    compare = commands.add_parser("compare", help="two saved bench results side by side, B/A with the noise")
    compare.add_argument("a", metavar="A", help="the baseline bench JSON")
    compare.add_argument("b", metavar="B", help="the bench JSON to compare with it")
    compare.add_argument("--plot-out", metavar="PNG", help="also draw B/A per row with its noise into PNG")
    compare.set_defaults(handler=cmd_compare)

    advice = commands.add_parser("advise", help="sweep lazy/adaptive budgets and ages; the Pareto front of time "
                                 "against double allocation, and a recommendation")
    source = advice.add_mutually_exclusive_group()
    source.add_argument("--workload", type=_choice("workload", WORKLOADS), default="ovmf-dma",
                        help="a built-in workload (default ovmf-dma)")
    source.add_argument("--trace", metavar="FILE", help="a privmem trace v1 file (its own guest)")
    advice.add_argument("--backend", type=_choice("backend", BACKENDS), help="default: kvm where /dev/kvm works")
    advice.add_argument("--budgets", type=_list_of("budgets", lambda text: parse_size(text, "budgets"),
                                                   check_budgets), metavar="SIZES",
                        help=f"comma list of lazy/adaptive byte budgets, at most {MAX_BUDGETS} (default: 1/4096, "
                             "1/1024, 1/256 and 1/64 of guest memory)")
    advice.add_argument("--ages", type=_list_of("ages", parse_age, check_ages), metavar="AGES",
                        help=f"comma list of lazy max ages (20ms, 0.5s; a bare number is ms), at most {MAX_AGES} "
                             "(default 5ms,20ms,50ms)")
    advice.add_argument("--repeat", type=_positive_int("repeat"), default=DEFAULT_REPEAT,
                        help=f"interleaved rounds per setting, at most {MAX_REPEAT} (default {DEFAULT_REPEAT})")
    advice.add_argument("--tolerance", type=_fraction("tolerance"), default=DEFAULT_TOLERANCE,
                        help="how much slower than never a recommendation may be (default 0.02, i.e. 2%%)")
    advice.add_argument("--memory", type=_size("memory"), help="guest memory for a workload (default 1G)")
    advice.add_argument("--vcpus", type=_positive_int("vcpus"))
    advice.add_argument("--scale", type=float, help="workload scale factor")
    advice.add_argument("--seed", type=int)
    advice.add_argument("--layout", type=_choice("layout", LAYOUTS), help="guest memory layout (default flat)")
    advice.add_argument("--json-out", default="privmem-advise.json")
    advice.add_argument("--plot-out", default="privmem-advise.png")
    advice.set_defaults(handler=cmd_advise)

    info = commands.add_parser("info", help="what this host's KVM offers, probed")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=cmd_info)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so a run stops the way Ctrl-C stops it."""


def _terminate(signum, frame) -> None:
    raise Terminated


def _command(args) -> str:
    kind = getattr(args, "bench_kind", None) or getattr(args, "trace_kind", None)
    return f"privmem {args.command}" + (f" {kind}" if kind else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = ["privmem", *(sys.argv[1:] if argv is None else argv)]   # recorded in every JSON result
    previous = signal.signal(signal.SIGTERM, _terminate) if threading_is_main() else None
    try:
        return args.handler(args)
    except PrivmemError as error:
        print(f"privmem: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"privmem: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        how, code = ("Ctrl-C", 130) if isinstance(stop, KeyboardInterrupt) else ("SIGTERM", 143)
        print(f"{_command(args)} interrupted by {how}: every vCPU stopped, no result written", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def threading_is_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
