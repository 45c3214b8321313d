"""Every privmem command the docs show parses: a typo in README.md or docs/*.md (an option
renamed, a value out of range, a policy spec that no longer reads) fails here, not in a
reader's terminal.  A command whose shown output is argparse's refusal (``error:
argument``) must be refused."""

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from privmem.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_TAGS = {"console", "sh", "shell", "bash"}
WRAPPERS = {"time", "sudo", "env", "exec", "nohup"}


def shell_blocks(text: str):
    """(tag, body) of every fenced block tagged as shell or console."""
    for tag, body in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
        if tag in SHELL_TAGS:
            yield tag, body


def command_lines(tag: str, body: str):
    """(command, output shown after it) per command line: in console blocks the lines after
    ``$ ``, in sh blocks every line; backslash continuations joined."""
    lines = body.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if tag == "console":
            if not line.startswith("$ "):
                continue
            line = line[2:]
        while line.endswith("\\") and index < len(lines):
            line = line[:-1] + " " + lines[index].strip()
            index += 1
        output = []
        while tag == "console" and index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        yield line, "\n".join(output)


def privmem_argvs(command: str):
    """The arguments of each privmem invocation in a shell line: cut at the first pipe or
    redirection, split at ``&&`` and ``;``, wrappers (``time``, ``timeout 3``, ``VAR=x``) and
    the path before ``privmem`` dropped."""
    command = re.split(r"\s[|<>]|\s\d?>|\|", command, maxsplit=1)[0]
    for part in re.split(r"&&|;", command):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:
            continue
        while words and (words[0] in WRAPPERS or re.fullmatch(r"\w+=\S*", words[0])):
            words.pop(0)
        if words and words[0] == "timeout":
            words.pop(0)
            while words and (words[0].startswith("-") or re.fullmatch(r"[A-Z]+|\d+(\.\d+)?[smhd]?", words[0])):
                words.pop(0)
        if words and Path(words[0]).name == "privmem":
            yield words[1:]


def documented_commands():
    out = []
    for page in PAGES:
        for tag, body in shell_blocks(page.read_text()):
            for line, output in command_lines(tag, body):
                for argv in privmem_argvs(line):
                    if "--help" in argv or "-h" in argv or "--version" in argv:
                        continue
                    out.append(pytest.param(argv, "error: argument" in output,
                                            id=f"{page.name}: privmem {' '.join(argv)}"[:120]))
    return out


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    pages = {param.id.split(":")[0] for param in COMMANDS}
    assert len(COMMANDS) >= 40 and {"README.md", "guide.md", "traces.md", "results.md"} <= pages


@pytest.mark.parametrize("argv, refused", COMMANDS)
def test_a_documented_command_parses(argv, refused):
    parser = build_parser()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
            status = 0
        except SystemExit as exit_info:
            status = exit_info.code
    if refused:
        assert status == 2, f"privmem {shlex.join(argv)}: the docs show it refused, but it parses"
    else:
        assert status == 0, f"privmem {shlex.join(argv)}: {stderr.getvalue().strip()}"


@pytest.mark.parametrize("line, expected", [
    ("privmem run --policy lazy | grep time", [["run", "--policy", "lazy"]]),
    ("COLUMNS=80 time privmem bench --quick > out.txt", [["bench", "--quick"]]),
    ("python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/privmem bench", [["bench"]]),
    ("timeout --preserve-status -s INT 3 privmem soak --seconds 30", [["soak", "--seconds", "30"]]),
    ("privmem info   # what KVM offers", [["info"]]),
    ("diff <(sed '$d' bench-a.out) report-a.out && echo identical", []),
])
def test_commands_are_found_in_shell_lines(line, expected):
    assert list(privmem_argvs(line)) == expected
