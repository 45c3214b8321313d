"""Trace files as users have them: laid-out guests, end markers, compression, hostile bytes."""

import bz2
import gzip
import io
import json
import lzma
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmem.errors import InvalidArgument, TraceError
from privmem.memmap import GuestMemoryMap
from privmem.ops import Op, Trace
from privmem.units import GiB, MiB
from privmem.workload import generate, read_trace, write_trace
from privmem.workload.trace import (MAX_LINE_BYTES, TraceReader, TraceWriter, _fast_op, dumps_trace, loads_trace,
                                    parse_op)

PAGE = 4096
Q35 = GuestMemoryMap.from_layout("q35", 16 * GiB)


def q35_trace() -> Trace:
    ops = [Op("convert", 0x80000, PAGE, to="shared"), Op("convert", 0x9F000, PAGE, to="shared", t=0.5),
           Op("write", 2 * GiB - PAGE, PAGE, view="private", pattern=7),
           Op("convert", 4 * GiB, 4 * MiB, to="shared", t=1.25), Op("dma_in", 18 * GiB - PAGE, PAGE, pattern=9)]
    return Trace.on_map("q35 guest", Q35, 1, ops)


def test_a_laid_out_trace_round_trips_with_its_regions_and_times(tmp_path):
    trace = q35_trace()
    path = tmp_path / "q35.jsonl"
    assert write_trace(trace, path) == 5
    header = json.loads(path.read_text().splitlines()[0])
    assert header["layout"] == "q35" and header["regions"] == [{"gpa": 0, "size": 2 * GiB},
                                                               {"gpa": 4 * GiB, "size": 14 * GiB}]
    assert header["end_marker"] is True
    assert path.read_text().splitlines()[-1] == '{"privmem_trace_end": 5}'
    again = read_trace(path)
    assert again == trace and again.memory_map == Q35 and again.ops[1].t == 0.5


def test_a_layout_name_alone_builds_the_regions():
    text = '{"privmem_trace": 1, "memory": 17179869184, "vcpus": 1, "layout": "q35"}\n' \
           '{"op": "convert", "gpa": "0x400000000", "size": 4096, "to": "shared"}\n'
    trace = loads_trace(text)
    assert trace.memory_map == Q35 and trace.ops[0].gpa == 16 * GiB


@pytest.mark.parametrize("header, field, message", [
    ({"layout": "pc"}, "layout", "unknown"),
    ({"regions": [{"gpa": 0, "size": GiB}]}, "memory", "differs from the regions"),
    ({"regions": []}, "regions", "must be a list of 1 to 64"),
    ({"regions": [{"gpa": 0}]}, "regions[0]", 'must be {"gpa"'),
    ({"regions": [{"gpa": 1, "size": 16 * GiB}]}, "regions[0].gpa", "aligned"),
    ({"regions": [{"gpa": 0, "size": 16 * GiB, "x": 1}]}, "regions[0]", 'must be {"gpa"'),
    ({"regions": [{"gpa": 0, "size": 8 * GiB}, {"gpa": GiB, "size": 8 * GiB}]}, "regions", "overlaps"),
    ({"end_marker": 1}, "end_marker", "must be true or false"),
    ({"name": "evil\x1b[2J"}, "name", "printable"),
    ({"name": "n" * 201}, "name", "printable"),
    ({"memory": 1 << 64}, "memory", "below 2\\*\\*64"),
])
def test_bad_headers(header, field, message):
    obj = {"privmem_trace": 1, "memory": 16 * GiB, "vcpus": 1, **header}
    with pytest.raises(TraceError, match=message) as info:
        loads_trace(json.dumps(obj))
    assert info.value.field == f"line 1: {field}"


def test_an_op_in_the_hole_names_the_address_and_the_regions():
    lines = dumps_trace(q35_trace()).splitlines()
    lines.insert(2, '{"op": "convert", "gpa": 3221225472, "size": 4096, "to": "private"}')
    with pytest.raises(TraceError) as info:
        loads_trace("\n".join(lines))
    assert info.value.line == 3
    assert "0xc0000000 is in the hole between RAM regions [0x0, 0x80000000) and [0x100000000, 0x480000000)" \
        in str(info.value)


# -- end markers and atomic writes -------------------------------------------------------------

def test_a_file_cut_short_is_refused(tmp_path):
    text = dumps_trace(q35_trace())
    cut = "\n".join(text.splitlines()[:-2]) + "\n"
    with pytest.raises(TraceError, match="without the end marker its header promises") as info:
        loads_trace(cut)
    assert info.value.line == 6            # header and 4 ops read: the marker was due on line 6


def test_an_old_trace_without_the_promise_reads_with_a_warning():
    text = '{"privmem_trace": 1, "memory": 8388608, "vcpus": 1}\n{"op": "convert", "gpa": 0, "size": 4096, ' \
           '"to": "shared"}\n'
    reader = TraceReader(io.StringIO(text))
    assert len(reader.read().ops) == 1
    assert reader.warnings and "no end marker" in reader.warnings[0]


@pytest.mark.parametrize("change, message", [
    (lambda lines: lines[:-1] + ['{"privmem_trace_end": 4}'], "the file holds 5 ops"),
    (lambda lines: lines + [lines[1]], "ops after the end marker"),
    (lambda lines: lines[:-1] + ['{"privmem_trace_end": 5, "x": 1}'], "the end marker has one key"),
    (lambda lines: lines[:-1] + ['{"privmem_trace_end": "5"}'], "must be an integer"),
])
def test_end_marker_mismatches(change, message):
    lines = dumps_trace(q35_trace()).splitlines()
    with pytest.raises(TraceError, match=message):
        loads_trace("\n".join(change(lines)))


