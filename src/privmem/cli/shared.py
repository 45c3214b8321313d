"""Options several commands share (the guest, the backend, policies) and the checks made
before any work starts."""

from __future__ import annotations

import contextlib

from ..errors import InvalidArgument
from . import arguments as a


def guest_limits() -> tuple[int, int]:
    """(most RAM, most vCPUs) a machine takes."""
    from ..vmm.machine import MAX_MEMORY, MAX_VCPUS

    return MAX_MEMORY, MAX_VCPUS


def add_backend(parser) -> None:
    from ..runner import BACKENDS

    parser.add_argument("--backend", type=a.choice("backend", BACKENDS), metavar=a.braces(BACKENDS),
                        help="kvm: a real VM on /dev/kvm; host: Python threads and no guest (default: kvm "
                             "where /dev/kvm opens, else host, said on stderr)")


def add_guest(parser, memory_default: str, backend: bool = True, trace_note: str = "",
              max_vcpus: int | None = None) -> None:
    """--memory, --vcpus, --layout, --scale, --seed (and --backend): left None when not given,
    so a command can tell a value given from a default."""
    from ..memmap import LAYOUTS
    from ..workload import MAX_SCALE

    max_memory, machine_vcpus = guest_limits()
    vcpus = max_vcpus or machine_vcpus
    parser.add_argument("--memory", type=a.size("memory", maximum=max_memory), metavar=a.SIZE,
                        help=f"guest RAM: 3G, 512M, 64KiB... up to 4T (default: {memory_default}){trace_note}")
    parser.add_argument("--vcpus", type=a.count("vcpus", maximum=vcpus), metavar=a.COUNT,
                        help=f"vCPUs, 1 to {vcpus} (default: 1){trace_note}")
    parser.add_argument("--layout", type=a.choice("layout", LAYOUTS), metavar=a.braces(LAYOUTS),
                        help=f"guest-physical layout (default: flat){trace_note}")
    parser.add_argument("--scale", type=a.number("scale", maximum=MAX_SCALE), metavar="X",
                        help=f"multiplies the workload's work, up to {MAX_SCALE:g} (default: 1){trace_note}")
    parser.add_argument("--seed", type=a.seed(), metavar=a.COUNT,
                        help=f"the workload's random seed: same seed, same trace (default: 0){trace_note}")
    if backend:
        add_backend(parser)


def check_policy(field: str, text: str) -> str:
    """A policy spec, checked whole (name, parameters, values) by building the policy once
    for a 1 GiB guest; returned as typed, since the run builds its own for its guest."""
    from ..convert import POLICIES, make_policy, parse_spec
    from ..units import GiB
    from .arguments import unknown_name

    name, _ = parse_spec(text)
    if name not in POLICIES:
        raise unknown_name(field, name, POLICIES)
    make_policy(text, GiB)
    return text.strip()


def split_specs(text: str) -> list[str]:
    """``never,lazy:budget=8M,max_age=20ms,eager`` -> the three specs: an item with ``=`` and
    no ``:`` is a parameter of the spec before it (a policy name never holds ``=``)."""
    specs: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if "=" in item and ":" not in item and specs:
            specs[-1] += "," + item
        elif item:
            specs.append(item)
    return specs


def policy_spec(field: str = "policy"):
    """One policy, by name or spec (``lazy:budget=8M,max_age=20ms``)."""
    return a.argument_type(field, lambda text: check_policy(field, text))


def policy_names(field: str = "policies"):
    """A comma list of policy specs, each at most once."""
    def parse_value(text: str) -> tuple[str, ...]:
        specs = tuple(check_policy(field, spec) for spec in split_specs(text))
        if not specs:
            raise InvalidArgument(field, text, "an empty list", hex_value=False)
        repeated = next((spec for spec in specs if specs.count(spec) > 1), None)
        if repeated:
            raise InvalidArgument(field, text, f"names {repeated!r} twice", hex_value=False)
        return specs
    return a.argument_type(field, parse_value)


def check_inputs(args, *fields: str) -> None:
    """Fail before any work on an input file that is missing or unreadable."""
    from ..results import check_readable

    for field in fields:
        if getattr(args, field, None) is not None:
            check_readable(field.replace("_", "-"), getattr(args, field))


TRACE_SETS = ("memory", "vcpus", "layout", "scale", "seed")      # what a trace fixes for itself


def check_trace_source(args, instead: str) -> None:
    """With ``--trace``: refuse an option the trace fixes (never ignore it), naming the fix
    (``instead``), and check the file is readable, all before any work."""
    if not args.trace:
        return
    given = [name for name in TRACE_SETS if getattr(args, name) is not None]
    if given:
        raise InvalidArgument(f"--{given[0]}", given_value(args, given[0]), f"a trace sets its own guest{instead}",
                              hex_value=False)
    check_inputs(args, "trace")


def given_value(args, name: str) -> str:
    """An option's value as the user typed it."""
    value = getattr(args, name)
    return getattr(value, "text", str(value))


@contextlib.contextmanager
def naming_file(path: str | None):
    """A trace error inside, named ``FILE:LINE:`` the way compilers and importers name theirs."""
    from ..errors import TraceError

    try:
        yield
    except TraceError as error:
        if path is None or error.source is not None:
            raise
        raise error.located(path) from None


def check_outputs(args, *fields: str) -> None:
    """Fail before a long run, not after it, on an output path that cannot be written."""
    from ..results import check_writable

    for field in fields:
        if getattr(args, field, None) is not None:
            check_writable(field.replace("_", "-"), getattr(args, field))


__all__ = ["add_backend", "add_guest", "check_inputs", "check_outputs", "given_value", "naming_file", "guest_limits", "policy_names", "policy_spec"]
