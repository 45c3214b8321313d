"""``privmem run`` (one workload or trace under one policy) and ``privmem soak`` (random
conversions and DMA, verified at the end)."""

from __future__ import annotations

import json

from . import arguments as a
from .output import fields, note, progress, resolve_backend
from .shared import add_backend, add_guest, check_trace_source, naming_file, policy_spec

RUN_EPILOG = """examples:
  privmem run                                         boot, 1 GiB, never
  privmem run --workload ovmf-dma --policy lazy --memory 4G --vcpus 2
  privmem run --trace guest.jsonl --policy eager      a recorded guest
  privmem run --trace guest.jsonl --timing recorded   at its recorded pace
  privmem run --backing in-place --json

exit status: 0 every check passed; 1 a data, DMA or PSC error; 2 bad input or a
refused request; 130 Ctrl-C; 143 SIGTERM."""
# What a trace sets itself: given with --trace, these are refused rather than ignored.


def run_failed(result) -> bool:
    return bool(result.data_errors or result.dma_errors or result.psc_errors)


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def run_fields(result) -> list[tuple[str, str]]:
    from ..units import format_size

    return [
        ("workload", result.workload),
        ("backend", result.backend),
        ("backing", result.backing),
        ("policy", result.policy),
        ("tracking", result.tracking),
        ("guest", f"{format_size(result.memory)} {result.layout}, {result.vcpus} vCPU"),
        ("ops", f"{result.ops:,}" + (f" (timing {result.timing})" if result.timing != "none" else "")),
        ("time", f"{result.wall_s:.3f} s"),
        ("conversions", f"{result.conversions:,} ({plural(result.pages_converted, 'page')})"),
        ("exits", f"{result.exits:,}"),
        ("discards", f"{result.discards:,} ({format_size(result.discarded_bytes)})"),
        ("peak held (books)", format_size(result.peak_double_alloc_bytes)),
        ("peak double alloc (kernel)", format_size(result.peak_double_alloc_measured_bytes)),
        ("peak host memory", format_size(result.peak_host_bytes)),
        ("VMM peak RSS", format_size(result.peak_rss_bytes)),
        ("PSC retries", f"{result.psc_retries:,}"),
        ("PSC errors", f"{result.psc_errors:,}"),
        ("DMA errors", f"{result.dma_errors:,}"),
        ("data errors", f"{result.data_errors:,}"),
        ("verdict", "FAILED" if run_failed(result) else "OK"),
    ]


def cmd_run(args) -> int:
    from ..runner import open_trace, run_document, run_program, workload_program

    check_trace_source(args, " and ops; drop the option, or run a workload with --workload")
    backend = resolve_backend(args.backend, "privmem run")
    with progress("privmem run") as shown, naming_file(args.trace):
        if args.trace:
            shown.status(f"reading {args.trace}")
            program, name, warnings = open_trace(args.trace, args.timing)
            for warning in warnings:
                note(f"{args.trace}: {warning}")
        else:
            shown.status(f"generating {args.workload}")
            program, name = workload_program(args.workload, args.memory, args.vcpus, args.seed, args.scale,
                                             args.layout, args.timing)
        with program:
            shown.status(f"running {name} ({program.ops:,} ops) under {args.policy} on {backend}")
            result = run_program(program, name, args.policy, backend, tracking=args.tracking,
                                 backing=args.backing)
    if args.json:
        seed, scale = (None, None) if args.trace else (args.seed or 0, args.scale or 1.0)
        print(json.dumps(run_document(result, args.argv, scale=scale, seed=seed, trace=args.trace), indent=2))
    else:
        print(fields(run_fields(result)))
    return 1 if run_failed(result) else 0


def cmd_soak(args) -> int:
    from ..soak import format_soak, run_soak, soak_document

    backend = resolve_backend(args.backend, "privmem soak")
    with progress(f"privmem soak ({backend}, {args.seconds:g} s)") as shown:
        def report(elapsed: float, totals: dict) -> None:
            shown.status(f"{elapsed:5.1f}/{args.seconds:g} s: {totals['conversions']:,} conversions, "
                         f"{totals['ops']:,} ops, {totals['data_errors'] + totals['dma_errors']} errors")
        result = run_soak(args.seconds, vcpus=args.vcpus, memory=args.memory, policy=args.policy, backend=backend,
                          seed=args.seed, data_check=args.data_check, backing=args.backing, progress=report)
    print(json.dumps(soak_document(result, args.seconds, args.argv), indent=2) if args.json else format_soak(result))
    failed = any(result[key] for key in ("data_errors", "dma_errors", "psc_errors", "state_errors"))
    return 1 if failed else 0


