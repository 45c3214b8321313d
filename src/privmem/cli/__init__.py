"""The ``privmem`` command: argument parsing and printing only; the work lives in the layers.

Each command group is one module that adds its parsers (``add_parsers``) and holds their
handlers: ``bench`` (bench, its kinds, advise), ``run`` (run, soak), ``trace``, ``saved``
(report, compare) and ``info`` (info, list).  ``arguments`` checks every value where it is
read; ``output`` keeps results on stdout and progress and notes on stderr.

Exit status: 0 success; 1 a run's checks failed; 2 bad input or a refused request; 3 a trace
import that lost something; 130 Ctrl-C; 143 SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from ..errors import PrivmemError

EPILOG = """examples:
  privmem bench                 the main job: every discard policy, side by side
  privmem bench --quick         the same, smaller: about 10 s
  privmem run --workload ovmf-dma --policy lazy
  privmem trace import --from qemu-log qemu.log -o guest.jsonl
  privmem run --trace guest.jsonl --policy lazy
  privmem list                  every policy, workload, layout and importer
  privmem info                  what this host's KVM offers

docs/guide.md is the user guide; privmem COMMAND --help says more about each command."""


def build_parser() -> argparse.ArgumentParser:
    from ..results import privmem_version
    from . import arguments as a, bench, info, run, saved, trace

    parser = a.Parser(
        prog="privmem", epilog=EPILOG,
        description="fd-based private memory for confidential VMs on real KVM: replay, test and measure "
                    "shared/private conversions, with the discard policies side by side.")
    parser.add_argument("--version", action="version", version=f"privmem {privmem_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=a.Parser)
    for group in (bench, run, trace, saved, info):
        group.add_parsers(commands)
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
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader went away (| head): nothing more to say, and nothing to flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (PrivmemError, OSError) as error:
        print(f"privmem: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        how, code = ("Ctrl-C", 130) if isinstance(stop, KeyboardInterrupt) else ("SIGTERM", 143)
        print(f"{_command(args)} interrupted by {how}: every vCPU stopped, no result written", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


__all__ = ["build_parser", "main"]
