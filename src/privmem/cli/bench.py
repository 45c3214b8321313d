"""``privmem bench`` (the main job, and its kinds: store, flipflop, conversion, throughput, parse, player) and
``privmem advise``: commands that run measurements and save them."""

from __future__ import annotations


from ..errors import InvalidArgument
from ..results import json_writer, write_json, write_outputs
from . import arguments as a
from .output import console, progress, resolve_backend
from .shared import TRACE_SETS, add_guest, check_outputs, check_trace_source, naming_file

BENCH_EPILOG = """examples:
  privmem bench                       every policy, boot and ovmf-dma, 1 GiB
  privmem bench --quick               256 MiB, 2 rounds: about 10 s
  privmem bench --memory 16G --layout q35 --vcpus 4
  privmem bench --workloads ovmf-dma --policies never,lazy:budget=8M
  privmem bench --format markdown     the table for a README or a pull request
  privmem report privmem-bench.json --wide      a saved run, every column

Times are each configuration's best of --repeat rounds, run interleaved (round-robin) so the
machine's noise spreads over all of them; "vs never" is the ratio to the two-file never row
of the same workload, and "spread" the (slowest - fastest) / fastest of its rounds."""


def cmd_bench(args) -> int:
    from ..bench import boot, report as bench_report

    check_outputs(args, "json_out", "plot_out")
    overrides = {key: value for key, value in (("workloads", args.workloads), ("policies", args.policies),
                                               ("memory", args.memory), ("vcpus", args.vcpus),
                                               ("repeat", args.repeat), ("scale", args.scale),
                                               ("seed", args.seed), ("layout", args.layout)) if value is not None}
    overrides.update(memslots=not args.no_memslots, in_place=not args.no_in_place)
    overrides["backend"] = resolve_backend(args.backend, "privmem bench")
    config = boot.BenchConfig.quick(**overrides) if args.quick else boot.BenchConfig(**overrides)
    with progress(f"privmem bench ({config.backend})", boot.planned_runs(config, config.backend)) as shown:
        report = boot.run(config, progress=shown.advance)
    doc = report.as_json(args.argv)
    out = console(args.wide)
    bench_report.print_result(out, doc, args.format, wide=args.wide)
    _save(out, args, doc, bench_report.plot)
    return 1 if any(r.data_errors or r.dma_errors for r in report.runs) else 0


def _save(out, args, doc: dict, plot) -> None:
    """The document to ``--json-out`` and ``plot(doc, path)`` to ``--plot-out``, both or
    neither, then where they went."""
    write_outputs((args.json_out, json_writer(doc)), (args.plot_out, lambda path: plot(doc, path)))
    out.print(f"JSON written to {args.json_out}; plot written to {args.plot_out}", soft_wrap=True)


def _report(bench, results, args, **settings) -> None:
    """A benchmark module's table, its headline figures, and its JSON file (in the envelope,
    as ``bench-KIND``)."""
    from ..results import document, requested

    wide = getattr(args, "wide", False)
    out = console(wide)
    out.print(bench.table(results, wide) if wide else bench.table(results))
    for line in bench.headline(results):
        out.print(line)
    doc = document(f"bench-{args.bench_kind}", requested(**settings), {"results": bench.as_json(results)}, args.argv)
    write_json(args.json_out, doc)
    out.print(f"JSON written to {args.json_out}", soft_wrap=True)


def cmd_bench_store(args) -> int:
    from ..bench import store

    check_outputs(args, "json_out")
    with progress("privmem bench store") as shown:
        results = store.run(args.guests, include_pagemap=not args.no_pagemap,
                            progress=lambda what: shown.status(f"measuring {what}"))
    _report(store, results, args, guests=args.guests, pagemap=not args.no_pagemap)
    return 0


def cmd_bench_parse(args) -> int:
    from ..bench import parse

    check_outputs(args, "json_out")
    _report(parse, parse.run(scale=args.scale), args, scale=args.scale)
    return 0


