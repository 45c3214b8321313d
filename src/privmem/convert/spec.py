"""Policy specs: ``name[:param=value[,param=value...]]``, read and written here only.

``lazy:budget=8M,max_age=20ms`` names the policy ``lazy`` with two of its parameters.  A
policy declares its parameters as :class:`Param` (name, kind, default, help); a kind says
how its values are written:

* ``size``: bytes, as ``privmem.units.parse_size`` reads them (``4096``, ``64K``, ``8M``,
  ``1G``, ``0x1000``);
* ``time``: seconds, written with a unit: ``s``, ``ms`` or ``us`` (``20ms``, ``1.5s``);
* ``int`` and ``float``: plain numbers.

The API (``make_policy(spec, memory)``) and the CLI read specs through :func:`parse_spec`
and the values through :meth:`Param.value`; the canonical string of a policy
(:func:`format_spec`, ``str(policy)``) writes every parameter in its kind's canonical form, so
it reads back to the same policy.  Errors are InvalidArgument naming the field
(``policy``, or ``<policy>.<param>``), the value as given (clipped) and what is allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..units import ADDRESS_LIMIT, format_size_exact, parse_size

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
PARAM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Kind:
    """How values of one kind are read (``parse``: text -> value, ValueError if it is not
    one) and written back (``format``: the canonical text, which ``parse`` reads back to the
    same value).  ``types``: Python values accepted as they are; ``limit``: a power of two
    values must be below (None: no limit)."""

    name: str
    example: str
    parse: Callable[[str], float]
    format: Callable[[float], str]
    types: tuple[type, ...]
    limit: int | None = None


def _parse_size(text: str) -> int:
    try:
        return parse_size(text)
    except InvalidArgument as error:
        raise ValueError(error.why) from None


_TIME_UNITS = {"s": 1, "ms": 1_000, "us": 1_000_000, "µs": 1_000_000}
_TIME_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?)\s*"
                      r"(s|ms|us|µs)\s*$")


def _parse_time(text: str) -> float:
    match = _TIME_RE.match(text)
    if not match:
        raise ValueError("not a time (use e.g. 20ms, 1.5s, 500us: a unit is required)")
    return float(match.group(1)) / _TIME_UNITS[match.group(2)]


def _format_time(seconds: float) -> str:
    for unit in ("s", "ms", "us"):
        scale = _TIME_UNITS[unit]
        whole = round(seconds * scale)
        if whole / scale == seconds:        # exactly what _parse_time reads back
            return f"{whole}{unit}"
    return f"{seconds!r}s"


def _parse_int(text: str) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError("not an integer (e.g. 64)") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError("not a number (e.g. 0.5)") from None


SIZE = Kind("size", "8M", _parse_size, format_size_exact, (int,), limit=ADDRESS_LIMIT)
TIME = Kind("time", "20ms", _parse_time, _format_time, (int, float))
INT = Kind("int", "64", _parse_int, str, (int,))
FLOAT = Kind("float", "0.5", _parse_float, repr, (int, float))


@dataclass(frozen=True)
class ShareOfMemory:
    """A default that follows the guest: ``percent`` of its memory, at least ``at_least``
    bytes (``make_policy`` knows the guest's memory; a policy built directly must be given
    the value)."""

    percent: int
    at_least: int = 0

    def __call__(self, memory: int) -> int:
        return max(memory * self.percent // 100, self.at_least)

    def __str__(self) -> str:
        return f"{self.percent}% of guest memory" + (f", at least {format_size_exact(self.at_least)}"
                                                     if self.at_least else "")


@dataclass(frozen=True)
class Param:
    """One parameter of a policy: its ``name`` in specs (and the policy's attribute), its
    ``kind``, its ``default`` (a value, or a :class:`ShareOfMemory`), a ``help`` line, and
    the range allowed: values > 0 when ``positive``, else >= 0."""

    name: str
    kind: Kind
    default: object
    help: str
    positive: bool = True

    def value(self, given: object, owner: str) -> float:
        """``given`` (spec text, or a Python value of the kind's types) checked and converted;
        InvalidArgument naming ``<owner>.<name>`` otherwise."""
        field = f"{owner}.{self.name}"
        hex_value = self.kind is SIZE
        if isinstance(given, str):
            try:
                value = self.kind.parse(given)
            except ValueError as error:
                raise InvalidArgument(field, given, str(error), hex_value=False) from None
        elif isinstance(given, self.kind.types) and not isinstance(given, bool):
            value = given
        else:
            raise InvalidArgument(field, given, f"must be a {self.kind.name} (e.g. {self.kind.example})",
                                  hex_value=False)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(field, given, "must be finite", hex_value=False)
        if (value <= 0) if self.positive else (value < 0):
            raise InvalidArgument(field, given, "must be positive" if self.positive else "must not be negative",
                                  hex_value=hex_value and not isinstance(given, str))
        if self.kind.limit is not None and value >= self.kind.limit:
            raise InvalidArgument(field, given, f"must be below 2**{self.kind.limit.bit_length() - 1}",
                                  hex_value=hex_value and not isinstance(given, str))
        return value

    def describe(self) -> str:
        """``budget=SIZE (default 1% of guest memory): ...``, for help and ``list``."""
        default = self.default if isinstance(self.default, ShareOfMemory) else self.kind.format(self.default)
        return f"{self.name}={self.kind.name.upper()} (default {default}): {self.help}"


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``"lazy:budget=8M,max_age=20ms"`` -> ``("lazy", {"budget": "8M", "max_age": "20ms"})``.
    The grammar only: the name and the values are checked by the policy's registry entry and
    its params.  Whitespace around names and values is ignored."""
    if not isinstance(spec, str):
        raise InvalidArgument("policy", spec, "must be a policy spec string, e.g. lazy:budget=8M", hex_value=False)
    name, colon, rest = spec.partition(":")
    name = name.strip()
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument("policy", spec, "not a policy spec: write name or name:param=value,... "
                              "(e.g. lazy:budget=8M,max_age=20ms)", hex_value=False)
    values: dict[str, str] = {}
    if colon and not rest.strip():
        raise InvalidArgument("policy", spec, f"nothing after ':' (write {name}:param=value, or just {name})",
                              hex_value=False)
    for item in rest.split(",") if colon else ():
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not PARAM_RE.fullmatch(key) or not text.strip():
            raise InvalidArgument("policy", spec, f"{item.strip()!r} is not param=value "
                                  f"(e.g. {name}:budget=8M)", hex_value=False)
        if key in values:
            raise InvalidArgument(f"{name}.{key}", text.strip(), "given twice", hex_value=False)
        values[key] = text.strip()
    return name, values


def format_spec(name: str, params: tuple[Param, ...], values: dict[str, float]) -> str:
    """The canonical spec: every parameter, in declaration order, in its kind's canonical form."""
    if not params:
        return name
    return name + ":" + ",".join(f"{p.name}={p.kind.format(values[p.name])}" for p in params)


__all__ = ["FLOAT", "INT", "Kind", "Param", "SIZE", "ShareOfMemory", "TIME", "format_spec", "parse_spec"]
