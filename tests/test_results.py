"""Results that stand on their own: the envelope on every JSON privmem writes, `privmem report`
reproducing a saved bench table, `privmem compare`, `privmem advise`, and the bad input each
of them refuses."""

import csv
import io
import json
import re
from pathlib import Path

import pytest

from privmem.convert import POLICIES
from privmem.bench import advise, boot, compare, report
from privmem.cli import main
from privmem.results import BACKING, ENVELOPE_KEYS, HOST_KEYS, REQUESTED_KEYS, SCHEMA, loaded_kvm_modules
from privmem.runner import TIMELINE_KEYS

DATA = Path(__file__).parent / "data"
OLD_BENCH = DATA / "bench-schema0.json"
TINY_BENCH = ["bench", "--quick", "--backend", "host", "--memory", "64M", "--scale", "0.05", "--repeat", "2",
              "--workloads", "ovmf-dma", "--policies", "never,lazy"]
TINY_ADVISE = ["advise", "--backend", "host", "--memory", "64M", "--scale", "0.05", "--budgets", "64K,256K",
               "--ages", "5ms,50", "--repeat", "2"]


def assert_envelope(doc: dict, kind: str) -> None:
    assert list(doc)[:len(ENVELOPE_KEYS)] == list(ENVELOPE_KEYS)
    assert (doc["schema"], doc["kind"]) == (SCHEMA, kind)
    assert set(doc["host"]) == set(HOST_KEYS) and doc["host"]["kernel"]
    assert set(REQUESTED_KEYS) <= set(doc["requested"]) and doc["requested"]["backing"] == BACKING
    assert doc["argv"][0] == "privmem" and doc["created"].endswith("+00:00") and doc["privmem_version"]


def tiny_bench(tmp_path, capsys, name="b") -> tuple[Path, str]:
    """A couple of seconds of `privmem bench` on the host backend: its JSON and its stdout."""
    path = tmp_path / f"{name}.json"
    assert main([*TINY_BENCH, "--json-out", str(path), "--plot-out", str(tmp_path / f"{name}.png")]) == 0
    return path, capsys.readouterr().out


# -- the envelope -----------------------------------------------------------------------

def test_bench_json_has_the_envelope_one_row_schema_and_named_timelines():
    config = boot.BenchConfig.quick(workloads=("ovmf-dma",), policies=("never", "lazy"), repeat=1, backend="host",
                                    memslots=False, memory=64 << 20, scale=0.05)
    doc = boot.run(config).as_json(argv=["privmem", "test"])
    assert_envelope(doc, "bench")
    assert doc["requested"]["workloads"] == ["ovmf-dma"] and doc["requested"]["policies"] == ["never", "lazy"]
    assert all(tuple(row) == boot.ROW_KEYS for row in doc["summary"])
    points = [point for run in doc["runs"] for point in run["timeline"]]
    assert points and all(tuple(point) == TIMELINE_KEYS for point in points)
    assert json.loads(json.dumps(doc)) == doc          # what is printed is what is saved


@pytest.mark.kvm
def test_the_contrast_rows_have_every_key_the_others_have():
    config = boot.BenchConfig.quick(workloads=("ovmf-dma",), policies=("never",), repeat=2, backend="kvm",
                                    memory=64 << 20, scale=0.02, roundtrips=200)
    doc = boot.run(config).as_json()
    assert [(row["tracking"], row["backing"]) for row in doc["summary"]] == [
        ("store", "two-file"), ("memslots", "two-file"), ("store", "in-place")]
    assert all(tuple(row) == boot.ROW_KEYS for row in doc["summary"])
    assert all(row["spread"] is not None and row["ratio_to_never"] for row in doc["summary"])
    assert doc["host"]["gpa_width"] and doc["requested"]["in_place"] is True
    in_place = doc["summary"][2]
    assert in_place["discards"] == 0 and in_place["peak_double_alloc_measured_bytes"] == 0
    assert [report.label(row) for row in doc["summary"]] == ["never", "never, memslot tracking", "never, in-place"]
    assert "ovmf-dma designs vs the two-file store (all under never): memslots " in "\n".join(report.headline(doc))


