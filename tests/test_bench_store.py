"""`privmem bench store` on a small guest: every structure and pattern, the XArray model, the table."""

from rich.console import Console

from privmem.bench import store
from privmem.bench.xarray_model import XA_NODE_BYTES, xarray_nodes

MiB = 1 << 20


def test_xarray_model_counts_nodes_per_level():
    all_private_1_tib = b"\xff" * ((1 << 40) >> 15)
    assert xarray_nodes(all_private_1_tib) == (1 << 22) + (1 << 16) + (1 << 10) + 16 + 1
    assert xarray_nodes(bytes(64)) == 0
    assert xarray_nodes(bytes(8) + b"\x01" + bytes(7)) == 2  # one leaf and the root above it
    assert XA_NODE_BYTES == 576


def test_bench_store_runs_every_structure_and_pattern_on_a_small_guest():
    results = []
    for pattern in store.PATTERNS:
        results += store.measure("64MiB", 64 * MiB, pattern, rounds=1)
    structures = {r.structure for r in results}
    assert structures == {"store", "store-v1", "bitmap", "pagemap", "xarray (model)"}
    by = {(r.structure, r.pattern): r for r in results}
    for pattern in ("fragmented", "hostile"):
        assert by[("store", pattern)].footprint_bytes <= 2 * by[("bitmap", pattern)].footprint_bytes
        assert by[("store", pattern)].ranges_runs == (64 * MiB >> 12) // 2
    assert all(r.get_ops_s > 0 and r.set_ops_s > 0 for r in results if r.structure != "xarray (model)")
    console = Console(width=250, record=True)
    console.print(store.table(results))
    assert "xarray (model)" in console.export_text()
    assert store.headline(results)[-1].startswith("notes:")
