"""`privmem bench parse`: how fast trace files are read, by each JSON decoder, side by side.

The reader (workload/trace.py) takes every op line through msgspec (decoded into a typed
struct) and falls back to the standard library's strict path only for lines it does not
accept.  This bench reads the same trace text (a generated workload written as trace v1) with
the reader, with the strict standard-library path alone, and with orjson where it is
installed (a dict per line, then the same checks), best of ``repeat`` rounds each, and
reports ops per second and the ratio to the standard library.  Every decoder builds and
validates the same ``Op`` objects against the same memory map.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

from ..workload import generate
from ..workload.trace import TraceReader, _op_from_object, dumps_trace, parse_op
from .timing import best_seconds


@dataclass
class ParseResult:
    decoder: str
    ops: int
    seconds: float
    ops_per_s: float
    vs_stdlib: float


def _stdlib(text: bytes, header) -> int:
    count = 0
    for number, line in enumerate(text.splitlines()[1:-1], 2):
        parse_op(number, line, header.memory_map, header.vcpus)
        count += 1
    return count


def _orjson(orjson, text: bytes, header) -> int:
    count = 0
    for number, line in enumerate(text.splitlines()[1:-1], 2):
        _op_from_object(number, orjson.loads(line), header.memory_map, header.vcpus)
        count += 1
    return count


REPEAT = 3


def run(workload: str = "random", scale: float = 5.0, repeat: int = REPEAT) -> list[ParseResult]:
    trace = generate(workload, memory=64 << 20, vcpus=2, scale=scale)
    text = dumps_trace(trace).encode()
    header = TraceReader(io.BytesIO(text)).header
    n = len(trace.ops)
    decoders = {"stdlib json (strict path)": lambda: _stdlib(text, header),
                "msgspec (the reader)": lambda: sum(1 for _ in TraceReader(io.BytesIO(text)))}
    try:
        import orjson
    except ImportError:
        orjson = None
    if orjson is not None:
        decoders["orjson (dict, same checks)"] = lambda: _orjson(orjson, text, header)
    timed = {name: best_seconds(fn, repeat) for name, fn in decoders.items()}
    base = timed["stdlib json (strict path)"]
    return [ParseResult(name, n, seconds, n / seconds, base / seconds) for name, seconds in timed.items()]


def as_json(results):
    return [asdict(r) for r in results]


def table(results):
    from .tables import compact

    out = compact(f"privmem bench parse: {results[0].ops:,} trace ops, best of {REPEAT}", ("decoder", "ops/s", "vs stdlib"),
                  left=("decoder",))
    for r in results:
        out.add_row(r.decoder, f"{r.ops_per_s:,.0f}", f"{r.vs_stdlib:.2f}x")
    return out


def headline(results) -> list[str]:
    reader = next(r for r in results if r.decoder.startswith("msgspec"))
    return [f"the reader parses {reader.ops_per_s:,.0f} ops/s = {reader.vs_stdlib:.2f}x the standard library's"]
