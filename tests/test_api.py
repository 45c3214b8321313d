"""The facade: ``privmem.run``, ``privmem.Machine``/``HostMachine`` and ``__version__``, and
an ``import privmem`` that stays cheap."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import privmem
from privmem import InvalidArgument
from privmem.workload import generate, write_trace

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


def test_import_privmem_loads_no_vmm_no_rich_no_matplotlib():
    code = ("import sys, privmem; heavy = [m for m in sys.modules if m.split('.')[0] in ('rich', 'matplotlib') "
            "or m.startswith(('privmem.vmm', 'privmem.kvm', 'privmem.runner', 'importlib.metadata'))]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_version_comes_from_the_package_metadata_or_pyproject():
    with open(ROOT / "pyproject.toml", "rb") as pyproject:
        assert privmem.__version__ == tomllib.load(pyproject)["project"]["version"]
    assert "__version__" in dir(privmem) and "Machine" in dir(privmem)


def test_the_machines_are_the_vmm_ones():
    from privmem.vmm import Machine
    from privmem.vmm.host import HostMachine

    assert privmem.Machine is Machine and privmem.HostMachine is HostMachine
    assert privmem.RunResult.__module__ == "privmem.runner"
    with pytest.raises(AttributeError, match="no attribute 'Machin'"):
        privmem.Machin


def test_run_a_workload_by_name():
    result = privmem.run("ovmf-dma", policy="lazy:budget=1M,max_age=20ms", backend="host", memory="32M",
                         vcpus=2, scale=0.02, seed=3)
    assert isinstance(result, privmem.RunResult)
    assert (result.workload, result.policy, result.backend) == ("ovmf-dma", "lazy:budget=1M,max_age=20ms", "host")
    assert result.memory == 32 * MiB and result.vcpus == 2 and result.budget_bytes == MiB
    assert result.conversions > 0 and result.data_errors == 0


def test_run_a_trace_and_a_trace_file(tmp_path):
    trace = generate("coherent", memory=16 * MiB, scale=0.05, layout="q35")
    from_trace = privmem.run(trace, policy="eager", backend="host", memory="16M", layout="q35")
    path = tmp_path / "coherent.jsonl"
    write_trace(trace, path)
    from_file = privmem.run(path, policy="eager", backend="host")
    assert from_file.conversions == from_trace.conversions > 0
    assert from_file.discards == from_trace.discards and from_file.regions == from_trace.regions
    assert privmem.run(path, backend="host", layout="flat").conversions == from_file.conversions   # the same map
    assert privmem.run(str(path), backend="host").policy == "never"


def test_a_trace_file_without_its_end_marker_warns(tmp_path):
    trace = generate("ovmf-dma", memory=16 * MiB, scale=0.002)
    path = tmp_path / "cut.jsonl"
    write_trace(trace, path)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header.pop("end_marker")
    path.write_text("\n".join([json.dumps(header), *lines[1:-1]]) + "\n")
    with pytest.warns(UserWarning, match="no end marker"):
        assert privmem.run(path, backend="host").data_errors == 0


@pytest.mark.parametrize("kwargs, shown", [
    ({"memory": "32M"}, "memory='32M': the trace sets its own guest memory (16.0 MiB)"),
    ({"vcpus": 2}, "vcpus=2: the trace sets its own vCPUs (1)"),
    ({"layout": "cloud-hypervisor", "memory": "4G"}, "memory='4G': the trace sets its own guest memory"),
    ({"scale": 2.0}, "scale=2.0: shapes generated workloads only"),
    ({"seed": 1}, "seed=1: shapes generated workloads only"),
])
def test_what_a_trace_fixes_is_refused_not_ignored(kwargs, shown):
    trace = generate("ovmf-dma", memory=16 * MiB, scale=0.002)
    with pytest.raises(InvalidArgument) as error:
        privmem.run(trace, backend="host", **kwargs)
    assert str(error.value).startswith(shown)


@pytest.mark.parametrize("args, kwargs, shown", [
    (("fortnite",), {}, "workload_or_trace='fortnite': neither a workload (boot, ovmf-dma"),
    (("ovmf-dma",), {"policy": "lazy:budget=8Q"}, "lazy.budget='8Q': not a size"),
    (("ovmf-dma",), {"backend": "vmware"}, "backend='vmware': unknown (choose from kvm, host)"),
    (("ovmf-dma",), {"memory": "0"}, "memory=0x0"),
    ((42,), {}, "workload_or_trace=42: must be a workload name"),
])
def test_bad_arguments_are_refused_before_any_work(args, kwargs, shown):
    with pytest.raises(InvalidArgument) as error:
        privmem.run(*args, **kwargs)
    assert str(error.value).startswith(shown)


@pytest.mark.kvm
def test_run_on_kvm():
    result = privmem.run("ovmf-dma", policy="batch:n=16", backend="kvm", memory="64M", scale=0.02)
    assert result.backend == "kvm" and result.conversions > 0 and result.discards > 0 and result.data_errors == 0


def test_a_layout_other_than_the_traces_is_refused():
    trace = generate("ovmf-dma", memory=4 << 30, scale=0.002)           # flat: all 4 GiB at GPA 0
    with pytest.raises(InvalidArgument, match=r"^layout='q35': the trace sets its own layout \(flat: \[0x0, "):
        privmem.run(trace, backend="host", layout="q35")
