"""privmem trace stats: figures of a trace, read in one streaming pass in bounded memory."""

import io
import tracemalloc
from pathlib import Path

import pytest

from privmem import InvalidArgument
from privmem.memmap import GuestMemoryMap
from privmem.ops import Op, Trace, convert, touch
from privmem.workload import dumps_trace, import_qemu_log
from privmem.workload.history import ConversionHistory, Piece, is_noop
from privmem.workload.stats import DEFAULT_FLIP_MS, trace_stats
from privmem.workload.trace import TraceWriter

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
DATA = Path(__file__).parent / "data"


def stats_of(trace: Trace, **options):
    return trace_stats(io.StringIO(dumps_trace(trace)), **options)


def timed(gpa, size, to, t, vcpu=0):
    return Op("convert", gpa, size, vcpu, to=to, t=t)


def test_history_remembers_direction_and_time_per_run():
    history = ConversionHistory()
    assert history.convert(0x1000, 0x3000, False, 1.0) == [Piece(3, False, True, None)]
    assert history.convert(0x2000, 0x3000, True, 2.5) == [Piece(2, True, False, 1.0), Piece(1, False, True, None)]
    assert history.converted_pages() == 4 and len(history) == 2
    assert is_noop([Piece(1, False, True, None)], True) and not is_noop([Piece(1, True, False, 1.0)], True)


def test_imported_recording():
    trace, _ = import_qemu_log(DATA / "qemu-q35-16g-tid.log")
    stats = stats_of(trace)
    assert stats.flip_ms == DEFAULT_FLIP_MS == 50
    assert (stats.conversions, stats.to_private, stats.to_shared) == (10, 6, 4)
    assert (stats.pages_to_private, stats.pages_to_shared, stats.distinct_pages) == (2564, 16388, 18948)
    # 0x80000 back after 0.42 ms and 0x7b000000 (2 pages) after 20 ms flip; 0x9f000 comes back after 780 ms.
    assert (stats.flip_pages, stats.flip_conversions, stats.back_pages, stats.back_conversions) == (3, 2, 4, 3)
    assert stats.noop_conversions == 3 and stats.sizes == {4096: 4, 8192: 2, 2 * MiB: 1, 4 * MiB: 2, 64 * MiB: 1}
    assert (stats.first_t, stats.last_t) == (0.0, 0.78) and stats.per_vcpu == [10]
    assert stats_of(trace, flip_ms=1).flip_pages == 1
    text = "\n".join(stats.format())
    assert "q35: [0x0, 0x80000000) [0x100000000, 0x480000000) (16.0 GiB RAM)" in text
    assert "3 of 18,952 page conversions (0.02%), in 2 of 10 conversions" in text
    assert stats.as_dict()["flip_flop"]["basis"] == "event times (t)"


def test_without_times_the_flip_share_is_not_guessed():
    trace = Trace("g", 64 * MiB, 2, (convert(0x1000, 0x1000, "shared"), convert(0x1000, 0x1000, "private", vcpu=1),
                                      touch(0x1000, 0x1000, "private", vcpu=1)))
    stats = stats_of(trace)
    assert stats.flip_share is None and stats.back_pages == 1 and stats.per_vcpu == [1, 2]
    assert stats.by_kind["touch"] == 1 and stats.first_t is None
    text = "\n".join(stats.format())
    assert "n/a (no conversion back carries event times)" in text and "times: none" in text
    assert stats.as_dict()["flip_flop"]["share"] is None


def test_partly_timed_traces_count_only_timed_pairs():
    trace = Trace("g", 64 * MiB, 1, (timed(0x1000, 0x2000, "shared", 0.0), convert(0x1000, 0x1000, "private"),
                                      timed(0x2000, 0x1000, "private", 0.01)))
    stats = stats_of(trace)
    assert (stats.back_pages, stats.back_timed_pages, stats.flip_pages) == (2, 1, 1)
    assert "1 pages converted back without times not counted" in "\n".join(stats.format())


def test_window_edges_and_first_conversions():
    ops = (timed(0x1000, 0x1000, "shared", 1.0), timed(0x1000, 0x1000, "private", 1.05),   # back at exactly 50 ms
           timed(0x1000, 0x1000, "shared", 1.2), timed(0x1000, 0x1000, "private", 1.26),    # 60 ms: not a flip
           timed(0x2000, 0x1000, "private", 1.3))                                           # never left private
    stats = stats_of(Trace("g", 64 * MiB, 1, ops))
    # Every state change after a page's first undoes the one before: three conversions back.
    assert (stats.flip_pages, stats.back_pages, stats.noop_conversions) == (1, 3, 1)
    with pytest.raises(InvalidArgument, match="flip_ms"):
        stats_of(Trace("g", 64 * MiB, 1, ops), flip_ms=-1)


def test_a_1_tib_guest_stays_small(tmp_path):
    """No per-page state: a 1 TiB q35 guest's trace is read in a few MiB, whatever its RAM."""
    memory_map = GuestMemoryMap.from_layout("q35", TiB)
    path = tmp_path / "big.jsonl"
    with TraceWriter(path, "big", memory_map, 4) as writer:
        for i in range(4000):
            gpa = 4 * GiB + (i * 977 % 500_000) * 2 * MiB
            writer.write(timed(gpa, 2 * MiB, "shared" if i % 2 else "private", i * 0.001, vcpu=i % 4))
        writer.write(timed(4 * GiB, TiB - 2 * GiB, "private", 5.0))     # all high RAM at once
    tracemalloc.start()
    stats = trace_stats(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert stats.conversions == 4001 and stats.per_vcpu == [1001, 1000, 1000, 1000]
    assert stats.history_runs == 1 and stats.distinct_pages == (TiB - 2 * GiB) >> 12
    assert peak < 8 * MiB, peak
