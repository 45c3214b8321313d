"""Option types: every value is checked where argparse reads it, and refused in the user's
own words (what was typed, what is allowed, and the fix where there is one), before any work
starts.  Nothing is replaced silently: a zero, a negative or an out-of-range value is an
error, never a default.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import textwrap

from ..errors import InvalidArgument
from ..units import PAGE_SIZE, format_size, parse_size

SIZE, COUNT, FILE, PNG, SECONDS = "SIZE", "N", "FILE", "PNG", "SECONDS"


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions and epilogs wrapped paragraph by paragraph, except paragraphs with indented
    lines (examples, exit codes), kept as written; help never broken at a hyphen (keep-shared)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.strip("\n").split("\n\n")
        return "\n\n".join(paragraph if any(line.startswith(" ") for line in paragraph.splitlines())
                            else textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                               subsequent_indent=indent, break_on_hyphens=False)
                            for paragraph in paragraphs)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)$")


class Parser(argparse.ArgumentParser):
    """Every privmem parser: the formatter above, and the closest name for a mistyped
    command (argparse's own message lists the choices but guesses none)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        mistyped = _INVALID_CHOICE.search(message)
        if mistyped:
            names = [name.strip().strip("'") for name in mistyped.group(2).split(",")]
            close = difflib.get_close_matches(mistyped.group(1), names, n=1, cutoff=0.6)
            if close:
                message = f"{message[:mistyped.start()]}invalid choice: {mistyped.group(1)!r}; did you mean " \
                          f"{close[0]!r}? (choose from {', '.join(names)})"
        super().error(message)


def argument_type(field: str, parse_value):
    """An argparse type from ``parse_value(text)``, which raises InvalidArgument; its message
    becomes argparse's, after the option's name."""
    def parse(text: str):
        try:
            return parse_value(text)
        except InvalidArgument as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = field
    return parse


def _refuse(field: str, text: object, why: str):
    raise InvalidArgument(field, text, why, hex_value=False)


class TypedSize(int):
    """A byte count that remembers how the user wrote it (``3G``), to say it back that way."""

    text: str

    def __new__(cls, value: int, text: str):
        obj = super().__new__(cls, value)
        obj.text = text
        return obj


def size(field: str, minimum: int = PAGE_SIZE, maximum: int | None = None, fix: str = ""):
    """Bytes as the user writes them (``3G``, ``512M``, ``64KiB``, ``4096``, ``0x1000``), a
    multiple of 4 KiB, within [minimum, maximum]."""
    def parse_value(text: str) -> int:
        value = parse_size(text, field)
        if value < minimum:
            _refuse(field, text, f"must be at least {format_size(minimum)}")
        if value % PAGE_SIZE:
            _refuse(field, text, f"must be a multiple of 4 KiB (try {format_size(value // PAGE_SIZE * PAGE_SIZE)})"
                    if value > PAGE_SIZE else "must be a multiple of 4 KiB")
        if maximum is not None and value > maximum:
            _refuse(field, text, f"at most {format_size(maximum)}" + (f"; {fix}" if fix else ""))
        return TypedSize(value, text.strip())
    return argument_type(field, parse_value)


def count(field: str, minimum: int = 1, maximum: int | None = None, fix: str = ""):
    """A whole number within [minimum, maximum] (decimal, or 0x-prefixed hex)."""
    def parse_value(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            _refuse(field, text, "not an integer")
        if value < minimum:
            _refuse(field, value, f"must be at least {minimum:,}")
        if maximum is not None and value > maximum:
            _refuse(field, value, f"at most {maximum:,}" + (f"; {fix}" if fix else ""))
        return value
    return argument_type(field, parse_value)


def seed(field: str = "seed"):
    return count(field, minimum=0, maximum=(1 << 64) - 1)


def number(field: str, maximum: float, unit: str = "", fix: str = ""):
    """A finite number > 0 and at most ``maximum`` (``unit`` is how it is shown)."""
    def parse_value(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            _refuse(field, text, "not a number")
        if not math.isfinite(value) or value <= 0:
            _refuse(field, text, "must be a number > 0")
        if value > maximum:
            _refuse(field, text, f"at most {maximum:g}{unit}" + (f"; {fix}" if fix else ""))
        return value
    return argument_type(field, parse_value)


def fraction(field: str):
    """0.02 or 2%."""
    def parse_value(text: str) -> float:
        try:
            return float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            _refuse(field, text, "not a number (e.g. 0.02 or 2%)")
    return argument_type(field, parse_value)


def unknown_name(field: str, text: str, names) -> InvalidArgument:
    """``field='lazzy': unknown; did you mean 'lazy'? (choose from ...)``."""
    close = difflib.get_close_matches(text, list(names), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return InvalidArgument(field, text, f"unknown{hint} (choose from {', '.join(names)})", hex_value=False)


def choice(field: str, names):
    """One of ``names`` (a sequence or mapping, read when an option is parsed, so names
    registered after the parser was built are accepted)."""
    def parse_value(text: str) -> str:
        if text not in names:
            raise unknown_name(field, text, names)
        return text
    return argument_type(field, parse_value)


def choices(field: str, names):
    """A comma list of ``names``, each at most once."""
    def parse_value(text: str) -> tuple[str, ...]:
        picked = tuple(name.strip() for name in text.split(",") if name.strip())
        if not picked:
            _refuse(field, text, "an empty list")
        for name in picked:
            if name not in names:
                raise unknown_name(field, name, names)
        repeated = next((name for name in picked if picked.count(name) > 1), None)
        if repeated:
            _refuse(field, text, f"names {repeated!r} twice")
        return picked
    return argument_type(field, parse_value)


def listed(field: str, parse_one, check):
    """A comma list parsed item by item, then checked whole (bounds, duplicates)."""
    return argument_type(field, lambda text: check(tuple(parse_one(item.strip()) for item in text.split(",")
                                                         if item.strip())))


def braces(names) -> str:
    """The metavar of a closed set: ``{never,eager,lazy}``."""
    return "{" + ",".join(names) + "}"


__all__ = ["COUNT", "FILE", "HelpFormatter", "Parser", "PNG", "SECONDS", "SIZE", "argument_type", "braces", "choice", "choices", "count",
           "fraction", "listed", "number", "seed", "size", "unknown_name"]