def add_parsers(commands) -> None:
    from ..convert import POLICIES
    from ..runner import TRACKINGS
    from ..soak import MAX_SECONDS
    from ..vmm.machine import BACKINGS
    from ..vmm.program import TIMINGS
    from ..workload import DEFAULT_WORKLOAD, WORKLOADS
    from .shared import guest_limits

    run = commands.add_parser(
        "run", help="one workload or trace under one policy, on a fresh machine",
        description="Run one generated workload or one trace file on a fresh machine under one discard "
                    "policy, and print what it cost.",
        epilog=RUN_EPILOG)
    source = run.add_mutually_exclusive_group()
    source.add_argument("--workload", type=a.choice("workload", WORKLOADS), metavar="NAME",
                        default=DEFAULT_WORKLOAD, help=f"a generated workload: {', '.join(WORKLOADS)} (default: "
                                                       "%(default)s; privmem list workloads says what each does)")
    source.add_argument("--trace", metavar=a.FILE,
                        help="a privmem trace v1 file (.jsonl, .gz, .bz2, .xz): it sets its own guest")
    run.add_argument("--policy", type=policy_spec(), metavar="SPEC", default="never",
                     help=f"discard policy {a.braces(POLICIES)}, with parameters if wanted "
                          "(lazy:budget=8M,max_age=20ms) (default: %(default)s)")
    add_guest(run, memory_default="1G", trace_note=" (not with --trace)")
    run.add_argument("--backing", type=a.choice("backing", BACKINGS), metavar=a.braces(BACKINGS),
                     default="two-file", help="two-file: guest_memfd + memfd, the policy decides discards; "
                                              "in-place: one guest_memfd for both views, nothing discarded "
                                              "(policy never) (default: %(default)s)")
    run.add_argument("--tracking", type=a.choice("tracking", TRACKINGS), metavar=a.braces(TRACKINGS),
                     default="store", help="store: conversions in the attribute store; memslots: by splitting "
                                           "memslots (kvm, two-file) (default: %(default)s)")
    run.add_argument("--timing", type=a.choice("timing", TIMINGS), metavar=a.braces(TIMINGS), default="none",
                     help="none: ops back to back; recorded: keep the gaps between a trace's recorded "
                          "events (default: %(default)s)")
    run.add_argument("--json", action="store_true", help="print the result as JSON (default: key: value lines)")
    run.set_defaults(handler=cmd_run)

    _, max_vcpus = guest_limits()
    soak = commands.add_parser(
        "soak", help="random conversions and DMA across vCPUs for a while, verified at the end",
        epilog="examples:\n  privmem soak --seconds 60 --vcpus 4\n  privmem soak --backing in-place --json\n\n"
               "exit status: 0 every check passed; 1 a data, DMA, PSC or state error; 2 bad input; 130 Ctrl-C.")
    soak.add_argument("--seconds", type=a.number("seconds", maximum=MAX_SECONDS, unit=" s"), metavar=a.SECONDS,
                      default=10.0, help=f"how long, at most {MAX_SECONDS:g} (default: %(default)g)")
    soak.add_argument("--vcpus", type=a.count("vcpus", maximum=max_vcpus), metavar=a.COUNT, default=2,
                      help=f"vCPUs, 1 to {max_vcpus} (default: %(default)s)")
    soak.add_argument("--memory", type=a.size("memory", maximum=guest_limits()[0]), metavar=a.SIZE,
                      default=64 << 20, help="guest RAM (default: 64M)")
    soak.add_argument("--policy", type=policy_spec(), metavar="SPEC",
                      help="discard policy (default: lazy; never with --backing in-place)")
    soak.add_argument("--backing", type=a.choice("backing", BACKINGS), metavar=a.braces(BACKINGS),
                      default="two-file", help="two-file or in-place (default: %(default)s)")
    add_backend(soak)
    soak.add_argument("--seed", type=a.seed(), metavar=a.COUNT, default=0,
                      help="the random seed: same seed, same ops (default: %(default)s)")
    soak.add_argument("--data-check", type=a.choice("data-check", ("full", "sampled")), metavar="{full,sampled}",
                      default="full", help="the guest's data checks: every byte, or a sample per page "
                                           "(faster where KVM emulates them) (default: %(default)s)")
    soak.add_argument("--json", action="store_true", help="print the result as JSON")
    soak.set_defaults(handler=cmd_soak)


__all__ = ["add_parsers", "run_fields"]
