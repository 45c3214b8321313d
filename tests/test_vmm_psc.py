"""PSC request parsing and serving (pure logic): every malformed request is refused whole,
with nothing converted and the page untouched except the status word."""

import struct

import pytest

from privmem.errors import Busy, InvalidArgument
from privmem.memmap import GuestMemoryMap
from privmem.vmm import psc
from privmem.vmm.psc import OP_PRIVATE, OP_SHARED, encode_entry, encode_request

MEMORY_BYTES = 64 << 20    # 16384 pages
MEMORY = GuestMemoryMap.flat(MEMORY_BYTES)
LAST_GFN = (MEMORY_BYTES >> 12) - 1


class Recorder:
    def __init__(self, busy_at=None):
        self.calls = []
        self.busy_at = busy_at

    def __call__(self, gpa, size, to_private):
        if self.busy_at is not None and len(self.calls) == self.busy_at:
            self.busy_at = None
            raise Busy("in flight")
        self.calls.append((gpa, size, to_private))


MALFORMED = {
    "gfn past memory": [encode_entry(LAST_GFN + 1, OP_PRIVATE)],
    "gfn far past memory": [encode_entry((1 << 40) - 1, OP_SHARED)],
    "2M entry not aligned": [encode_entry(513, OP_PRIVATE, huge=True)],
    "2M entry past memory": [encode_entry((MEMORY_BYTES >> 12), OP_PRIVATE, huge=True)],
    "unknown op 0": [encode_entry(10, 0)],
    "unknown op 3": [encode_entry(10, 3)],
    "unknown op 15": [encode_entry(10, 15)],
    "reserved bit 57": [encode_entry(10, OP_PRIVATE) | 1 << 57],
    "reserved bit 63": [encode_entry(10, OP_PRIVATE) | 1 << 63],
    "cur_page beyond 4K entry": [encode_entry(10, OP_PRIVATE, cur_page=2)],
    "cur_page beyond 2M entry": [encode_entry(512, OP_PRIVATE, huge=True, cur_page=513)],
    "overlap 4K twice": [encode_entry(10, OP_PRIVATE), encode_entry(10, OP_PRIVATE)],
    "overlap 4K inside 2M": [encode_entry(512, OP_SHARED, huge=True), encode_entry(700, OP_SHARED)],
    "overlap later entries": [encode_entry(1, OP_PRIVATE), encode_entry(3, OP_PRIVATE),
                              encode_entry(2, OP_SHARED), encode_entry(3, OP_SHARED)],
    "bad entry after good ones": [encode_entry(1, OP_PRIVATE), encode_entry(2, OP_PRIVATE), encode_entry(3, 7)],
}

MALFORMED_HEADERS = {
    "end_entry 253 (254 entries)": dict(entries=[encode_entry(i, OP_PRIVATE) for i in range(253)], end_entry=253),
    "end_entry 0xffff": dict(entries=[encode_entry(1, OP_PRIVATE)], end_entry=0xFFFF),
    "cur_entry > end_entry": dict(entries=[encode_entry(1, OP_PRIVATE), encode_entry(2, OP_PRIVATE)],
                                  cur_entry=2, end_entry=1),
    "header reserved set": dict(entries=[encode_entry(1, OP_PRIVATE)], reserved=1),
}


def _check_refused(page):
    rec = Recorder()
    outcome = psc.serve(page, MEMORY, rec)
    assert outcome.status == psc.STATUS_INVALID
    assert outcome.error
    assert rec.calls == []
    head, status = outcome.patch(page)
    assert head == page[:psc.STATUS_OFFSET]            # state unchanged
    assert struct.unpack("<I", status)[0] == psc.STATUS_INVALID


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_entries_are_refused_whole(name):
    _check_refused(encode_request(MALFORMED[name]))


@pytest.mark.parametrize("name", MALFORMED_HEADERS)
def test_malformed_headers_are_refused(name):
    spec = dict(MALFORMED_HEADERS[name])
    entries = spec.pop("entries")
    page = encode_request(entries, **spec)
    if spec.get("end_entry", 0) >= 253:           # encode_request keeps at most 253 entries
        page = page[:psc.STATUS_OFFSET] + page[psc.STATUS_OFFSET:]
    _check_refused(page)


def test_short_page_is_refused():
    outcome = psc.serve(b"\0" * 16, MEMORY, Recorder())
    assert outcome.status == psc.STATUS_INVALID


def test_parse_names_the_entry():
    with pytest.raises(InvalidArgument) as info:
        psc.parse(encode_request([encode_entry(1, OP_PRIVATE), encode_entry(2, 9)]), MEMORY)
    assert "psc.entry[1]" in str(info.value)


def test_merge_adjacent_same_op_and_2m():
    entries = [encode_entry(510, OP_PRIVATE), encode_entry(511, OP_PRIVATE),
               encode_entry(512, OP_PRIVATE, huge=True), encode_entry(1024, OP_PRIVATE),
               encode_entry(1025, OP_SHARED), encode_entry(1030, OP_SHARED)]
    rec = Recorder()
    outcome = psc.serve(encode_request(entries), MEMORY, rec)
    assert outcome.status == psc.STATUS_OK and outcome.cur_entry == 6
    assert rec.calls == [(510 << 12, (1025 - 510) << 12, True), (1025 << 12, 4096, False),
                         (1030 << 12, 4096, False)]
    assert outcome.conversions == 3
    head, _ = outcome.patch(encode_request(entries))
    cur, end, _ = struct.unpack_from("<HHI", head)
    assert (cur, end) == (6, 5)
    pages = [struct.unpack_from("<Q", head, 8 + 8 * i)[0] & 0xFFF for i in range(6)]
    assert pages == [1, 1, 512, 1, 1, 1]