def test_an_interrupted_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("old contents\n")

    def ops():
        yield Op("convert", 0, PAGE, to="shared")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with TraceWriter(path, "t", GuestMemoryMap.flat(8 * MiB), 1) as writer:
            writer.write_all(ops())
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.jsonl"]


def test_the_writer_checks_ops_against_the_header(tmp_path):
    with pytest.raises(InvalidArgument, match=r"ops\[0\].gpa"):
        with TraceWriter(tmp_path / "t.jsonl", "t", Q35, 1) as writer:
            writer.write(Op("convert", 3 * GiB, PAGE, to="shared"))
    assert not list(tmp_path.iterdir())


# -- compression and hostile bytes ---------------------------------------------------------------

@pytest.mark.parametrize("compress", [gzip.compress, bz2.compress, lzma.compress])
def test_compressed_traces_are_read_as_they_are(compress, tmp_path):
    path = tmp_path / "t.jsonl.z"
    path.write_bytes(compress(dumps_trace(q35_trace()).encode()))
    assert read_trace(path) == q35_trace()


def test_other_compression_is_refused_by_name(tmp_path):
    path = tmp_path / "t.jsonl.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(20))
    with pytest.raises(TraceError, match="zstd-compressed: decompress it first"):
        read_trace(path)


def test_corrupt_gzip_is_a_trace_error(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(dumps_trace(q35_trace()).encode())[:40])
    with pytest.raises(TraceError):
        read_trace(path)


@pytest.mark.parametrize("line, field, message", [
    ("{" + " " * MAX_LINE_BYTES + "}", "line", "longer than 65536 bytes"),
    ("[" * 30000 + "]" * 30000, "json", "nested too deeply|not a JSON object"),
    ('{"op": "convert", "gpa": 18446744073709551616, "size": 4096, "to": "shared"}', "gpa", "below 2\\*\\*64"),
    ('{"op": "convert", "gpa": "0x10000000000000000", "size": 4096, "to": "shared"}', "gpa", "hex string"),
    ('{"op": "convert", "gpa": 0, "size": 4096, "to": "shared", "t": -1}', "t", "finite number"),
    ('{"op": "convert", "gpa": 0, "size": 4096, "to": "shared", "t": "now"}', "t", "finite number"),
    ('{"op": "\\u001b[2Jconvert", "gpa": 0, "size": 4096}', "op", "unknown op"),
])
def test_hostile_lines(line, field, message):
    header = '{"privmem_trace": 1, "memory": 8388608, "vcpus": 1}'
    with pytest.raises(TraceError, match=message) as info:
        loads_trace(header + "\n" + line)
    assert info.value.field == f"line 2: {field}"
    assert len(str(info.value)) < 300 and "\x1b" not in str(info.value)


def test_values_in_messages_are_clipped():
    header = '{"privmem_trace": 1, "memory": 8388608, "vcpus": 1}'
    with pytest.raises(TraceError) as info:
        loads_trace(header + '\n{"op": "' + "x" * 10000 + '", "gpa": 0, "size": 4096}')
    assert len(str(info.value)) < 200


# -- the fast path agrees with the strict one ----------------------------------------------------

FLAT = GuestMemoryMap.flat(8 * MiB)
values = st.one_of(st.integers(-2, 1 << 65), st.sampled_from([0, 4096, 8192, 1 << 23, "0x1000", "0x0", "4096"]),
                   st.booleans(), st.none(), st.floats(allow_nan=False), st.sampled_from(
                       ["convert", "write", "verify", "dma_in", "dma_out", "touch", "private", "shared", "x"]))
keys = st.sampled_from(["op", "gpa", "size", "vcpu", "to", "view", "pattern", "t", "other"])


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(keys, values, max_size=7))
def test_fast_path_accepts_only_what_the_strict_path_accepts_and_reads_the_same(obj):
    raw = json.dumps(obj).encode()
    try:
        strict = parse_op(2, raw, FLAT, 2)
    except TraceError:
        strict = None
    try:
        fast = _fast_op(2, raw, FLAT, 2)
    except TraceError:
        fast = "refused"
    assert fast is None or fast == strict or (fast == "refused" and strict is None)


def test_fast_path_sends_duplicate_keys_to_the_strict_path():
    raw = b'{"op": "convert", "gpa": 0, "gpa": 4096, "size": 4096, "to": "shared"}'
    assert _fast_op(2, raw, FLAT, 1) is None
    with pytest.raises(TraceError, match="duplicate key"):
        parse_op(2, raw, FLAT, 1)


def test_fuzzed_traces_raise_nothing_but_trace_errors():
    """A few thousand seeded mutants of a valid trace: each reads, or raises TraceError."""
    base = dumps_trace(generate("random", memory=32 * MiB, vcpus=2, scale=0.002, reserved=16 * MiB)).encode()
    rng = random.Random(20261201)
    outcomes = {"read": 0, "refused": 0}
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            where = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[where] = rng.randrange(256)
            elif choice < 0.6:
                del data[where:where + rng.randint(1, 20)]
            elif choice < 0.8:
                data[where:where] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                lines = data.split(b"\n")
                k = rng.randrange(len(lines))
                lines.insert(rng.randrange(len(lines)), lines[k])
                data = bytearray(b"\n".join(lines))
        try:
            read_trace(io.BytesIO(bytes(data)))
            outcomes["read"] += 1
        except TraceError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 2000 and sum(outcomes.values()) == 3000