def cmd_bench_player(args) -> int:
    from ..bench import player

    check_outputs(args, "json_out")
    resolve_backend("kvm", "privmem bench player")
    _report(player, player.run(), args, backend="kvm")
    return 0


def cmd_bench_conversion(args) -> int:
    from ..bench import conversion

    check_outputs(args, "json_out")
    resolve_backend("kvm", "privmem bench conversion")
    with progress("privmem bench conversion", conversion.planned_runs(args.repeat)) as shown:
        report = conversion.run(args.flips, args.repeat, progress=shown.advance)
    _report(conversion, report, args, backend="kvm", flips=args.flips, repeat=args.repeat)
    return 0


def cmd_bench_throughput(args) -> int:
    from ..bench import throughput

    check_outputs(args, "json_out")
    resolve_backend("kvm", "privmem bench throughput")
    runs = throughput.planned_runs(args.vcpus_list, args.policies, args.repeat, punches=not args.no_punches)
    with progress("privmem bench throughput", runs) as shown:
        results = throughput.run(args.vcpus_list, args.policies, args.conversions, args.repeat,
                                 progress=shown.advance, punches=not args.no_punches)
    _report(throughput, results, args, backend="kvm", vcpus=list(args.vcpus_list), policies=list(args.policies),
            repeat=args.repeat, conversions=args.conversions, memory=throughput.MEMORY)
    return 0


def cmd_bench_flipflop(args) -> int:
    from ..bench import flipflop

    check_outputs(args, "json_out")
    _report(flipflop, flipflop.run(args.flips), args, memory=flipflop.MEMORY, flips=args.flips)
    return 0


def cmd_advise(args) -> int:
    from ..bench import advise

    check_trace_source(args, "; drop the option, or sweep a workload with --workload")
    guest = {name: getattr(args, name) for name in (*TRACE_SETS, "budgets", "ages") if getattr(args, name) is not None}
    backend = resolve_backend(args.backend, "privmem advise")
    config = advise.AdviseConfig(workload=None if args.trace else args.workload, trace=args.trace,
                                 backend=backend, repeat=args.repeat, tolerance=args.tolerance, **guest)
    config.check()
    check_outputs(args, "json_out", "plot_out")
    with progress("privmem advise") as shown, naming_file(args.trace):
        result = advise.run(config, progress=lambda done, total, text: shown.status(
            f"run {done + 1}/{total}: {text}"))
    doc = result.as_json(args.argv)
    out = console(args.wide)
    out.print(advise.table(doc, args.wide))
    for line in advise.headline(doc):
        out.print(line)
    _save(out, args, doc, advise.plot)
    return 1 if any(row["data_errors"] or row["dma_errors"] for row in doc["rows"]) else 0


def _check_vcpu_counts(counts: tuple[int, ...]) -> tuple[int, ...]:
    if not counts or counts[0] != 1 or len(set(counts)) != len(counts):
        raise InvalidArgument("vcpus", ",".join(map(str, counts)), "give distinct counts, 1 first (the ratios' "
                              "base), e.g. 1,2", hex_value=False)
    return counts


def _bench_kind(kinds, name: str, handler, **parser_args):
    """One ``privmem bench KIND`` parser, with its own saved result (privmem-bench-KIND.json)."""
    kind = kinds.add_parser(name, **parser_args)
    kind.add_argument("--json-out", metavar=a.FILE, default=f"privmem-bench-{name}.json",
                      help="the saved result (default: %(default)s)")
    kind.set_defaults(handler=handler)
    return kind


def _add_repeat(kind) -> None:
    from ..bench.boot import MAX_REPEAT

    kind.add_argument("--repeat", type=a.count("repeat", maximum=MAX_REPEAT), metavar=a.COUNT, default=3,
                      help="interleaved rounds (default: %(default)s)")


