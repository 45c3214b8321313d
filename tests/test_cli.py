"""The command line: every subcommand's happy path, printing figures and writing files."""

import json

import pytest

from privmem.cli import main

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
    assert "data errors 0" in capsys.readouterr().out


def test_trace_import_from_a_qemu_log(tmp_path, capsys):
    log = tmp_path / "qemu.log"
    log.write_text("1234@1700000000.000001:kvm_convert_memory start 0x1000000 size 0x2000 private_to_shared\n"
                   "kvm_set_user_memory Slot#0 flags=0x4\n"
                   "1234@1700000000.000009:kvm_convert_memory start 0x1000000 size 0x2000 shared_to_private\n"
                   "kvm_convert_memory start 0xzz size 0x1000 shared_to_private\n")
    out = tmp_path / "trace.jsonl"
    assert main(["trace", "import", "--from", "qemu-log", str(log), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert ":4:" in captured.err and json.loads(captured.out)["converted"] == 2
    assert out.read_text().count('"op": "convert"') == 2


def test_bench_quick_on_the_host_backend_writes_json_and_plot(tmp_path, capsys):
    json_out, plot_out = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["bench", "--quick", "--backend", "host", "--memory", "64M", "--repeat", "1",
                 "--json-out", str(json_out), "--plot-out", str(plot_out)]) == 0
    report = json.loads(json_out.read_text())
    assert {row["policy"] for row in report["summary"]} == {"never", "eager", "keep-shared", "lazy", "adaptive"}
    assert plot_out.read_bytes()[:4] == b"\x89PNG"
    assert "time vs never" in capsys.readouterr().out


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
