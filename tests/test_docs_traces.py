"""docs/traces.md shows real output: its import and stats examples are re-run here, so the page
cannot drift from what privmem prints."""

import os
import re
from pathlib import Path

from privmem.cli import main

ROOT = Path(__file__).parent.parent
DOC = (ROOT / "docs" / "traces.md").read_text()


def shown_output(command: str) -> list[str]:
    """The lines the page shows after ``$ command``, up to the next prompt or the block's end."""
    block = DOC.split(f"$ {command}\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line.startswith("$ ") or line.startswith("```"):
            break
        lines.append(line)
    return lines


def test_the_import_and_stats_examples_print_what_the_page_shows(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "q35.jsonl"
    command = "privmem trace import --from qemu-log tests/data/qemu-q35-16g-tid.log -o q35.jsonl"
    assert main(command.split()[1:-1] + [str(out)]) == 3
    captured = capsys.readouterr()
    printed = captured.err.splitlines() + captured.out.replace(str(out), "q35.jsonl").splitlines()
    assert printed == shown_output(command)
    assert main(["trace", "stats", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == shown_output("privmem trace stats q35.jsonl")


def test_the_replay_example_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "small.jsonl"
    assert main(["trace", "import", "--from", "qemu-log", "tests/data/qemu-flat-1g-2vcpu.log", "-o", str(out),
                 "--memory", "1G"]) == 0
    capsys.readouterr()
    assert main(["run", "--trace", str(out), "--backend", "host", "--policy", "lazy"]) == 0
    printed = capsys.readouterr().out.strip()
    shown = shown_output("privmem run --trace small.jsonl --backend host --policy lazy")
    measured = re.compile(r"^(time|VMM peak RSS): +.*$", re.MULTILINE)     # vary run to run
    assert measured.sub(r"\1", printed) == measured.sub(r"\1", "\n".join(shown))
    assert os.path.exists(out)


def example_trace() -> str:
    """The complete trace the page shows: the json block that holds an end marker."""
    blocks = re.findall(r"^```json\n(.*?)^```", DOC, re.M | re.S)
    return next(block for block in blocks if '"privmem_trace_end"' in block)


def test_the_example_trace_replays_as_the_page_shows(tmp_path, capsys):
    from .conftest import KVM_SKIP_REASON

    path = tmp_path / "hello.jsonl"
    path.write_text(example_trace())
    command = "privmem run --trace hello.jsonl --policy eager"
    backend = ["--backend", "host"] if KVM_SKIP_REASON else []
    assert main(["run", "--trace", str(path), "--policy", "eager", *backend]) == 0
    printed = capsys.readouterr().out.strip()
    shown = "\n".join(shown_output(command))
    varies = ["time", "VMM peak RSS"] + (["backend", "exits"] if KVM_SKIP_REASON else [])
    measured = re.compile(rf"^({'|'.join(varies)}): +.*$", re.MULTILINE)
    assert measured.sub(r"\1", printed) == measured.sub(r"\1", shown)
    assert main(["trace", "stats", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == shown_output("privmem trace stats hello.jsonl")


def test_the_example_header_and_the_refused_trace_are_real(tmp_path, capsys):
    from privmem.workload.trace import parse_header

    header = next(block for block in re.findall(r"^```json\n(.*?)^```", DOC, re.M | re.S)
                  if '"regions"' in block and "privmem_trace_end" not in block)
    parsed = parse_header(1, header.strip())
    assert parsed.memory_map.name == "q35" and parsed.vcpus == 2 and parsed.end_marker
    path = tmp_path / "oob.jsonl"
    path.write_text('{"privmem_trace": 1, "memory": 1048576, "vcpus": 1}\n'
                    '{"op": "convert", "gpa": 1048576, "size": 4096, "to": "shared"}\n')
    assert main(["run", "--trace", str(path), "--backend", "host"]) == 2
    err = capsys.readouterr().err.replace(str(path), "oob.jsonl")          # the page runs it in its own folder
    assert err.splitlines() == shown_output("privmem run --trace oob.jsonl")
