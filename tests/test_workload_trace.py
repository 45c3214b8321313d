"""Op model and trace format v1: strict validation (line, field, value), streaming, round trip."""

import dataclasses
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privmem import PAGE_SIZE, InvalidArgument, TraceError
from privmem.workload import Op, Trace, TraceReader, dumps_trace, loads_trace, read_trace, write_trace
from privmem.ops import KINDS, REQUIRED

MiB = 1 << 20
HEADER = '{"privmem_trace": 1, "memory": 67108864, "vcpus": 2, "name": "t"}'
GOOD = {
    "convert": {"op": "convert", "gpa": 4096, "size": 8192, "vcpu": 0, "to": "shared"},
    "write": {"op": "write", "gpa": 4096, "size": 8192, "vcpu": 1, "view": "private", "pattern": 17},
    "verify": {"op": "verify", "gpa": 4096, "size": 4096, "vcpu": 0, "view": "shared", "pattern": 0},
    "dma_in": {"op": "dma_in", "gpa": 4096, "size": 4096, "vcpu": 0, "pattern": 255},
    "dma_out": {"op": "dma_out", "gpa": 4096, "size": 4096, "vcpu": 0, "pattern": 3},
    "touch": {"op": "touch", "gpa": 0, "size": 64 * MiB, "vcpu": 1, "view": "private"},
}


def with_(base: str, **changes) -> str:
    obj = dict(GOOD[base])
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


# ---- Op -----------------------------------------------------------------------------------