def test_run_and_soak_json_carry_the_envelope(capsys):
    assert main(["run", "--backend", "host", "--workload", "ovmf-dma", "--memory", "64M", "--scale", "0.02",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert_envelope(doc, "run")
    assert doc["requested"]["workloads"] == ["ovmf-dma"] and doc["requested"]["scale"] == 0.02
    assert doc["wall_s"] > 0 and "timeline" not in doc
    assert main(["soak", "--backend", "host", "--seconds", "0.2", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert_envelope(doc, "soak")
    assert doc["requested"]["seconds"] == 0.2 and doc["data_errors"] == 0


def test_bench_flipflop_json_carries_the_envelope(tmp_path, capsys):
    path = tmp_path / "f.json"
    assert main(["bench", "flipflop", "--flips", "20", "--json-out", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert_envelope(doc, "bench-flipflop")
    assert doc["requested"]["flips"] == 20 and [row["policy"] for row in doc["results"]] == list(POLICIES)


@pytest.mark.kvm
def test_bench_throughput_compares_vcpu_counts_in_the_envelope(tmp_path, capsys):
    path = tmp_path / "t.json"
    assert main(["bench", "throughput", "--conversions", "200", "--repeat", "1", "--policies", "never",
                 "--json-out", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert_envelope(doc, "bench-throughput")
    rows = doc["results"]["rows"]
    assert [(row["vcpus"], row["policy"]) for row in rows] == [(1, "never"), (2, "never")]
    assert all(row["conversions"] == 200 * row["vcpus"] and row["conversions_per_s"] > 0 for row in rows)
    assert len(doc["results"]["beside_punches_s"]) == 1
    out = capsys.readouterr().out
    assert "never: 2 vCPUs convert" in out and "beside 8 punches of 256 MiB on vCPU 0" in out


@pytest.mark.kvm
def test_bench_conversion_puts_the_three_designs_side_by_side(tmp_path, capsys):
    path = tmp_path / "c.json"
    assert main(["bench", "conversion", "--flips", "200", "--repeat", "1", "--json-out", str(path)]) == 0
    doc = json.loads(path.read_text())
    assert_envelope(doc, "bench-conversion")
    designs = doc["results"]["designs"]
    assert [row["design"] for row in designs] == ["never", "eager", "in-place"]
    assert all(row["conversions"] == 400 and row["roundtrip_us"] > 0 and row["vmm_us"] > 0 for row in designs)
    steps = doc["results"]["steps_us"]
    assert set(steps) == {"eager", "in-place"} and all(us > 0 for timed in steps.values() for us in timed.values())
    out = " ".join(capsys.readouterr().out.split())
    assert "per conversion beyond never, guest to guest: eager" in out and "mprotect" in out


def test_bench_throughput_refuses_counts_without_one_first(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "throughput", "--vcpus", "2,4"])
    assert "vcpus='2,4': give distinct counts, 1 first" in capsys.readouterr().err


def test_the_kvm_module_comes_from_sysfs_or_proc_modules(tmp_path):
    sysfs = tmp_path / "module"
    (sysfs / "kvm").mkdir(parents=True)
    (sysfs / "kvm_amd").mkdir()
    assert loaded_kvm_modules(str(sysfs), "/nonexistent") == ["kvm_amd"]
    modules = tmp_path / "modules"
    modules.write_text("kvm_intel 425984 0 - Live 0x0\nkvm 1404928 1 kvm_intel, Live 0x0\n")
    assert loaded_kvm_modules(str(tmp_path / "none"), str(modules)) == ["kvm_intel"]
    assert loaded_kvm_modules(str(tmp_path / "none"), "/nonexistent") == []


# -- report -----------------------------------------------------------------------------

def test_report_reproduces_the_bench_table_exactly(tmp_path, capsys):
    path, bench_out = tiny_bench(tmp_path, capsys)
    assert main(["report", str(path)]) == 0
    report_out = capsys.readouterr().out
    assert "privmem bench: 64.0 MiB guest" in report_out and "data errors across all runs: 0" in report_out
    # The bench printed exactly this, then the line saying where its files went.
    assert bench_out.endswith(report_out + f"JSON written to {path}; plot written to {tmp_path / 'b.png'}\n")


def test_report_formats_markdown_csv_and_json(tmp_path, capsys):
    path, _ = tiny_bench(tmp_path, capsys)
    doc = report.load(str(path))
    assert main(["report", str(path), "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| " + " | ".join(header for header, _ in report.COLUMNS) + " |"
    assert lines[1].startswith("|---|---|---:|") and len(lines) == 2 + len(doc["summary"])
    assert lines[2] == "| " + " | ".join(report.cells(doc["summary"][0])) + " |"
    assert main(["report", str(path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [tuple(row) for row in rows] == [boot.ROW_KEYS] * len(doc["summary"])
    assert [float(row["wall_s"]) for row in rows] == [row["wall_s"] for row in doc["summary"]]
    assert rows[0]["budget_bytes"] == ""                             # never has no budget: empty, not "None"
    assert main(["report", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == doc


def test_report_replots_a_saved_bench(tmp_path, capsys):
    path, _ = tiny_bench(tmp_path, capsys)
    plot = tmp_path / "again.png"
    assert main(["report", str(path), "--plot-out", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_report_reads_a_bench_file_from_before_the_envelope(tmp_path, capsys):
    doc = report.load(str(OLD_BENCH))
    assert (doc["schema"], doc["upgraded_from_schema"], doc["requested"]["backend"]) == (SCHEMA, 0, "kvm")
    assert doc["requested"]["policies"] == ["never", "eager"] and set(doc["host"]) == set(HOST_KEYS)
    assert all(tuple(point) == TIMELINE_KEYS for run in doc["runs"] for point in run["timeline"])
    assert main(["report", str(OLD_BENCH), "--plot-out", str(tmp_path / "old.png")]) == 0
    out = capsys.readouterr().out
    memslot_row = next(line for line in out.splitlines() if line.startswith("memslots "))
    assert "3.770x       - " in memslot_row                            # the old memslot row had no spread
    assert "designs vs the two-file store (all under never): memslots 3.77x" in out
    assert main(["report", str(OLD_BENCH), "--wide"]) == 0
    memslot_row = next(line for line in capsys.readouterr().out.splitlines() if "memslot tracking" in line)
    assert "3.770x" in memslot_row and "│      - │" in memslot_row


def test_bench_prints_other_formats_too(tmp_path, capsys):
    assert main([*TINY_BENCH, "--format", "markdown", "--json-out", str(tmp_path / "b.json"),
                 "--plot-out", str(tmp_path / "b.png")]) == 0
    assert "| ovmf-dma | lazy |" in capsys.readouterr().out


# -- compare ----------------------------------------------------------------------------

def test_compare_two_runs_of_the_same_code(tmp_path, capsys):
    a, _ = tiny_bench(tmp_path, capsys, "a")
    b, _ = tiny_bench(tmp_path, capsys, "b")
    plot = tmp_path / "compare.png"
    assert main(["compare", str(a), str(b), "--plot-out", str(plot)]) == 0
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())                           # lines wrap at words to 80 columns
    assert "privmem compare: A = " in out and "time B/A" in out
    assert "rows within noise (|B/A - 1| <= noise" in out
    assert "warning" not in captured.err                           # same host, same guest
    assert plot.read_bytes()[:4] == b"\x89PNG"


def row(policy, wall_s, spread, measured=4096, tracking="store", rounds=3):
    return {**dict.fromkeys(boot.ROW_KEYS, 0), "workload": "w", "policy": policy, "tracking": tracking,
            "wall_s": wall_s, "spread": spread, "rounds": rounds, "peak_double_alloc_measured_bytes": measured}


def bench_doc(rows, **host):
    return {"host": {"kernel": "6.18", "kvm_module": "kvm_pvm", "cpu_model": "EPYC", "gpa_width": 48, **host},
            "requested": {"backend": "kvm", "memory": 1 << 30, "vcpus": 1}, "summary": rows}


def test_compare_reads_each_ratio_against_the_larger_spread():
    a = bench_doc([row("never", 1.0, 0.02), row("eager", 1.0, 0.02), row("lazy", 1.0, 0.01, measured=0),
                   row("keep-shared", 1.0, 0.0)])
    b = bench_doc([row("never", 1.05, 0.06), row("eager", 1.5, 0.1), row("lazy", 0.9, 0.02, measured=0),
                   row("adaptive", 1.0, 0.0)])
    result = compare.compare(a, b)
    verdicts = {r.key[1]: r.verdict for r in result.rows}
    assert verdicts == {"never": compare.WITHIN, "eager": compare.SLOWER, "lazy": compare.FASTER,
                        "keep-shared": compare.ONLY_A, "adaptive": compare.ONLY_B}
    never = result.rows[0]
    assert never.time_ratio == pytest.approx(1.05) and never.noise == 0.06 and never.double_alloc_ratio == 1.0
    assert result.rows[2].double_alloc_ratio == 1.0               # 0 B both sides: the same, not undefined
    assert result.within_noise == 1 and result.warnings == []
    assert "1 of 3 rows within noise" in compare.summary(result)


def test_compare_never_reads_noise_below_the_median_spread():
    """Two rounds that agree by chance give a row a spread near 0; the machine's noise, the
    median spread of all rows, is the floor."""
    a = bench_doc([row("never", 1.0, 0.05), row("eager", 1.0, 0.05), row("lazy", 1.0, 0.001)])
    b = bench_doc([row("never", 1.0, 0.05), row("eager", 1.0, 0.05), row("lazy", 1.03, 0.0)])
    result = compare.compare(a, b)
    assert result.noise_floor == 0.05 and result.rows[2].noise == 0.05
    assert result.rows[2].verdict == compare.WITHIN
    assert "at least 5.0%, the median spread of all rows" in compare.summary(result)


def test_compare_warns_about_other_hosts_guests_and_single_rounds():
    a = bench_doc([row("never", 1.0, 0.0, rounds=1)])
    b = bench_doc([row("never", 1.0, 0.0)], kernel="6.19")
    b["requested"]["memory"] = 2 << 30
    warnings = compare.compare(a, b).warnings
    assert any("different hosts (kernel '6.18' vs '6.19')" in w for w in warnings)
    assert any("different guests (memory 1073741824 vs 2147483648)" in w for w in warnings)
    assert any("A has single-round rows" in w for w in warnings)


def test_compare_with_a_file_from_before_the_envelope_warns_and_goes_on(tmp_path, capsys):
    b, _ = tiny_bench(tmp_path, capsys)
    assert main(["compare", str(OLD_BENCH), str(b)]) == 0
    captured = capsys.readouterr()
    assert "privmem: warning: A did not record its host" in captured.err
    assert "different guests (backend 'kvm' vs 'host'" in captured.err
    assert "only in A" in captured.out


# -- advise -----------------------------------------------------------------------------

def test_advise_on_the_host_backend(tmp_path, capsys):
    json_out, plot_out = tmp_path / "a.json", tmp_path / "a.png"
    assert main([*TINY_ADVISE, "--json-out", str(json_out), "--plot-out", str(plot_out)]) == 0
    out = " ".join(capsys.readouterr().out.split())     # headlines wrap at words to the console width
    doc = json.loads(json_out.read_text())
    assert_envelope(doc, "advise")
    assert doc["requested"]["budgets"] == [64 << 10, 256 << 10] and doc["requested"]["ages_s"] == [0.005, 0.05]
    settings = [row["setting"] for row in doc["rows"]]
    assert settings[:3] == ["never", "eager", "keep-shared"] and len(settings) == 3 + 2 * 2 + 2
    assert "lazy budget 64.0 KiB, max age 5 ms" in settings and "adaptive budget 256.0 KiB" in settings
    assert all(tuple(row)[:-1] == advise.ROW_KEYS and row["rounds"] == 2 for row in doc["rows"])
    chosen = next(row for row in doc["rows"] if row["setting"] == doc["recommendation"]["setting"])
    assert chosen["ratio_to_never"] <= 1.02 and doc["front"]
    assert f"recommended: {doc['recommendation']['line']}" in out and "rule: the lowest kernel-measured" in out
    assert f"sweep: {doc['runs']} runs in" in out and doc["runs"] == 2 * len(settings)
    assert plot_out.read_bytes()[:4] == b"\x89PNG"


def test_advise_on_a_trace_file(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    assert main(["trace", "generate", "ovmf-dma", "-o", str(trace), "--memory", "64M", "--scale", "0.02"]) == 0
    json_out = tmp_path / "a.json"
    assert main(["advise", "--trace", str(trace), "--backend", "host", "--budgets", "1M", "--ages", "50",
                 "--repeat", "1", "--json-out", str(json_out), "--plot-out", str(tmp_path / "a.png")]) == 0
    doc = json.loads(json_out.read_text())
    assert doc["requested"]["trace"] == str(trace) and doc["requested"]["workloads"] is None
    assert doc["requested"]["memory"] == 64 << 20 and len(doc["rows"]) == 5


def advise_row(setting, ratio, measured, errors=0):
    return {"setting": setting, "ratio_to_never": ratio, "peak_double_alloc_measured_bytes": measured,
            "data_errors": errors, "dma_errors": 0}


def test_pareto_front_and_the_recommendation_rule():
    rows = [advise_row("never", 1.0, 100), advise_row("eager", 1.3, 0), advise_row("lazy a", 1.01, 40),
            advise_row("lazy b", 1.015, 40), advise_row("lazy c", 0.99, 60), advise_row("lazy d", 1.05, 10),
            advise_row("broken", 0.9, 0, errors=1)]
    assert advise.pareto_front(rows) == [1, 5, 2, 4]             # by peak; never and lazy b are beaten
    assert advise.recommend(rows, 0.02) == 2                      # lowest peak within 2%; ties to the faster
    assert advise.recommend(rows, 0.10) == 5
    assert advise.recommend(rows, 0.0) == 4
    assert advise.recommend([advise_row("never", 1.0, 100), advise_row("eager", 1.5, 0)], 0.02) == 0


def test_default_budgets_scale_with_memory_and_ages_parse():
    assert advise.default_budgets(1 << 30) == (256 << 10, 1 << 20, 4 << 20, 16 << 20)
    assert advise.default_budgets(1 << 20) == (4096, 16 << 10)    # at least a page, no duplicates
    assert [advise.parse_age(text) for text in ("20ms", "0.5s", "20", " 5MS ")] == [0.02, 0.5, 0.02, 0.005]
    assert advise.Setting("lazy", 8 << 20, 0.02).label == "lazy budget 8.0 MiB, max age 20 ms"


# -- bad input --------------------------------------------------------------------------

def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def bench_with(tmp_path, capsys, change):
    path, _ = tiny_bench(tmp_path, capsys)
    doc = json.loads(path.read_text())
    change(doc)
    return write(tmp_path, "changed.json", json.dumps(doc))


BAD_REPORTS = {
    "missing file": (lambda tmp, cap: "/nonexistent/b.json", r"file='/nonexistent/b\.json': no such file"),
    "a directory": (lambda tmp, cap: str(tmp), r"file='.*': is a directory"),
    "not JSON": (lambda tmp, cap: write(tmp, "x.json", "{oops"), r"file='.*x\.json': not JSON \(line 1 column 2"),
    "not an object": (lambda tmp, cap: write(tmp, "x.json", "[1, 2]"), r"not a privmem result \(a JSON list"),
    "old file without summary": (lambda tmp, cap: write(tmp, "x.json", '{"runs": [], "backend": "kvm"}'),
                                 r"not a privmem bench result: no 'summary' key"),
    "newer schema": (lambda tmp, cap: bench_with(tmp, cap, lambda d: d.update(schema=99)),
                     r"schema=99: .*reads schemas 0 to 1"),
    "half an envelope": (lambda tmp, cap: bench_with(tmp, cap, lambda d: d.pop("host")),
                         r"the envelope has no 'host' key"),
    "another kind": (lambda tmp, cap: bench_with(tmp, cap, lambda d: d.update(kind="advise")),
                     r"kind='advise': .*expected a bench result"),
    "a row's time is text": (lambda tmp, cap: bench_with(tmp, cap, lambda d: d["summary"][1].update(wall_s="fast")),
                             r"summary\[1\]\.wall_s='fast': .*must be a number"),
    "no requested memory": (lambda tmp, cap: bench_with(tmp, cap, lambda d: d["requested"].pop("memory")),
                            r"requested=.*has no 'memory' key"),
}


@pytest.mark.parametrize("name", list(BAD_REPORTS))
def test_report_refuses_bad_files_with_one_clear_line(name, tmp_path, capsys):
    make, message = BAD_REPORTS[name]
    path = make(tmp_path, capsys)
    capsys.readouterr()
    assert main(["report", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("privmem: "), err
    assert re.search(message, err), err


def test_compare_names_the_side_that_is_bad(tmp_path, capsys):
    a, _ = tiny_bench(tmp_path, capsys)
    assert main(["compare", str(a), "/nonexistent/b.json"]) == 2
    assert capsys.readouterr().err == "privmem: B='/nonexistent/b.json': no such file\n"


BAD_ADVICE = {
    "unknown workload": (["--workload", "fortnite"], r"workload='fortnite': unknown"),
    "empty budget list": (["--budgets", ","], r"budgets=\[\]: give 1 to 8 budgets"),
    "too many budgets": (["--budgets", ",".join(f"{n}M" for n in range(1, 10))], r"give 1 to 8 budgets"),
    "a budget below a page": (["--budgets", "1K"], r"budgets='1K': must be at least 4.0 KiB"),
    "a budget above memory": (["--budgets", "128M"], r"budgets=134217728: larger than the guest's memory"),
    "a bad size": (["--budgets", "1Q"], r"budgets='1Q': not a size"),
    "empty age list": (["--ages", ""], r"ages=\[\]: give 1 to 8 ages"),
    "a zero age": (["--ages", "0ms"], r"ages=0.0: each age must be in \(0, 10\]"),
    "an age in weeks": (["--ages", "2w"], r"ages='2w': not an age"),
    "too many rounds": (["--repeat", "11"], r"repeat=11: at most 10"),
    "negative tolerance": (["--tolerance=-1%"], r"tolerance=-0.01: must be in \[0, 1\]"),
    "unwritable JSON output": (["--json-out", "/nonexistent/dir/a.json"],
                               r"json-out='/nonexistent/dir/a\.json': directory '/nonexistent/dir' does not exist"),
    "plot output is a directory": (["--plot-out", "/tmp"], r"plot-out='/tmp': is a directory"),
    "a trace with a guest size": (["--trace", "t.jsonl", "--memory", "1G"],
                                  r"--memory='1G': a trace sets its own guest"),
    "a missing trace": (["--trace", "/nonexistent/t.jsonl"], r"/nonexistent/t\.jsonl"),
}


@pytest.mark.parametrize("name", list(BAD_ADVICE))
def test_advise_refuses_bad_input_before_the_sweep(name, tmp_path, capsys, monkeypatch):
    def no_runs(*args, **kwargs):
        raise AssertionError("a run started")

    monkeypatch.setattr(advise, "run_program", no_runs)
    extra, message = BAD_ADVICE[name]
    argv = [*TINY_ADVISE, "--json-out", str(tmp_path / "a.json"), "--plot-out", str(tmp_path / "a.png")]
    if "--trace" in extra:
        argv = [arg for arg in argv if arg not in ("--memory", "64M", "--scale", "0.05")]
    try:
        status = main([*argv, *extra])
    except SystemExit as exit_info:         # argparse's own exit for a value it parses
        status = exit_info.code
    err = capsys.readouterr().err
    assert status == 2 and re.search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "a.json").exists()


def test_bench_checks_its_output_paths_before_running(capsys):
    assert main([*TINY_BENCH, "--json-out", "/nonexistent/b.json"]) == 2
    assert capsys.readouterr().err == ("privmem: json-out='/nonexistent/b.json': directory '/nonexistent' "
                                       "does not exist\n")


def test_docs_results_names_every_key_privmem_writes():
    doc = (Path(__file__).parent.parent / "docs" / "results.md").read_text()
    keys = (*ENVELOPE_KEYS, *HOST_KEYS, *REQUESTED_KEYS, *boot.ROW_KEYS, *advise.ROW_KEYS, *TIMELINE_KEYS, "on_front")
    assert [key for key in keys if f"`{key}`" not in doc] == []