def test_full_request_253_entries():
    entries = [encode_entry(2 * i, OP_SHARED) for i in range(253)]
    rec = Recorder()
    outcome = psc.serve(encode_request(entries), MEMORY, rec)
    assert outcome.status == psc.STATUS_OK and len(rec.calls) == 253


def test_busy_writes_progress_and_resume():
    entries = [encode_entry(1, OP_PRIVATE), encode_entry(5, OP_SHARED), encode_entry(9, OP_PRIVATE)]
    page = encode_request(entries)
    rec = Recorder(busy_at=1)
    outcome = psc.serve(page, MEMORY, rec)
    assert outcome.status == psc.STATUS_RETRY and outcome.cur_entry == 1
    head, status = outcome.patch(page)
    assert struct.unpack_from("<H", head)[0] == 1
    retry = head + status
    outcome = psc.serve(retry, MEMORY, rec)
    assert outcome.status == psc.STATUS_OK
    assert rec.calls == [(1 << 12, 4096, True), (5 << 12, 4096, False), (9 << 12, 4096, True)]


def test_partially_done_2m_entry_resumes_at_cur_page():
    rec = Recorder()
    outcome = psc.serve(encode_request([encode_entry(512, OP_PRIVATE, huge=True, cur_page=100)]), MEMORY, rec)
    assert outcome.status == psc.STATUS_OK
    assert rec.calls == [((512 + 100) << 12, (512 - 100) << 12, True)]


def test_engine_refusal_is_invalid_not_a_crash():
    def refuse(gpa, size, to_private):
        raise InvalidArgument("gpa", gpa, "engine says no")
    outcome = psc.serve(encode_request([encode_entry(1, OP_PRIVATE)]), MEMORY, refuse)
    assert outcome.status == psc.STATUS_INVALID and "engine says no" in outcome.error


# ---- the VMM's in-place path: same decisions, same bytes as serve + patch ---------------

def refusing(gpa, size, to_private):
    raise InvalidArgument("gpa", gpa, "engine says no")


def _both(page, busy_at=None, refuse=False):
    """(status, buffer after, calls) from serve+patch and from serve_in_place."""
    out = []
    for in_place in (False, True):
        rec = Recorder(busy_at)
        convert = refusing if refuse else rec
        if in_place:
            buffer = bytearray(page.ljust(4096, b"\0"))
            status, error = psc.serve_in_place(memoryview(buffer), MEMORY, convert)
            after = bytes(buffer[:psc.REQUEST_BYTES])
        else:
            outcome = psc.serve(page, MEMORY, convert)
            head, status_bytes = outcome.patch(page)
            status, error, after = outcome.status, outcome.error, head + status_bytes
        out.append((status, error, after, rec.calls))
    return out


IN_PLACE_CASES = {
    **{f"malformed: {k}": (encode_request(v), {}) for k, v in MALFORMED.items()},
    "one 4K private": (encode_request([encode_entry(7, OP_PRIVATE)]), {}),
    "one 4K shared, last gfn": (encode_request([encode_entry(LAST_GFN, OP_SHARED)]), {}),
    "one 2M shared": (encode_request([encode_entry(1024, OP_SHARED, huge=True)]), {}),
    "one 2M, cur_page 100": (encode_request([encode_entry(1024, OP_SHARED, huge=True, cur_page=100)]), {}),
    "one 4K already done": (encode_request([encode_entry(7, OP_PRIVATE, cur_page=1)]), {}),
    "last of three left": (encode_request([encode_entry(1, OP_PRIVATE), encode_entry(2, OP_PRIVATE),
                                           encode_entry(3, OP_SHARED)], cur_entry=2), {}),
    "one 4K busy": (encode_request([encode_entry(7, OP_PRIVATE)]), {"busy_at": 0}),
    "one 4K refused by the engine": (encode_request([encode_entry(7, OP_PRIVATE)]), {"refuse": True}),
    "two entries": (encode_request([encode_entry(7, OP_PRIVATE), encode_entry(8, OP_PRIVATE)]), {}),
    "header reserved set": (encode_request([encode_entry(7, OP_PRIVATE)], reserved=1), {}),
    "end_entry 253": (encode_request([encode_entry(7, OP_PRIVATE)], cur_entry=253, end_entry=253), {}),
}


@pytest.mark.parametrize("name", IN_PLACE_CASES)
def test_in_place_path_matches_serve_and_patch(name):
    page, kw = IN_PLACE_CASES[name]
    (status, error, after, calls), (status2, error2, after2, calls2) = _both(page, **kw)
    assert (status2, error2, calls2) == (status, error, calls)
    assert after2 == after


def test_in_place_path_matches_serve_on_random_requests():
    import random
    rng = random.Random(5)
    for _ in range(3000):
        gfn = rng.choice([rng.randrange(1 << 40), rng.randrange(LAST_GFN + 2), 512 * rng.randrange(33)])
        raw = encode_entry(gfn, rng.choice([0, 1, 2, 3, 15]), rng.random() < 0.3, rng.choice([0, 0, 0, 1, 511, 512]))
        if rng.random() < 0.05:
            raw |= 1 << rng.randrange(57, 64)
        count = rng.choice([1, 1, 1, 2, 3])
        entries = [raw] + [encode_entry(rng.randrange(LAST_GFN), OP_SHARED) for _ in range(count - 1)]
        cur = rng.choice([0, count - 1])
        page = encode_request(entries, cur_entry=cur)
        first, second = _both(page, busy_at=rng.choice([None, None, 0]))
        assert first[:2] == second[:2] and first[3] == second[3], hex(raw)
        assert first[2] == second[2], hex(raw)
