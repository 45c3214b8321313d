"""``privmem trace``: generate, import and inspect trace files."""

from __future__ import annotations

import json
import sys

from . import arguments as a
from .shared import add_guest, check_inputs, check_outputs, naming_file

IMPORT_CLEAN, IMPORT_LOST = 0, 3
IMPORT_EPILOG = f"""examples:
  privmem trace import --from qemu-log qemu.log -o guest.jsonl
  privmem trace import --from trace-cmd report.txt -o guest.jsonl --memory 16G
  privmem trace import --from perf-script perf.txt -o guest.jsonl --strict

exit status:
  {IMPORT_CLEAN}  every conversion the recording holds is in the trace (lines of other
     events and other output are skipped and counted; they lose nothing)
  {IMPORT_LOST}  the trace is written, but something did not reach it: a malformed line,
     a conversion outside the guest's RAM, or events the tracer itself dropped
     (each is reported on stderr as FILE:LINE: message)
  2  nothing is written: the file cannot be read, an option is wrong, or with
     --strict the first line that would lose something

docs/traces.md says how to record each kind from QEMU and from the host kernel."""


def cmd_trace_import(args) -> int:
    from ..workload import import_file

    check_inputs(args, "file")
    check_outputs(args, "output")

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
    from ..workload.stats import trace_stats

    check_inputs(args, "file")
    with naming_file(args.file):
        stats = trace_stats(args.file, flip_ms=args.flip_ms)
    print(json.dumps(stats.as_dict(), indent=2) if args.json else "\n".join(stats.format()))
    return 0


def cmd_trace_generate(args) -> int:
    from ..workload import generate, write_trace

    check_outputs(args, "output")
    trace = generate(args.workload, memory=args.memory or (1 << 30), vcpus=args.vcpus or 1, seed=args.seed or 0,
                     scale=args.scale or 1.0, layout=args.layout)
    write_trace(trace, args.output)
    print(f"{len(trace.ops):,} ops written to {args.output}")
    return 0


def add_parsers(commands) -> None:
    from ..memmap import LAYOUTS
    from ..ops import TRACE_MAX_VCPUS
    from ..workload import IMPORTERS, WORKLOADS
    from ..workload.stats import DEFAULT_FLIP_MS
    from .shared import guest_limits

    trace = commands.add_parser("trace", help="generate, import (QEMU, trace-cmd, perf) and inspect traces",
                                description="Trace files: privmem trace v1, JSON Lines (docs/traces.md).")
    kinds = trace.add_subparsers(dest="trace_kind", required=True, metavar="{generate,import,stats}")

    gen = kinds.add_parser("generate", help="write a generated workload as a trace file",
                           epilog="example:\n  privmem trace generate scatter --memory 1T --layout q35 -o big.jsonl")
    gen.add_argument("workload", type=a.choice("workload", WORKLOADS), metavar="WORKLOAD",
                     help=f"{', '.join(WORKLOADS)} (privmem list workloads says what each does)")
    gen.add_argument("-o", "--output", metavar=a.FILE, required=True, help="the trace to write (atomically)")
    add_guest(gen, memory_default="1G", backend=False, max_vcpus=TRACE_MAX_VCPUS)

    imp = kinds.add_parser("import", help="convert a recording (QEMU log, trace-cmd report, perf script) into "
                                          "a privmem trace", epilog=IMPORT_EPILOG)
    imp.add_argument("--from", dest="source_format", type=a.choice("from", IMPORTERS), required=True,
                     metavar=a.braces(IMPORTERS),
                     help="the recording's kind: " + "; ".join(f"{name}: {summary}"
                                                              for name, summary in IMPORTERS.summaries.items()))
    imp.add_argument("file", metavar=a.FILE, help="the recording (gzip, bzip2 and xz files are read as they are)")
    imp.add_argument("-o", "--output", metavar=a.FILE, required=True, help="the trace to write (atomically)")
    imp.add_argument("--memory", type=a.size("memory", maximum=guest_limits()[0]), metavar=a.SIZE,
                     help="guest RAM (default: the smallest that holds the highest address converted)")
    imp.add_argument("--layout", type=a.choice("layout", LAYOUTS), metavar=a.braces(LAYOUTS),
                     help="guest-physical layout (default: q35 when anything lies above 4 GiB, else flat)")
    imp.add_argument("--vcpus", type=a.count("vcpus", maximum=TRACE_MAX_VCPUS), metavar=a.COUNT,
                     help="vCPUs in the trace; threads beyond N share vCPUs round-robin (default: one per "
                          "vCPU thread the recording shows)")
    imp.add_argument("--strict", action="store_true",
                     help="stop at the first line that would lose something (default: report it and go on)")
    imp.add_argument("--json", action="store_true", help="print the summary as JSON (default: text)")
    imp.set_defaults(handler=cmd_trace_import)

    stats = kinds.add_parser("stats", help="what a trace does: conversions, flip-flops, sizes, layout, vCPUs")
    stats.add_argument("file", metavar=a.FILE, help="a privmem trace v1 file")
    stats.add_argument("--flip-ms", type=a.number("flip-ms", maximum=3_600_000, unit=" ms"), metavar="MS",
                       default=DEFAULT_FLIP_MS,
                       help="a page converted back within MS milliseconds counts as a flip-flop (default: "
                            "%(default)g, the lazy policy's max age); needs event times")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON (default: text)")
    stats.set_defaults(handler=cmd_trace_stats)
    gen.set_defaults(handler=cmd_trace_generate)


__all__ = ["IMPORT_CLEAN", "IMPORT_LOST", "add_parsers"]
