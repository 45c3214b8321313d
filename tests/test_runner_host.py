"""The host backend and the runner: every workload and policy, data checked byte for byte."""

import pytest

from privmem import AccessDenied, InvalidArgument
from privmem.runner import run_trace
from privmem.vmm.host import HostMachine
from privmem import ops
from privmem.convert import POLICIES
from privmem.workload import WORKLOADS, generate

MEMORY = 64 << 20


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_workload_runs_clean_under_every_policy(workload, policy):
    trace = generate(workload, memory=MEMORY, vcpus=2, scale=0.05)
    result = run_trace(trace, policy, backend="host", sample_interval=0.01)
    assert result.data_errors == 0 and result.dma_errors == 0
    assert result.conversions > 0
    if result.budget_bytes:
        assert result.peak_double_alloc_bytes <= result.budget_bytes
    if policy == "eager":
        assert result.discards > 0 and result.peak_double_alloc_bytes == 0


def test_device_never_touches_private_pages():
    with HostMachine(MEMORY) as machine:
        gpa = 0
        with pytest.raises(AccessDenied, match="private"):
            machine.shared_read(gpa, 16)
        result = machine.run_ops([ops.dma_in(gpa, 4096, 0x42)])
        assert result.dma_errors == 1
        machine.run_ops([ops.convert(gpa, 4096, "shared")])
        machine.shared_write(gpa, b"ok")
        assert machine.shared_read(gpa, 2) == b"ok"


def test_ops_outside_guest_ram_are_refused_before_anything_runs():
    with HostMachine(MEMORY) as machine:
        before = list(machine.engine.store.ranges())
        with pytest.raises(InvalidArgument, match="ops\\[1\\].gpa"):
            machine.run_ops([ops.convert(0, 4096, "shared"), ops.convert(MEMORY, 4096, "shared")])
        assert list(machine.engine.store.ranges()) == before and machine.engine.stats.conversions == 0


def test_unknown_backend_or_tracking_names_the_field():
    trace = generate("ovmf-dma", memory=MEMORY, scale=0.01)
    with pytest.raises(InvalidArgument, match="backend='vmware'"):
        run_trace(trace, backend="vmware")
    with pytest.raises(InvalidArgument, match="tracking"):
        run_trace(trace, backend="host", tracking="memslots")


@pytest.mark.kvm
@pytest.mark.parametrize("workload", ["ovmf-dma", "scatter"])
def test_both_machines_count_the_same_trace_alike(workload):
    """One machine interface: the counters of one trace mean the same on KVM and on the host
    backend (conversions, the engine's changed pages, errors), and exit names share the
    uAPI's spelling."""
    from privmem.kvm import uapi
    from privmem.vmm import Machine

    trace = generate(workload, memory=MEMORY, vcpus=1, seed=3, scale=0.02)
    results = {}
    for cls in (Machine, HostMachine):
        with cls(MEMORY, 1, policy="eager") as machine:
            results[cls.__name__] = machine.run_ops(trace.ops)
    kvm, host = results["Machine"], results["HostMachine"]
    for name in ("conversions", "pages_converted", "data_errors", "dma_errors", "psc_errors"):
        assert getattr(kvm, name) == getattr(host, name), name
    assert kvm.conversions > 0 and kvm.data_errors == 0
    for result in (kvm, host):
        assert "io" in result.exits_by_reason and set(result.exits_by_reason) <= set(uapi.EXIT_REASON_NAMES.values())
