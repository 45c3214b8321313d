"""``privmem.run``: one workload or trace under one policy, from Python, in one call."""

from __future__ import annotations

import os
import warnings

from .errors import InvalidArgument
from .memmap import GuestMemoryMap
from .ops import Trace
from .units import GiB, format_size, parse_size

DEFAULT_MEMORY = GiB


def run(workload_or_trace: str | os.PathLike | Trace, policy: str = "never", backend: str | None = None,
        memory: int | str | None = None, vcpus: int | None = None, layout: str | None = None,
        scale: float | None = None, seed: int | None = None):
    """Run a workload, a Trace or a trace file on a fresh machine under one discard policy;
    returns the ``RunResult`` (``privmem.runner``)::

        import privmem

        result = privmem.run("ovmf-dma", policy="lazy:budget=8M,max_age=20ms", memory="256M")
        print(result.wall_s, result.discards, result.peak_double_alloc_bytes)
        same = privmem.run("trace.jsonl", policy="eager")          # a trace v1 file
        print(same.backend, same.data_errors)

    ``workload_or_trace``: a workload name (``privmem.workload.WORKLOADS``), a ``Trace``, or
    the path of a trace v1 file (a name that is not a workload is taken as a path).
    ``policy``: a policy spec (``privmem.convert.make_policy``).  ``backend``: "kvm", "host",
    or None for kvm where /dev/kvm is usable, else host (``result.backend`` says which ran).
    ``memory`` (default 1G), ``vcpus`` (1), ``layout`` ("flat"), ``scale`` (1.0) and ``seed``
    (0) shape a generated workload.  A trace carries its own memory, vCPUs and layout: they
    may be given only with the trace's own values, and ``scale`` and ``seed`` not at all, so
    nothing asked for is silently ignored.  A trace file's reader warnings (e.g. no end
    marker) are issued as ``UserWarning``.  Errors: InvalidArgument naming the argument."""
    from .convert import make_policy
    from .runner import BACKENDS, compile_trace, open_trace, run_program, workload_program
    from .workload import WORKLOADS

    if backend is not None and backend not in BACKENDS:
        raise InvalidArgument("backend", backend, f"unknown (choose from {', '.join(BACKENDS)})", hex_value=False)
    if isinstance(workload_or_trace, str) and workload_or_trace in WORKLOADS:
        ram = parse_size(DEFAULT_MEMORY if memory is None else memory, "memory")
        make_policy(policy, ram)                     # a bad spec is refused before any work
        program, name = workload_program(workload_or_trace, ram, vcpus, seed, scale, layout)
    elif isinstance(workload_or_trace, Trace):
        trace = workload_or_trace
        _refuse_overrides("trace", trace.memory_map, trace.vcpus, memory, vcpus, layout, scale, seed)
        make_policy(policy, trace.memory)
        program, name = compile_trace(trace), trace.name
    elif isinstance(workload_or_trace, (str, os.PathLike)):
        path = os.fspath(workload_or_trace)
        if not os.path.isfile(path):
            raise InvalidArgument("workload_or_trace", workload_or_trace, f"neither a workload ({', '.join(WORKLOADS)}) "
                                  "nor a trace file", hex_value=False)
        def check(memory_map, trace_vcpus):              # refused once the header is read, before any op
            _refuse_overrides("trace file", memory_map, trace_vcpus, memory, vcpus, layout, scale, seed)
            make_policy(policy, memory_map.ram_bytes)

        program, name, notes = open_trace(path, check=check)
        for note in notes:
            warnings.warn(f"{path}: {note}", UserWarning, stacklevel=2)
    else:
        raise InvalidArgument("workload_or_trace", workload_or_trace, "must be a workload name, a Trace or a trace "
                              "file path", hex_value=False)
    with program:
        return run_program(program, name, policy, backend)


def _refuse_overrides(source: str, memory_map: GuestMemoryMap, trace_vcpus: int, memory, vcpus, layout,
                      scale, seed) -> None:
    """A trace fixes its guest: a value given that differs from its own is refused, never ignored."""
    ram = memory_map.ram_bytes
    if memory is not None and parse_size(memory, "memory") != ram:
        raise InvalidArgument("memory", memory, f"the {source} sets its own guest memory ({format_size(ram)}): "
                              "leave memory out", hex_value=False)
    if vcpus is not None and vcpus != trace_vcpus:
        raise InvalidArgument("vcpus", vcpus, f"the {source} sets its own vCPUs ({trace_vcpus}): leave vcpus out",
                              hex_value=False)
    if layout is not None and GuestMemoryMap.from_layout(layout, ram) != memory_map:     # same regions: same layout
        raise InvalidArgument("layout", layout, f"the {source} sets its own layout ({memory_map.describe()}): "
                              "leave layout out", hex_value=False)
    for field, value in (("scale", scale), ("seed", seed)):
        if value is not None:
            raise InvalidArgument(field, value, f"shapes generated workloads only; a {source} is fixed",
                                  hex_value=False)


__all__ = ["run"]