def test_op_kinds_and_helpers():
    op = Op("convert", 8192, 4096, 1, to="private")
    assert (op.end, op.pages, op.to_private, op.access_view) == (12288, 1, True, None)
    assert Op("dma_in", 0, 4096, pattern=1).access_view == "shared"
    assert Op("touch", 0, 4096, view="private").access_view == "private"
    assert set(KINDS) == set(REQUIRED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.gpa = 0


@pytest.mark.parametrize("args, field", [
    (dict(kind="flip", gpa=0, size=4096), "op"),
    (dict(kind="convert", gpa=1, size=4096, to="shared"), "gpa"),
    (dict(kind="convert", gpa=-4096, size=4096, to="shared"), "gpa"),
    (dict(kind="convert", gpa=0, size=0, to="shared"), "size"),
    (dict(kind="convert", gpa=0, size=100, to="shared"), "size"),
    (dict(kind="convert", gpa=0, size=4096.0, to="shared"), "size"),
    (dict(kind="convert", gpa=True, size=4096, to="shared"), "gpa"),
    (dict(kind="convert", gpa=0, size=4096, vcpu=-1, to="shared"), "vcpu"),
    (dict(kind="convert", gpa=0, size=4096), "to"),
    (dict(kind="convert", gpa=0, size=4096, to="encrypted"), "to"),
    (dict(kind="convert", gpa=0, size=4096, to="shared", pattern=1), "pattern"),
    (dict(kind="write", gpa=0, size=4096, view="private"), "pattern"),
    (dict(kind="write", gpa=0, size=4096, view="private", pattern=256), "pattern"),
    (dict(kind="write", gpa=0, size=4096, view="private", pattern=-1), "pattern"),
    (dict(kind="verify", gpa=0, size=4096, view="both", pattern=1), "view"),
    (dict(kind="dma_in", gpa=0, size=4096, view="shared", pattern=1), "view"),
    (dict(kind="dma_out", gpa=0, size=4096), "pattern"),
    (dict(kind="touch", gpa=0, size=4096, view="private", to="shared"), "to"),
    (dict(kind="touch", gpa=0, size=4096), "view"),
    (dict(kind="touch", gpa=(1 << 64) - 4096, size=8192, view="private"), "size"),
])
def test_op_rejects(args, field):
    with pytest.raises(InvalidArgument) as info:
        Op(**args)
    assert info.value.field == field


def test_trace_header_and_validate():
    with pytest.raises(InvalidArgument, match="memory"):
        Trace("x", 4097, 1)
    with pytest.raises(InvalidArgument, match="memory"):
        Trace("x", 0, 1)
    with pytest.raises(InvalidArgument, match="vcpus"):
        Trace("x", 4096, 0)
    ops = [Op("convert", 0, 4096, to="shared"), Op("convert", 4096, 8192, vcpu=1, to="shared")]
    trace = Trace("x", 16384, 2, ops)
    assert trace.ops == tuple(ops) and trace.validate() is trace
    assert "ops=<2 ops>" in repr(trace)
    with pytest.raises(InvalidArgument) as info:
        Trace("x", 8192, 2, ops).validate()
    assert info.value.field == "ops[1].gpa"
    assert "0x2000 is past the last RAM region [0x0, 0x2000)" in str(info.value)
    with pytest.raises(InvalidArgument) as info:
        Trace("x", 16384, 1, ops).validate()
    assert info.value.field == "ops[1].vcpu"
    assert [len(v) for v in trace.per_vcpu()] == [1, 1]


# ---- reader: the strict matrix ----------------------------------------------------------------

# (file text, line, field, value shown in the message)
BAD = [
    ("", 1, "privmem_trace", "None"),
    ("\n\n", 3, "privmem_trace", "None"),
    ('{"privmem_trace": 1, "memory": 4096', 1, "json", "'{\"privmem_trace\": 1, \"memory\": 4096'"),
    ('[1, 2]', 1, "json", "[1, 2]"),
    ('{"memory": 4096, "vcpus": 1}', 1, "privmem_trace", "None"),
    ('{"privmem_trace": 2, "memory": 4096, "vcpus": 1}', 1, "privmem_trace", "2"),
    ('{"privmem_trace": true, "memory": 4096, "vcpus": 1}', 1, "privmem_trace", "True"),
    ('{"privmem_trace": "1", "memory": 4096, "vcpus": 1}', 1, "privmem_trace", "'1'"),
    ('{"privmem_trace": 1.0, "memory": 4096, "vcpus": 1}', 1, "privmem_trace", "1.0"),
    ('{"privmem_trace": 1, "vcpus": 1}', 1, "memory", "None"),
    ('{"privmem_trace": 1, "memory": 4096}', 1, "vcpus", "None"),
    ('{"privmem_trace": 1, "memory": 0, "vcpus": 1}', 1, "memory", "0"),
    ('{"privmem_trace": 1, "memory": 6000, "vcpus": 1}', 1, "memory", "6000"),
    ('{"privmem_trace": 1, "memory": "0x1001", "vcpus": 1}', 1, "memory", "'0x1001'"),
    ('{"privmem_trace": 1, "memory": -4096, "vcpus": 1}', 1, "memory", "-4096"),
    ('{"privmem_trace": 1, "memory": 4096.0, "vcpus": 1}', 1, "memory", "4096.0"),
    ('{"privmem_trace": 1, "memory": "4096", "vcpus": 1}', 1, "memory", "'4096'"),
    ('{"privmem_trace": 1, "memory": 4096, "vcpus": 0}', 1, "vcpus", "0"),
    ('{"privmem_trace": 1, "memory": 4096, "vcpus": 1, "name": 5}', 1, "name", "5"),
    ('{"privmem_trace": 1, "memory": 4096, "vcpus": 1, "shared": []}', 1, "shared", "[]"),
    ('{"privmem_trace": 1, "memory": 4096, "memory": 8192, "vcpus": 1}', 1, "memory", "8192"),
    (HEADER + "\nnot json", 2, "json", "'not json'"),
    (HEADER + "\n" + with_("convert", op="flip"), 2, "op", "'flip'"),
    (HEADER + "\n" + with_("convert", op=3), 2, "op", "3"),
    (HEADER + "\n" + with_("convert", op=...), 2, "op", "None"),
    (HEADER + "\n" + with_("convert", gpa=...), 2, "gpa", "None"),
    (HEADER + "\n" + with_("convert", size=...), 2, "size", "None"),
    (HEADER + "\n" + with_("convert", to=...), 2, "to", "None"),
    (HEADER + "\n" + with_("write", pattern=...), 2, "pattern", "None"),
    (HEADER + "\n" + with_("write", view=...), 2, "view", "None"),
    (HEADER + "\n" + with_("convert", gpa=-4096), 2, "gpa", "-4096"),
    (HEADER + "\n" + with_("convert", gpa=4096.5), 2, "gpa", "4096.5"),
    (HEADER + "\n" + with_("convert", gpa="4096"), 2, "gpa", "'4096'"),
    (HEADER + "\n" + with_("convert", gpa="0xzz"), 2, "gpa", "'0xzz'"),
    (HEADER + "\n" + with_("convert", gpa=False), 2, "gpa", "False"),
    (HEADER + "\n" + with_("convert", gpa=4097), 2, "gpa", "4097"),
    (HEADER + "\n" + with_("convert", gpa="0x1001"), 2, "gpa", "'0x1001'"),
    (HEADER + "\n" + with_("convert", size=100), 2, "size", "100"),
    (HEADER + "\n" + with_("convert", size=0), 2, "size", "0"),
    (HEADER + "\n" + with_("convert", size="0x0"), 2, "size", "'0x0'"),
    (HEADER + "\n" + with_("convert", gpa=64 * MiB - 4096), 2, "gpa", str(64 * MiB - 4096)),
    (HEADER + "\n" + with_("convert", gpa=64 * MiB), 2, "gpa", str(64 * MiB)),
    (HEADER + "\n" + with_("touch", size=64 * MiB + 4096), 2, "gpa", "0"),
    (HEADER + "\n" + with_("convert", vcpu=2), 2, "vcpu", "2"),
    (HEADER + "\n" + with_("convert", vcpu=-1), 2, "vcpu", "-1"),
    (HEADER + "\n" + with_("convert", to="private!"), 2, "to", "'private!'"),
    (HEADER + "\n" + with_("convert", to=1), 2, "to", "1"),
    (HEADER + "\n" + with_("write", view="host"), 2, "view", "'host'"),
    (HEADER + "\n" + with_("write", pattern=256), 2, "pattern", "256"),
    (HEADER + "\n" + with_("write", pattern=-1), 2, "pattern", "-1"),
    (HEADER + "\n" + with_("write", pattern="0x100"), 2, "pattern", "'0x100'"),
    (HEADER + "\n" + with_("write", pattern=1.5), 2, "pattern", "1.5"),
    (HEADER + "\n" + with_("convert", extra=1), 2, "extra", "1"),
    (HEADER + "\n" + with_("convert", pattern=3), 2, "pattern", "3"),
    (HEADER + "\n" + with_("dma_in", view="shared"), 2, "view", "'shared'"),
    (HEADER + "\n" + with_("touch", pattern=1), 2, "pattern", "1"),
    (HEADER + "\n" + '{"op": "convert", "op": "convert", "gpa": 0, "size": 4096, "to": "shared"}', 2, "op", "'convert'"),
    (HEADER + "\n" + with_("convert") + "\n\n" + with_("convert", size=1), 4, "size", "1"),
]


@pytest.mark.parametrize("text, line, field, value", BAD)
def test_reader_rejects(text, line, field, value):
    with pytest.raises(TraceError) as info:
        loads_trace(text)
    err = info.value
    assert err.line == line
    assert err.field == f"line {line}: {field}"
    assert f"line {line}: {field}={value}:" in str(err)
    assert isinstance(err, InvalidArgument)


def test_reader_accepts_every_kind_hex_default_vcpu_and_blank_lines():
    lines = [HEADER, ""] + [json.dumps(GOOD[kind]) for kind in KINDS]
    lines.append('{"op": "convert", "gpa": "0x2000", "size": "0X1000", "to": "private"}')
    lines.append('{"op": "write", "gpa": 0, "size": 4096, "view": "shared", "pattern": "0xff"}')
    trace = loads_trace("\n".join(lines) + "\n\n")
    assert (trace.name, trace.memory, trace.vcpus) == ("t", 64 * MiB, 2)
    assert [op.kind for op in trace.ops] == list(KINDS) + ["convert", "write"]
    assert trace.ops[-2] == Op("convert", 0x2000, 0x1000, 0, to="private")
    assert trace.ops[-1].pattern == 255
    assert trace.ops[1] == Op("write", 4096, 8192, 1, view="private", pattern=17)


def test_header_name_optional():
    assert loads_trace('{"privmem_trace": 1, "memory": "0x1000", "vcpus": 1}').name == "trace"


def test_reader_streams():
    text = HEADER + "\n" + with_("convert") + "\n" + with_("convert", gpa=3)
    reader = TraceReader(io.StringIO(text))
    assert (reader.memory, reader.vcpus) == (64 * MiB, 2)
    ops = iter(reader)
    assert next(ops).kind == "convert"          # the bad line is not read yet
    with pytest.raises(TraceError) as info:
        next(ops)
    assert info.value.line == 3


def test_reader_paths_and_binary_files(tmp_path):
    trace = Trace("p", 8 * MiB, 1, [Op("convert", 4096, 4096, to="shared")])
    path = tmp_path / "t.jsonl"
    assert write_trace(trace, path) == 1
    assert read_trace(path) == trace
    assert read_trace(str(path)) == trace
    with open(path, "rb") as binary:
        assert read_trace(binary) == trace
    with TraceReader(path) as reader:
        assert list(reader) == list(trace.ops)
    first = path.read_text().splitlines()[1]
    assert first == '{"op": "convert", "gpa": 4096, "size": 4096, "vcpu": 0, "to": "shared"}'


def test_binary_not_utf8():
    with pytest.raises(TraceError) as info:
        read_trace(io.BytesIO(HEADER.encode() + b"\n\xff\xfe\n"))
    assert info.value.line == 2


def test_writer_validates():
    bad = Trace("w", 4096, 1, [Op("convert", 4096, 4096, to="shared")])
    with pytest.raises(InvalidArgument, match=r"ops\[0\]"):
        dumps_trace(bad)
    with pytest.raises(InvalidArgument):
        write_trace(bad, io.StringIO())


# ---- round trip -------------------------------------------------------------------------------

@st.composite
def traces(draw):
    pages = draw(st.integers(1, 1 << 20))
    vcpus = draw(st.integers(1, 8))
    name = draw(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20))
    ops = []
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(KINDS))
        first = draw(st.integers(0, pages - 1))
        count = draw(st.integers(1, pages - first))
        extra = {}
        if "to" in REQUIRED[kind]:
            extra["to"] = draw(st.sampled_from(["private", "shared"]))
        if "view" in REQUIRED[kind]:
            extra["view"] = draw(st.sampled_from(["private", "shared"]))
        if "pattern" in REQUIRED[kind]:
            extra["pattern"] = draw(st.integers(0, 255))
        ops.append(Op(kind, first * PAGE_SIZE, count * PAGE_SIZE, draw(st.integers(0, vcpus - 1)), **extra))
    return Trace(name, pages * PAGE_SIZE, vcpus, ops)


@settings(max_examples=150, deadline=None)
@given(traces())
def test_round_trip(trace):
    text = dumps_trace(trace)
    assert loads_trace(text) == trace
    buffer = io.StringIO()
    write_trace(trace, buffer)
    assert buffer.getvalue() == text
    assert text.count("\n") == len(trace.ops) + 2        # header, ops, end marker


@settings(max_examples=100, deadline=None)
@given(traces(), st.data())
def test_hex_strings_read_the_same(trace, data):
    lines = dumps_trace(trace).splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        obj = json.loads(line)
        for key in ("gpa", "size", "vcpu", "pattern"):
            if key in obj and data.draw(st.booleans()):
                obj[key] = hex(obj[key])
        out.append(json.dumps(obj))
    assert loads_trace("\n".join(out)) == trace
