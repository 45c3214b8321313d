"""docs/api.md shows real behaviour: its error messages are the real ones, and its worked
policy, run as written, passes the model test."""

import re
from pathlib import Path

import pytest
from hypothesis import settings

from privmem import InvalidArgument, make_policy
from privmem.convert import POLICIES

from .test_convert_engine_model import machine_for

DOC = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()


def blocks(language: str) -> list[str]:
    """The fenced blocks tagged ``language`` ("" for untagged ones), in order."""
    return [body for tag, body in re.findall(r"^```(\w*)\n(.*?)^```", DOC, re.M | re.S) if tag == language]


def test_the_error_messages_shown_are_the_real_ones():
    shown = blocks("")[0].strip().splitlines()
    assert len(shown) >= 3
    for line in shown:
        field, value = line.split("=", 1)[0], line.split("'")[1]
        spec = value if field == "policy" else "{}:{}={}".format(*field.split("."), value)
        with pytest.raises(InvalidArgument) as error:
            make_policy(spec, 1 << 30)
        assert str(error.value) == line


def test_the_worked_policy_runs_as_written(monkeypatch):
    example = next(block for block in blocks("python") if "@policy(" in block)
    name = re.search(r'@policy\("([^"]+)"', example).group(1)
    monkeypatch.setattr(POLICIES, "_entries", {k: v for k, v in POLICIES._entries.items() if k != name})
    namespace: dict = {}
    exec(compile(example, "docs/api.md", "exec"), namespace)
    assert POLICIES[name].__module__ != "privmem.convert.policies.batch"
    test_case = machine_for(name).TestCase
    test_case.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
    test_case("runTest").runTest()


def test_the_machine_example_prints_what_its_comment_says(capsys):
    example = next(block for block in blocks("python") if "HostMachine(" in block)
    exec(compile(example, "docs/api.md", "exec"), {})
    assert capsys.readouterr().out.split() == example.rsplit("#", 1)[1].split()


def test_the_worked_workload_runs_as_written(monkeypatch, capsys):
    from privmem.workload import GENERATORS, WORKLOADS, check_trace, generate

    example = next(block for block in blocks("python") if "@workload(" in block)
    name = re.search(r'@workload\("([^"]+)"', example).group(1)
    monkeypatch.setattr(GENERATORS, "_entries", dict(GENERATORS._entries))
    exec(compile(example, "docs/api.md", "exec"), {})
    assert name in WORKLOADS
    assert generate(name, 64 << 20, 2, seed=7) == generate(name, 64 << 20, 2, seed=7) != generate(name, 64 << 20, 2, seed=8)
    check_trace(generate(name, 128 << 20, 2, reserved=17 << 20, scale=0.2), reserved=17 << 20)
    with pytest.raises(InvalidArgument, match="memory"):
        generate(name, 1 << 20, 2)
    usage = next(block for block in blocks("python") if f'generate("{name}"' in block)
    monkeypatch.setattr("privmem.runner.default_backend", lambda: "host")     # fast, and the same on any host
    exec(compile(usage, "docs/api.md", "exec"), {})
    assert capsys.readouterr().out.split() == usage.rsplit("#", 1)[1].split()