def add_parsers(commands) -> None:
    from ..bench import advise, boot, conversion, flipflop, store, throughput
    from ..bench.report import FORMATS
    from ..convert import POLICIES
    from ..workload import WORKLOADS
    from .shared import policy_names

    bench = commands.add_parser(
        "bench", help="the main job: the UPM thread's boot experiment under every discard policy",
        description="Run workloads under every discard policy side by side on one guest, with memslot "
                    "splitting and in-place conversion as contrasts; print the table, save JSON and a plot.",
        epilog=BENCH_EPILOG)
    bench.add_argument("--quick", action="store_true",
                       help="a reduced run: 256 MiB guest, 2 rounds, a quarter of the work (about 10 s; the "
                            "full bench takes 1-2 min)")
    bench.add_argument("--workloads", type=a.choices("workloads", WORKLOADS), metavar="NAMES",
                       help=f"comma list of {a.braces(WORKLOADS)} (default: {','.join(boot.DEFAULT_WORKLOADS)})")
    bench.add_argument("--policies", type=policy_names("policies"), metavar="SPECS",
                       help=f"comma list of policies {a.braces(POLICIES)}, each with its parameters if "
                            "wanted (lazy:budget=8M); without never, ratios show '-' (default: all)")
    add_guest(bench, memory_default="1G; 256M with --quick")
    bench.add_argument("--repeat", type=a.count("repeat", maximum=boot.MAX_REPEAT), metavar=a.COUNT,
                       help=f"interleaved rounds per configuration, at most {boot.MAX_REPEAT} "
                            "(default: 5, 2 with --quick)")
    bench.add_argument("--no-memslots", action="store_true", help="skip the memslot-splitting contrast (kvm only)")
    bench.add_argument("--no-in-place", action="store_true", help="skip the in-place backing's contrast")
    bench.add_argument("--json-out", metavar=a.FILE, default="privmem-bench.json",
                       help="the saved result, every round (default: %(default)s)")
    bench.add_argument("--plot-out", metavar=a.PNG, default="privmem-bench.png",
                       help="the plot (default: %(default)s)")
    bench.add_argument("--format", type=a.choice("format", FORMATS), metavar=a.braces(FORMATS), default="table",
                       help="how to print the result (default: %(default)s)")
    bench.add_argument("--wide", action="store_true", help="every column (the default table fits 80 columns)")
    bench.set_defaults(handler=cmd_bench)

    kinds = bench.add_subparsers(dest="bench_kind", metavar="{store,flipflop,throughput,conversion,parse,player}",
                                 title="other benchmarks")
    guests = tuple(store.GUESTS)
    kind = _bench_kind(kinds, "store", cmd_bench_store,
                       help="the attribute store vs a bitmap, a per-page map and the kernel's XArray",
                       description="Build, query and convert the conversion-state store against a bitmap, a "
                                   "per-page map and the kernel's per-page XArray (modelled), on well-behaved, "
                                   "fragmented and hostile guests.")
    kind.add_argument("--guests", type=a.choices("guests", guests), metavar="NAMES", default=guests,
                      help=f"comma list of {a.braces(guests)} (default: all)")
    kind.add_argument("--no-pagemap", action="store_true", help="skip the per-page map (slow on big guests)")
    kind.add_argument("--wide", action="store_true", help="every column (the default table fits 80 columns)")
    kind = _bench_kind(kinds, "flipflop", cmd_bench_flipflop,
                       help="one page converted back and forth under every policy")
    kind.add_argument("--flips", type=a.count("flips", maximum=flipflop.MAX_FLIPS), metavar=a.COUNT,
                      default=10_000, help=f"round trips, at most {flipflop.MAX_FLIPS:,} (default: %(default)s)")
    kind = _bench_kind(kinds, "throughput", cmd_bench_throughput,
                       help="one-page conversions per second with 1 and 2 vCPUs (kvm)")
    kind.add_argument("--vcpus", dest="vcpus_list", type=a.listed("vcpus", a.count("vcpus", maximum=64),
                                                                  _check_vcpu_counts), metavar="COUNTS",
                      default=(1, 2), help="comma list of vCPU counts, 1 first (default: 1,2)")
    kind.add_argument("--policies", type=policy_names("policies"), metavar="SPECS", default=("never", "eager"),
                      help="comma list of policies (default: never,eager)")
    kind.add_argument("--conversions", type=a.count("conversions", minimum=2, maximum=throughput.MAX_CONVERSIONS),
                      metavar=a.COUNT, default=20_000, help="conversions per vCPU per round (default: %(default)s)")
    _add_repeat(kind)
    kind.add_argument("--no-punches", action="store_true",
                      help="skip the run beside 256 MiB punches (vCPU 0 discards while vCPU 1 converts)")
    kind = _bench_kind(kinds, "conversion", cmd_bench_conversion,
                       help="what one conversion costs in each design: never, eager, in-place (kvm)",
                       description="One page flipped and touched on one KVM guest per design (two-file under "
                                   "never and eager, in-place), side by side; then the host-side steps each "
                                   "adds: punch and re-fault, protection change and zeroing.")
    kind.add_argument("--flips", type=a.count("flips", maximum=conversion.MAX_FLIPS), metavar=a.COUNT,
                      default=10_000, help=f"round trips per round, at most {conversion.MAX_FLIPS:,} "
                                           "(default: %(default)s)")
    _add_repeat(kind)
    kind = _bench_kind(kinds, "parse", cmd_bench_parse,
                       help="trace parsing rate: msgspec (the reader) vs the standard library")
    kind.add_argument("--scale", type=a.number("scale", maximum=100), metavar="X", default=5.0,
                      help="size of the random trace parsed, at most 100 (default: %(default)s: 50k ops)")
    _bench_kind(kinds, "player", cmd_bench_player,
                help="guest instructions per op in the trace player (kvm, single-stepped)")

    advice = commands.add_parser(
        "advise", help="sweep lazy/adaptive budgets and ages: the Pareto front of time against double "
                       "allocation, and a recommendation",
        epilog="examples:\n  privmem advise --workload ovmf-dma\n  privmem advise --trace guest.jsonl "
               "--tolerance 5%\n  privmem advise --budgets 1M,4M,16M --ages 5ms,50ms")
    source = advice.add_mutually_exclusive_group()
    source.add_argument("--workload", type=a.choice("workload", WORKLOADS), metavar="NAME", default="ovmf-dma",
                        help=f"a generated workload: {', '.join(WORKLOADS)} (default: %(default)s)")
    source.add_argument("--trace", metavar=a.FILE, help="a privmem trace v1 file (it sets its own guest)")
    advice.add_argument("--budgets", type=a.listed("budgets", lambda text: a.size("budgets")(text),
                                                   advise.check_budgets), metavar="SIZES",
                        help=f"comma list of byte budgets, at most {advise.MAX_BUDGETS} (default: 1/4096, "
                             "1/1024, 1/256 and 1/64 of guest memory)")
    advice.add_argument("--ages", type=a.listed("ages", advise.parse_age, advise.check_ages), metavar="AGES",
                        help=f"comma list of max ages (20ms, 0.5s; a bare number is ms), at most "
                             f"{advise.MAX_AGES} (default: 5ms,20ms,50ms)")
    advice.add_argument("--repeat", type=a.count("repeat", maximum=advise.MAX_REPEAT), metavar=a.COUNT,
                        default=advise.DEFAULT_REPEAT,
                        help=f"interleaved rounds per setting, at most {advise.MAX_REPEAT} (default: %(default)s)")
    advice.add_argument("--tolerance", type=a.fraction("tolerance"), metavar="FRACTION",
                        default=advise.DEFAULT_TOLERANCE,
                        help="how much slower than never a recommendation may be: 0.02 or 2%% (default: 2%%)")
    add_guest(advice, memory_default="1G", trace_note=" (not with --trace)")
    advice.add_argument("--wide", action="store_true", help="every column (the default table fits 80 columns)")
    advice.add_argument("--json-out", metavar=a.FILE, default="privmem-advise.json",
                        help="the saved result (default: %(default)s)")
    advice.add_argument("--plot-out", metavar=a.PNG, default="privmem-advise.png",
                        help="the plot (default: %(default)s)")
    advice.set_defaults(handler=cmd_advise)


__all__ = ["add_parsers"]
