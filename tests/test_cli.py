"""The command line: every subcommand's happy path, printing figures and writing files."""

import dataclasses
import json
from pathlib import Path

import pytest

import privmem
from privmem.cli import main
from privmem.cli.run import run_failed, run_fields
from privmem.convert import POLICIES
from privmem.errors import InvalidArgument
from privmem.workload import generate

DATA = Path(__file__).parent / "data"

INFO_KEYS = {"kvm", "api_version", "vm_types", "memory_attributes", "guest_memfd", "guest_memfd_flags",
             "user_memory2", "memory_fault_info", "exit_hypercall", "hypercall_exit_works", "max_memslots"}
RUN_KEYS = {"workload", "policy", "backend", "memory", "vcpus", "wall_s", "conversions", "pages_converted",
            "exits", "discards", "discarded_bytes", "peak_double_alloc_bytes", "peak_host_bytes", "data_errors"}


def test_info_json_has_every_key(capsys):
    assert main(["info", "--json"]) == 0
    assert INFO_KEYS <= set(json.loads(capsys.readouterr().out))


def test_run_json_has_every_key(capsys):
    assert main(["run", "--backend", "host", "--workload", "ovmf-dma", "--memory", "64M", "--scale", "0.02",
                 "--policy", "lazy", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert RUN_KEYS <= set(result) and result["data_errors"] == 0 and result["policy"] == "lazy"


def test_trace_generate_then_run_it(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    assert main(["trace", "generate", "coherent", "-o", str(path), "--memory", "64M", "--scale", "0.05"]) == 0
    assert main(["run", "--trace", str(path), "--backend", "host", "--policy", "eager"]) == 0
    out = capsys.readouterr().out
    assert "data errors:                0" in out and out.rstrip().endswith("verdict:                    OK")


def test_trace_import_from_a_qemu_log(tmp_path, capsys):
    log = tmp_path / "qemu.log"
    log.write_text("1234@1700000000.000001:kvm_convert_memory start 0x1000000 size 0x2000 private_to_shared\n"
                   "kvm_set_user_memory Slot#0 flags=0x4\n"
                   "1234@1700000000.000009:kvm_convert_memory start 0x1000000 size 0x2000 shared_to_private\n"
                   "kvm_convert_memory start 0xzz size 0x1000 shared_to_private\n")
    out = tmp_path / "trace.jsonl"
    assert main(["trace", "import", "--from", "qemu-log", str(log), "-o", str(out), "--json"]) == 3
    captured = capsys.readouterr()
    assert f"{log}:4: start '0xzz' is not 0x-prefixed hex" in captured.err
    report = json.loads(captured.out)
    assert (report["conversions"], report["malformed"], report["lost"]) == (2, 1, True)
    assert out.read_text().count('"op": "convert"') == 2


@pytest.mark.parametrize("source, data, ops", [("qemu-log", "qemu-q35-16g-none.log", 10),
                                               ("trace-cmd", "trace-cmd-q35-8g.txt", 10),
                                               ("perf-script", "perf-script-q35-8g.txt", 9)])
def test_trace_import_every_source_then_stats(source, data, ops, tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    status = main(["trace", "import", "--from", source, str(DATA / data), "-o", str(out)])
    assert status == (0 if source == "perf-script" else 3)         # a hole, a dropped-events mark, clean
    text = capsys.readouterr().out
    assert f"-> {ops} conversions" in text and "layout: q35" in text and f"written: {out} ({ops} ops)" in text
    assert main(["trace", "stats", str(out)]) == 0
    assert f"conversions: {ops}:" in capsys.readouterr().out
    assert main(["trace", "stats", str(out), "--json", "--flip-ms", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["flip_flop"]["window_ms"] == 1


@pytest.mark.parametrize("backend", ["host", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_an_imported_trace_replays_with_no_data_errors(backend, tmp_path, capsys):
    """A recording today's machines can hold (flat, above their reserved low 2 MiB): two vCPU
    threads, a hypercall and a fault each paired with their conversion."""
    out = tmp_path / "t.jsonl"
    assert main(["trace", "import", "--from", "qemu-log", str(DATA / "qemu-flat-1g-2vcpu.log"), "-o", str(out),
                 "--memory", "1G"]) == 0
    capsys.readouterr()
    assert main(["run", "--trace", str(out), "--backend", backend, "--policy", "lazy", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["vcpus"], result["data_errors"], result["backend"]) == (2, 0, backend)


def test_trace_import_clean_strict_and_overrides(tmp_path, capsys):
    log = tmp_path / "clean.log"
    log.write_text("kvm_convert_memory start 0x200000 size 0x1000 private_to_shared\n")
    out = tmp_path / "t.jsonl"
    assert main(["trace", "import", "--from", "qemu-log", str(log), "-o", str(out), "--memory", "64M",
                 "--layout", "flat", "--vcpus", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["memory"], report["layout"], report["vcpus"], report["inferred"]) == (64 << 20, "flat", 2, None)
    log.write_text("kvm_convert_memory start 0x200001 size 0x1000 private_to_shared\n")
    strict_out = tmp_path / "strict.jsonl"
    assert main(["trace", "import", "--from", "qemu-log", str(log), "-o", str(strict_out), "--strict"]) == 2
    assert "line 1" in capsys.readouterr().err and not strict_out.exists()


def test_trace_import_help_names_sources_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["trace", "import", "--help"])
    text = capsys.readouterr().out
    assert "{qemu-log,trace-cmd,perf-script}" in text and "exit status:" in text and "3  the trace is written" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["trace", "import", "--from", "vmware", "x", "-o", "y"])
    assert exit_info.value.code == 2 and "from='vmware'" in capsys.readouterr().err


def test_bench_quick_on_the_host_backend_writes_json_and_plot(tmp_path, capsys):
    json_out, plot_out = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["bench", "--quick", "--backend", "host", "--memory", "64M", "--repeat", "1",
                 "--json-out", str(json_out), "--plot-out", str(plot_out)]) == 0
    report = json.loads(json_out.read_text())
    assert {row["policy"] for row in report["summary"]} == set(POLICIES)
    assert plot_out.read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "ovmf-dma vs never: " in out
    lines = [line for line in out.splitlines() if " written to " not in line]   # paths stay whole
    assert all(len(line) <= 80 and line == line.rstrip() for line in lines), "a pipe gets 80 columns, unpadded"


@pytest.mark.parametrize("argv, shown", [
    (["run", "--policy", "sometimes"], "policy='sometimes'"),
    (["bench", "--memory", "1Q"], "memory='1Q'"),
    (["run", "--workload", "fortnite"], "workload='fortnite'"),
    (["run", "--vcpus", "0"], "vcpus=0"),
])
def test_bad_arguments_name_the_field_and_value(argv, shown, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and shown in capsys.readouterr().err


def test_missing_trace_file_is_a_clear_error(capsys):
    assert main(["run", "--trace", "/nonexistent/t.jsonl", "--backend", "host"]) == 2
    assert "/nonexistent/t.jsonl" in capsys.readouterr().err


@pytest.mark.parametrize("argv, shown", [
    (["bnech"], "invalid choice: 'bnech'; did you mean 'bench'?"),
    (["bench", "conversoin"], "invalid choice: 'conversoin'; did you mean 'conversion'?"),
])
def test_a_mistyped_command_gets_the_closest_name(argv, shown, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and shown in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["run", "--scale", "1e9"], ["bench", "--scale", "33"], ["trace", "generate", "boot", "-o", "x", "--scale", "1e9"],
])
def test_generation_scale_is_bounded_before_anything_is_allocated(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "at most 32" in capsys.readouterr().err
    with pytest.raises(InvalidArgument, match="at most 32"):
        generate("boot", memory=1 << 30, scale=1e9)


def test_psc_errors_fail_the_run_and_show_in_its_summary():
    result = privmem.run("ovmf-dma", backend="host", memory="64M", scale=0.02)
    assert not run_failed(result) and ("PSC errors", "0") in run_fields(result)
    refused = dataclasses.replace(result, psc_errors=2)
    assert run_failed(refused) and ("PSC errors", "2") in run_fields(refused)
    assert ("verdict", "FAILED") in run_fields(refused)
