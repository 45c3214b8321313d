"""The `privmem` command: argument parsing and printing only; the work lives in the layers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import PrivmemError


def _write_json(path: str, payload) -> None:
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def _console():
    from rich.console import Console

    # Tables are read in CI logs and pipes as often as on terminals: keep them whole there.
    return Console(width=None if sys.stdout.isatty() else 160)


def cmd_bench_store(args) -> int:
    from .bench import store

    console = _console()
    guests = args.guests.split(",") if args.guests else list(store.GUESTS)
    for guest in guests:
        if guest not in store.GUESTS:
            raise PrivmemError(f"--guests: unknown guest {guest!r} (choose from {', '.join(store.GUESTS)})")
    with console.status("measuring") as status:
        results = store.run(guests, include_pagemap=not args.no_pagemap,
                            progress=lambda what: status.update(f"measuring {what}"))
    console.print(store.table(results))
    for line in store.headline(results):
        console.print(line)
    _write_json(args.json_out, store.as_json(results))
    console.print(f"JSON written to {args.json_out}")
    return 0


def cmd_bench_flipflop(args) -> int:
    from .bench import flipflop

    console = _console()
    results = flipflop.run(args.flips)
    console.print(flipflop.table(results))
    for line in flipflop.headline(results):
        console.print(line)
    _write_json(args.json_out, flipflop.as_json(results))
    console.print(f"JSON written to {args.json_out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privmem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser("bench", help="benchmarks (they print figures; none is a test)")
    bench_kinds = bench.add_subparsers(dest="bench_kind")
    bench_store = bench_kinds.add_parser("store", help="the attribute store vs a bitmap and a per-page map")
    bench_store.add_argument("--guests", help="comma-separated subset of 1GiB,64GiB,1TiB")
    bench_store.add_argument("--no-pagemap", action="store_true", help="skip the per-page map")
    bench_store.add_argument("--json-out", default="privmem-bench-store.json", help="where to write results")
    bench_store.set_defaults(handler=cmd_bench_store)
    bench_flip = bench_kinds.add_parser("flipflop", help="one page converted back and forth under every policy")
    bench_flip.add_argument("--flips", type=int, default=10_000, help="round trips (default 10,000)")
    bench_flip.add_argument("--json-out", default="privmem-bench-flipflop.json", help="where to write results")
    bench_flip.set_defaults(handler=cmd_bench_flipflop)
    bench.set_defaults(handler=lambda args: cmd_bench_store(bench_store.parse_args([])))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except PrivmemError as error:
        print(f"privmem: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
