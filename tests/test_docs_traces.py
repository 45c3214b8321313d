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
