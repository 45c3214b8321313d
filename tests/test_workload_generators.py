"""Workload generators: determinism, placement, per-vCPU ownership, the numbers from the
reference (§6), and page-state consistency checked by a naive per-page twin of the model."""

from collections import defaultdict

import pytest

from privmem import PAGE_SIZE, InvalidArgument
from privmem.workload import (DEFAULT_WORKLOAD, WORKLOADS, Op, Trace, check_trace, generate, summary,
                              swiotlb_size)
from privmem.workload.generators import boot_layout
from privmem.units import parse_size

MiB = 1 << 20
GiB = 1 << 30
CASES = [(64 * MiB, 1), (64 * MiB, 3), (1 * GiB, 1), (1 * GiB, 4)]


def naive_replay(trace: Trace) -> dict:
    """Per-page dict twin of model.check_trace: asserts every data op sees the view it asks for
    and reads back what was last written since the page's last conversion.  Returns the states."""
    state: dict[int, str] = defaultdict(lambda: "private")
    data: dict[int, int] = {}
    for index, op in enumerate(trace.ops):
        pages = range(op.gpa // PAGE_SIZE, op.end // PAGE_SIZE)
        if op.kind == "convert":
            for page in pages:
                state[page] = op.to
                data.pop(page, None)
            continue
        view = "shared" if op.kind.startswith("dma") else op.view
        for page in pages:
            assert state[page] == view, (index, op, page)
            if op.kind in ("write", "dma_in"):
                data[page] = op.pattern
            elif op.kind in ("verify", "dma_out"):
                assert data.get(page) == op.pattern, (index, op, page)
    return state


@pytest.fixture(scope="module")
def traces():
    return {(name, memory, vcpus): generate(name, memory, vcpus)
            for name in WORKLOADS for memory, vcpus in CASES}


def test_scatter_reaches_the_first_and_the_last_page_of_a_terabyte():
    trace = generate("scatter", 1 << 40, 2, layout="q35")
    gpas = {op.gpa for op in trace.ops}
    assert 0 in gpas and trace.memory_map.top - PAGE_SIZE in gpas
    small = generate("scatter", 64 * MiB, 2)
    check_trace(small)
    assert summary(small)["conversions"] == 2 * 512


def test_catalogue():
    assert DEFAULT_WORKLOAD == "boot" and set(WORKLOADS) >= {"boot", "ovmf-dma", "swiotlb", "accept",
                                                             "coherent", "random", "scatter"}
    assert all(isinstance(text, str) and text for text in WORKLOADS.values())
    assert generate().name == "boot" and generate().memory == GiB


@pytest.mark.parametrize("name", WORKLOADS)
def test_deterministic_by_seed(name):
    a = generate(name, 64 * MiB, 2, seed=7)
    assert a == generate(name, 64 * MiB, 2, seed=7)
    assert a != generate(name, 64 * MiB, 2, seed=8)


@pytest.mark.parametrize("memory, vcpus", CASES)
@pytest.mark.parametrize("name", WORKLOADS)
def test_consistent_and_placed(traces, name, memory, vcpus):
    trace = traces[(name, memory, vcpus)]
    assert (trace.name, trace.memory, trace.vcpus) == (name, memory, vcpus)
    assert trace.ops
    assert min(op.gpa for op in trace.ops) >= 0                 # a trace owns every page, page 0 too
    assert max(op.end for op in trace.ops) <= memory
    assert {op.vcpu for op in trace.ops} == set(range(vcpus))
    result = check_trace(trace)        # views, data, ownership
    naive = naive_replay(trace)
    assert sum(1 for s in naive.values() if s == "shared") == result.shared_pages


@pytest.mark.parametrize("memory, vcpus", CASES)
@pytest.mark.parametrize("name", WORKLOADS)
def test_per_vcpu_ownership(traces, name, memory, vcpus):
    """Pages a vCPU reads or writes are read/written and converted by that vCPU only."""
    trace = traces[(name, memory, vcpus)]
    data_owner, convert_owners = {}, defaultdict(set)
    for op in trace.ops:
        for page in range(op.gpa // PAGE_SIZE, op.end // PAGE_SIZE):
            if op.kind == "convert":
                convert_owners[page].add(op.vcpu)
            else:
                assert data_owner.setdefault(page, op.vcpu) == op.vcpu
    for page, vcpu in data_owner.items():
        assert convert_owners[page] <= {vcpu}
    shared_by_many = [page for page, owners in convert_owners.items() if len(owners) > 1]
    if name == "random" and vcpus > 1:
        assert shared_by_many and not set(shared_by_many) & set(data_owner)
    else:
        assert not shared_by_many


@pytest.mark.parametrize("reserved", [0, 4 * MiB, 17 * MiB, 32 * MiB])
@pytest.mark.parametrize("name", WORKLOADS)
def test_reserved_is_a_parameter(name, reserved):
    trace = generate(name, 128 * MiB, 2, reserved=reserved, scale=0.2)
    assert min(op.gpa for op in trace.ops) >= reserved
    check_trace(trace, reserved=reserved)


def test_swiotlb_clamp_numbers():
    assert swiotlb_size(512 * MiB) == 64 * MiB         # 6% = 30.7 MiB -> the 64 MiB floor
    assert swiotlb_size(1 * GiB) == 64 * MiB           # 61.4 MiB -> 64 MiB
    assert swiotlb_size(2 * GiB) == 122 * MiB          # 122.9 MiB, rounded down to 2 MiB
    assert swiotlb_size(16 * GiB) == 982 * MiB         # 983.0 MiB
    assert swiotlb_size(17 * GiB) == 1 * GiB           # 1044 MiB -> the 1 GiB ceiling
    assert swiotlb_size(64 * GiB) == 1 * GiB


@pytest.mark.parametrize("memory, vcpus, pool", [
    (1 * GiB, 1, 64 * MiB),
    (1 * GiB, 3, 60 * MiB),          # three areas of whole 2 MiB chunks
    (64 * MiB, 1, 64 * MiB),         # the whole of a 64 MiB guest (the minimum pool)
    (80 * MiB, 1, 64 * MiB),
    (2 * GiB, 1, 122 * MiB),
    (2 * GiB, 2, 120 * MiB),         # 122 / 2 = 61 -> 60 MiB per vCPU
    (32 * GiB, 1, 1 * GiB),
])
def test_swiotlb_pool(memory, vcpus, pool):
    trace = generate("swiotlb", memory, vcpus, scale=0.05)
    converts = [op for op in trace.ops if op.kind == "convert"]
    assert all(op.to == "shared" and op.size == 2 * MiB and op.gpa % (2 * MiB) == 0 for op in converts)
    assert sum(op.size for op in converts) == pool
    assert len({op.gpa for op in converts}) == len(converts)           # converted once
    for vcpu, ops in enumerate(trace.per_vcpu()):
        kinds = [op.kind for op in ops]
        first_data = next(i for i, kind in enumerate(kinds) if kind != "convert")
        assert "convert" not in kinds[first_data:]                      # no conversion afterwards
    s = summary(trace)
    assert s["to_private"] == 0 and s["by_kind"]["dma_in"] + s["by_kind"]["dma_out"] > 0


def test_ovmf_dma_numbers():
    trace = generate("ovmf-dma", GiB, 1)
    s = summary(trace)
    assert s["to_shared"] == s["to_private"] == 5000
    sizes = defaultdict(int)
    for op in trace.ops:
        if op.kind == "convert":
            sizes[op.pages] += 1
    assert sizes[1] + sizes[2] > 0.97 * 10000
    assert set(sizes) <= {1, 2, 8, 257} and sizes[257] == 4           # two > 1 MiB, each both ways
    # the flip-flop: a few hundred pages carry all conversions, nearby
    assert s["distinct_pages_converted"] < 300
    assert s["reconverted_pages"] > 0.95 * s["pages_converted"]
    assert s["highest_end"] - s["lowest_gpa"] <= 2 * MiB
    # each transaction's pages go shared -> device/guest access -> private again
    assert check_trace(trace).shared_pages == 0
    assert summary(generate("ovmf-dma", GiB, 1, scale=0.1))["to_shared"] == 500
    assert summary(generate("ovmf-dma", GiB, 4, scale=0.1))["per_vcpu"][3] > 0


def test_ovmf_dma_verifies_reused_private_pages():
    """A bounce page rewritten after its Unmap is verified before its next Map."""
    trace = generate("ovmf-dma", 64 * MiB, 1, scale=0.02)
    ops = trace.ops
    hits = 0
    for i, op in enumerate(ops):
        if op.kind == "convert" and op.to == "shared" and i and ops[i - 1].kind == "verify":
            assert ops[i - 1].view == "private" and ops[i - 1].gpa >= op.gpa
            hits += 1
    assert hits > 10


def test_accept_chunks():
    trace = generate("accept", GiB, 2)
    for vcpu, ops in enumerate(trace.per_vcpu()):
        setup = ops[0]
        assert setup.kind == "convert" and setup.to == "shared" and setup.gpa % (2 * MiB) == 0
        accepted = [op for op in ops[1:] if op.kind == "convert"]
        assert all(op.to == "private" and op.size in (4 * MiB, 2 * MiB) for op in accepted)
        assert sum(op.size for op in accepted) == setup.size               # scale 1: all of it
        for i, op in enumerate(ops):
            if op.kind == "convert" and op.to == "private":
                assert ops[i + 1] == Op("touch", op.gpa, op.size, vcpu, view="private")
    assert check_trace(trace).shared_pages == 0
    half = summary(generate("accept", GiB, 1, scale=0.5))
    assert half["to_private"] == 128                                        # 256 chunks of 4 MiB


def test_coherent_lifecycles():
    trace = generate("coherent", GiB, 1)
    s = summary(trace)
    assert s["to_shared"] == 512
    assert 0.4 * 512 < s["to_private"] < 0.9 * 512                          # most freed, some never
    assert all(1 <= op.pages <= 4 for op in trace.ops if op.kind == "convert")
    assert 0 < check_trace(trace).shared_pages                              # the never-freed ones


def test_random_overlaps():
    trace = generate("random", 256 * MiB, 4, seed=3)
    common = [op for op in trace.ops if op.kind == "convert" and op.gpa >= boot_free_start(trace)]
    assert len({op.vcpu for op in common}) == 4
    result = check_trace(trace)
    assert result.noop_conversion_pages > 0                                 # overlapping requests
    assert summary(trace)["ops"] == 10000


def boot_free_start(trace):
    # the common window follows the per-vCPU 1 MiB windows, 2 MiB aligned
    return ((trace.vcpus * MiB + 2 * MiB - 1) // (2 * MiB)) * 2 * MiB


def test_boot_composition():
    trace = generate("boot", GiB, 2)
    layout = boot_layout(GiB, 2)
    fw_base, fw_size = layout["firmware"]
    ops = trace.ops
    firmware = [op for op in ops if fw_base <= op.gpa < fw_base + fw_size]
    assert {op.vcpu for op in firmware} == {0}
    assert sum(1 for op in firmware if op.kind == "convert" and op.to == "shared") == 5000
    last_fw = max(i for i, op in enumerate(ops) if fw_base <= op.gpa < fw_base + fw_size)
    assert all(fw_base <= op.gpa < fw_base + fw_size for op in ops[:last_fw])   # firmware first
    for vcpu in range(2):
        pool_base, pool_size = layout["swiotlb"][vcpu]
        kernel = [op for op in ops[last_fw + 1:] if op.vcpu == vcpu]
        setup = kernel[:pool_size // (2 * MiB)]
        assert all(op.kind == "convert" and op.to == "shared" and op.size == 2 * MiB for op in setup)
        assert sum(op.size for op in setup) == pool_size
    assert sum(size for _, size in layout["swiotlb"]) == 64 * MiB
    assert layout["accept"][0][0] == 512 * MiB and sum(s for _, s in layout["accept"]) == 512 * MiB
    s = summary(trace)
    assert s["by_kind"]["touch"] == 32                                     # 25% of 128 chunks
    check_trace(trace)


def test_scale_multiplies():
    small, big = summary(generate("boot", GiB, 1, scale=0.1)), summary(generate("boot", GiB, 1, scale=0.5))
    assert small["conversions"] * 4 < big["conversions"]
    assert summary(generate("swiotlb", GiB, 1, scale=2))["ops"] > summary(generate("swiotlb", GiB, 1))["ops"]


@pytest.mark.parametrize("name", WORKLOADS)
def test_too_small_memory(name):
    with pytest.raises(InvalidArgument) as info:
        generate(name, PAGE_SIZE, 2)
    assert info.value.field == "memory" and "needs at least" in str(info.value)
    needed = parse_size(str(info.value).split("(--memory ")[1].rstrip(")"))
    generate(name, max(needed, 32 * MiB) if name == "boot" else needed, 2, scale=0.05)


@pytest.mark.parametrize("kwargs, field", [
    (dict(name="bogus"), "workload"),
    (dict(memory=4097), "memory"),
    (dict(vcpus=0), "vcpus"),
    (dict(seed="1"), "seed"),
    (dict(scale=0), "scale"),
    (dict(scale=float("nan")), "scale"),
    (dict(reserved=100), "reserved"),
    (dict(reserved=GiB), "reserved"),
])
def test_arguments(kwargs, field):
    args = dict(name="boot", memory=GiB, vcpus=1)
    args.update(kwargs)
    with pytest.raises(InvalidArgument) as info:
        generate(**args)
    assert info.value.field == field


def test_summary_fields():
    trace = Trace("s", 64 * MiB, 2, [
        Op("convert", 0, 8192, to="shared"), Op("dma_in", 0, 4096, pattern=1),
        Op("convert", 4096, 8192, vcpu=1, to="private"),
    ])
    s = summary(trace)
    assert s["conversions"] == 2 and s["to_shared"] == 1 and s["to_private"] == 1
    assert s["pages_converted"] == 4 and s["bytes_converted"] == 4 * PAGE_SIZE
    assert s["distinct_pages_converted"] == 3 and s["reconverted_pages"] == 1
    assert s["data_bytes"]["dma_in"] == 4096 and s["per_vcpu"] == [2, 1]
    assert (s["lowest_gpa"], s["highest_end"]) == (0, 12288)


# ---- the model catches broken traces ----------------------------------------------------------

BROKEN = [
    ([Op("write", 0, 4096, view="shared", pattern=1)], "ops[0].view"),
    ([Op("dma_in", 0, 4096, pattern=1)], "ops[0].kind"),
    ([Op("convert", 0, 8192, to="shared"), Op("dma_out", 0, 4096, pattern=1)], "ops[1].pattern"),
    ([Op("write", 0, 4096, view="private", pattern=1), Op("verify", 0, 4096, view="private", pattern=2)],
     "ops[1].pattern"),
    ([Op("write", 0, 4096, view="private", pattern=1), Op("convert", 0, 4096, to="shared"),
      Op("convert", 0, 4096, to="private"), Op("verify", 0, 4096, view="private", pattern=1)], "ops[3].pattern"),
    ([Op("write", 0, 4096, view="private", pattern=1), Op("convert", 0, 4096, vcpu=1, to="private")],
     "ownership"),
    ([Op("touch", 0, 4096, view="private"), Op("touch", 0, 4096, vcpu=1, view="private")], "ownership"),
]


@pytest.mark.parametrize("ops, field", BROKEN)
def test_model_rejects(ops, field):
    with pytest.raises(InvalidArgument) as info:
        check_trace(Trace("b", 64 * MiB, 2, ops))
    assert info.value.field == field


def test_model_reserved_and_results():
    trace = Trace("b", 64 * MiB, 1, [Op("convert", 4096, 8192, to="shared"), Op("dma_in", 4096, 8192, pattern=9),
                                     Op("dma_out", 4096, 4096, pattern=9)])
    with pytest.raises(InvalidArgument, match="reserved"):
        check_trace(trace, reserved=8192)
    result = check_trace(trace)
    assert result.shared_ranges == [(4096, 8192)] and result.verified_pages == 1
    assert result.noop_conversion_pages == 0


def test_a_user_workload_registered_from_python_is_listed_generated_and_run(monkeypatch):
    from privmem import ops
    from privmem.runner import run_trace
    from privmem.workload import GENERATORS, workload

    monkeypatch.setattr(GENERATORS, "_entries", dict(GENERATORS._entries))

    @workload("test-one-flip", "one page to shared and back per scale unit, data checked")
    def one_flip(memory, vcpus, seed, scale, reserved):
        page = reserved
        return [ops.convert(page, PAGE_SIZE, "shared"), ops.dma_in(page, PAGE_SIZE, 7),
                ops.verify(page, PAGE_SIZE, "shared", 7), ops.convert(page, PAGE_SIZE, "private")]

    assert list(WORKLOADS)[-1] == "test-one-flip" and WORKLOADS["test-one-flip"].startswith("one page")
    trace = generate("test-one-flip", memory=16 * MiB, layout="q35")
    assert trace.name == "test-one-flip" and len(trace.ops) == 4
    result = run_trace(trace, "eager", backend="host")
    assert result.conversions == 2 and result.data_errors == 0 and result.discards == 2
    with pytest.raises(ValueError, match="already registered"):
        workload("test-one-flip", "again")(one_flip)
