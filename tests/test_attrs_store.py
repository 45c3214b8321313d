"""MemoryAttributes: validation, semantics, and agreement with the per-page twin."""

import random
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import privmem
from privmem import ATTR_PRIVATE, PAGE_SIZE, InvalidArgument, MemoryAttributes
from privmem.attrs import BitmapAttributes, PageMapAttributes
from privmem.attrs.dense import DenseChunk
from privmem.attrs.ranges import CHUNK_SHIFT

from .strategies import (ATTRIBUTES, CHUNK_PAGES, LAST_GFN, SMALL_CHUNK_SHIFT, WORD_ATTRIBUTES, WORD_CHUNK_SHIFT,
                         attributes, bitmaps, chunk_edge_ranges, page_ranges)

P = ATTR_PRIVATE
GiB = 1 << 30


def test_public_constants():
    assert privmem.PAGE_SIZE == 4096
    assert privmem.ATTR_PRIVATE == 8
    assert issubclass(privmem.InvalidArgument, ValueError)


# Each case breaks the kernel's checks from a given step on; the first broken one names the field.
VALIDATION_ORDER = [
    (dict(address=1, size=0, attributes=1, flags=1), "flags", "0x1"),
    (dict(address=1, size=0, attributes=1, flags=0), "attributes", "0x1"),
    (dict(address=1, size=0, attributes=P, flags=0), "size", "0x0"),
    (dict(address=(1 << 63) + 4096, size=1 << 63, attributes=P, flags=0), "size", "0x8000000000000000"),
    (dict(address=4095, size=4096, attributes=P, flags=0), "address", "0xfff"),
    (dict(address=4096, size=4097, attributes=P, flags=0), "size", "0x1001"),
    (dict(address=-4096, size=4096, attributes=P, flags=0), "address", "-0x1000"),
    (dict(address=0, size=4096, attributes=P, flags="0"), "flags", "'0'"),
]


@pytest.mark.parametrize("store_type", [MemoryAttributes, PageMapAttributes])
@pytest.mark.parametrize("args, field, shown", VALIDATION_ORDER)
def test_validation_order_names_field_and_leaves_store_unchanged(store_type, args, field, shown):
    store = store_type()
    store.set(0, 16 * PAGE_SIZE, P)
    store.set(4 * PAGE_SIZE, PAGE_SIZE, 0)
    before = list(store.ranges())
    with pytest.raises(InvalidArgument) as error:
        store.set(**args)
    assert error.value.field == field
    assert f"{field}={shown}" in str(error.value)
    assert list(store.ranges()) == before


def test_last_page_below_2_64_and_page_zero():
    store = MemoryAttributes()
    store.set(LAST_GFN * PAGE_SIZE, PAGE_SIZE, P)
    store.set(0, PAGE_SIZE, P)
    assert store.get((1 << 64) - 1) == P and store.get(0) == P and store.get(PAGE_SIZE) == 0
    assert list(store.ranges()) == [(0, PAGE_SIZE, P), (LAST_GFN * PAGE_SIZE, PAGE_SIZE, P)]
    assert store.pages(P) == 2
    store.check()


def test_single_page_hole_inside_large_run_splits_and_heals():
    store = MemoryAttributes()
    store.set(0, GiB, P)
    store.set(2 << 20, PAGE_SIZE, 0)
    assert len(store) == 2 and not store.has(0, GiB, P)
    assert store.has(0, 2 << 20, P) and store.has(2 << 20, PAGE_SIZE, 0)
    store.set(2 << 20, PAGE_SIZE, P)
    assert len(store) == 1 and store.has(0, GiB, P)
    store.check()


def test_shared_is_never_stored():
    store = MemoryAttributes()
    store.set(0, GiB, 0)
    assert len(store) == 0 and store.pages(0) == 1 << 52


def test_ranges_are_clipped_to_the_window():
    store = MemoryAttributes()
    store.set(0, 8 * PAGE_SIZE, P)
    store.set(16 * PAGE_SIZE, 8 * PAGE_SIZE, P)
    window = list(store.ranges(4 * PAGE_SIZE, 16 * PAGE_SIZE))
    assert window == [(4 * PAGE_SIZE, 4 * PAGE_SIZE, P), (16 * PAGE_SIZE, 4 * PAGE_SIZE, P)]


def test_setting_what_is_already_there_returns_at_once():
    store = MemoryAttributes()
    store.set(0, GiB, P)
    with mock.patch.object(MemoryAttributes, "_assign") as assign:
        store.set(PAGE_SIZE, 512 * PAGE_SIZE, P)
        store.set(2 * GiB, PAGE_SIZE, 0)
    assign.assert_not_called()


def test_multiple_attribute_bits_touching_runs_stay_distinct():
    store = MemoryAttributes(supported=P | 1)
    store.set(0, 4 * PAGE_SIZE, P)
    store.set(4 * PAGE_SIZE, 4 * PAGE_SIZE, P | 1)
    assert list(store.ranges()) == [(0, 4 * PAGE_SIZE, P), (4 * PAGE_SIZE, 4 * PAGE_SIZE, P | 1)]
    assert store.get(4 * PAGE_SIZE - 1) == P and store.get(4 * PAGE_SIZE) == P | 1
    store.check()


def test_nbytes_is_small_for_well_behaved_guests():
    store = MemoryAttributes()
    store.set(0, 1 << 40, P)
    for k in range(1000):
        store.set((k * 1000 + 7) * PAGE_SIZE * 64, 3 * PAGE_SIZE, 0)
    assert len(store) == 1001
    assert store.nbytes < (32 << 20) // 100


def test_check_catches_a_broken_invariant():
    store = MemoryAttributes()
    store.set(0, 2 * PAGE_SIZE, P)
    store._bounds.append(5)
    with pytest.raises(AssertionError, match="bounds"):
        store.check()


def agreement_machine(name: str, supported: int, chunk_shift: int, value_list, ranges, loads=None):
    """Random set (and, given ``loads``, bitmap-load) sequences: the store equals the per-page
    twin page by page, and keeps its invariants (forms included) after every step."""

    values = st.sampled_from(value_list)

    class StoreAgreesWithPageMap(RuleBasedStateMachine):
        @initialize()
        def start(self):
            self.store = MemoryAttributes(supported, chunk_shift=chunk_shift)
            self.model = PageMapAttributes(supported)
            self.touched: set[int] = set()

        def _touch(self, gpa, size):
            first = gpa // PAGE_SIZE
            self.touched.update((first - 1, first, first + size // PAGE_SIZE))

        @rule(r=ranges, value=values)
        def set(self, r, value):
            gpa, size = r
            self.store.set(gpa, size, value)
            self.model.set(gpa, size, value)
            self._touch(gpa, size)

        @precondition(lambda self: loads is not None)
        @rule(load=st.nothing() if loads is None else loads, value=values)
        def load_bitmap(self, load, value):
            gpa, bits = load
            self.store.load_bitmap(gpa, bits, value)
            self.model.load_bitmap(gpa, bits, value)
            self._touch(gpa, len(bits) * 8 * PAGE_SIZE)

        @rule(r=ranges, value=values, flags=st.integers(0, 3), skew=st.integers(0, 4096))
        def invalid_set_changes_nothing(self, r, value, flags, skew):
            gpa, size = r
            if flags == 0 and skew % PAGE_SIZE == 0:
                return
            before = list(self.store.ranges())
            with pytest.raises(InvalidArgument):
                self.store.set(gpa + skew, size, value, flags)
            assert list(self.store.ranges()) == before

        @rule(r=ranges, value=values)
        def has_agrees(self, r, value):
            assert self.store.has(*r, value) == self.model.has(*r, value)

        @precondition(lambda self: self.touched)
        @rule(data=st.data())
        def get_agrees(self, data):
            gfn = data.draw(st.sampled_from(sorted(self.touched)))
            gfn = min(max(gfn, 0), LAST_GFN)
            assert self.store.get(gfn * PAGE_SIZE) == self.model.get(gfn * PAGE_SIZE)

        @rule(r=ranges)
        def window_agrees(self, r):
            assert list(self.store.ranges(*r)) == list(self.model.ranges(*r))

        @invariant()
        def same_runs_and_invariants_hold(self):
            self.store.check()
            assert list(self.store.ranges()) == list(self.model.ranges())
            for value in {0, *value_list}:
                assert self.store.pages(value) == self.model.pages(value)

    StoreAgreesWithPageMap.__name__ = name
    return StoreAgreesWithPageMap


TestStoreAgreesWithPageMap = agreement_machine("StoreAgreesWithPageMap", ATTR_PRIVATE, CHUNK_SHIFT, ATTRIBUTES,
                                               st.one_of(page_ranges(), chunk_edge_ranges(CHUNK_SHIFT, max_pages=1200))).TestCase
TestStoreAgreesWithPageMap.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)

TestSmallChunksAgreeWithPageMap = agreement_machine(
    "SmallChunksAgreeWithPageMap", ATTR_PRIVATE, SMALL_CHUNK_SHIFT, ATTRIBUTES,
    st.one_of(chunk_edge_ranges(SMALL_CHUNK_SHIFT), page_ranges(max_pages=300)), bitmaps(SMALL_CHUNK_SHIFT)).TestCase
TestSmallChunksAgreeWithPageMap.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)

TestWordValuesAgreeWithPageMap = agreement_machine(
    "WordValuesAgreeWithPageMap", 0xFF, WORD_CHUNK_SHIFT, WORD_ATTRIBUTES,
    chunk_edge_ranges(WORD_CHUNK_SHIFT), bitmaps(WORD_CHUNK_SHIFT)).TestCase
TestWordValuesAgreeWithPageMap.settings = settings(max_examples=70, stateful_step_count=40, deadline=None)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 600), attributes), max_size=25))
def test_bitmap_twin_agrees_inside_guest_memory(ops):
    memory = 4600 * PAGE_SIZE
    store, bitmap = MemoryAttributes(), BitmapAttributes(memory)
    for first, pages, value in ops:
        store.set(first * PAGE_SIZE, pages * PAGE_SIZE, value)
        bitmap.set(first * PAGE_SIZE, pages * PAGE_SIZE, value)
        bitmap.check()
    assert list(bitmap.ranges()) == list(store.ranges())
    for first, pages, value in ops:
        assert bitmap.has(first * PAGE_SIZE, pages * PAGE_SIZE, value) == \
            store.has(first * PAGE_SIZE, pages * PAGE_SIZE, value)


def test_bitmap_refuses_addresses_past_memory():
    bitmap = BitmapAttributes(GiB)
    with pytest.raises(InvalidArgument, match="address"):
        bitmap.set(GiB, PAGE_SIZE, P)


# -- the hybrid: forms, bounds and the bulk path -------------------------------------------

EVERY_OTHER = b"\x55"  # pages 0, 2, 4, ... of each byte set


def test_every_other_page_of_1_gib_costs_at_most_twice_a_bitmap_and_matches_the_bulk_load():
    """A guest flipping every other page, in shuffled order, makes every chunk dense: the
    footprint stays near a bitmap's, and equals what one bitmap load builds."""
    pages = GiB // PAGE_SIZE
    store = MemoryAttributes()
    store.set(0, GiB, P)
    holes = list(range(1, pages, 2))
    random.Random(7).shuffle(holes)
    for gfn in holes:
        store.set(gfn * PAGE_SIZE, PAGE_SIZE, 0)
    store.check()
    bulk = MemoryAttributes()
    bulk.load_bitmap(0, EVERY_OTHER * (pages // 8), P)
    assert store.dump() == bulk.dump()  # the same forms; containers may differ in spare capacity
    assert [c.planes for c in store._dense.values()] == [c.planes for c in bulk._dense.values()]
    assert abs(store.nbytes - bulk.nbytes) < 0.15 * bulk.nbytes  # a plane grown page by page over-allocates
    assert len(store._dense) == pages // CHUNK_PAGES
    assert store.nbytes <= 2 * BitmapAttributes(GiB).nbytes
    assert store.get(0) == P and store.get(PAGE_SIZE) == 0 and store.pages(P) == pages // 2


def test_hostile_guest_costs_at_most_twice_a_bitmap_and_one_set_clears_it():
    memory = 64 * GiB
    store = MemoryAttributes()
    store.load_bitmap(0, EVERY_OTHER * (memory // PAGE_SIZE // 8), P)
    assert len(store) == memory // PAGE_SIZE // CHUNK_PAGES  # one entry per dense chunk
    assert store.nbytes <= 2 * BitmapAttributes(memory).nbytes
    store.set(0, memory, P)
    assert store.dump() == [(0, memory // PAGE_SIZE, P)] and not store._dense
    store.check()


def test_well_behaved_1_tib_costs_under_a_quarter_percent_of_a_bitmap_after_lookups():
    store = MemoryAttributes()
    store.set(0, 1 << 40, P)
    rng = random.Random(1)
    for _ in range(1000):
        size = rng.randint(1, 512)
        store.set(rng.randrange(0, (1 << 28) - size) * PAGE_SIZE, size * PAGE_SIZE, 0)
    for _ in range(1000):
        store.get(rng.randrange(1 << 28) * PAGE_SIZE)  # builds the lookup cache
    store.check()
    assert not store._dense and store._cache is not None
    assert store.nbytes <= (32 << 20) * 0.0025


def test_runs_meeting_at_chunk_boundaries_are_one_range():
    """A run ending where a dense chunk starts with the same value, and runs crossing from
    one dense chunk into the next, come out of ranges() as single maximal runs."""
    chunk = CHUNK_PAGES * PAGE_SIZE
    store = MemoryAttributes()
    store.set(0, chunk, P)                                           # chunk 0: one run
    store.load_bitmap(chunk, b"\x0f" + EVERY_OTHER * (CHUNK_PAGES // 8 - 2) + b"\xf0", P)  # chunk 1 dense
    store.load_bitmap(2 * chunk, b"\x0f" + EVERY_OTHER * (CHUNK_PAGES // 8 - 1), P)       # chunk 2 dense
    assert sorted(store._dense) == [1, 2]
    runs = list(store.ranges())
    assert runs[0] == (0, chunk + 4 * PAGE_SIZE, P)                  # run + chunk 1's first 4 pages
    assert (2 * chunk - 4 * PAGE_SIZE, 8 * PAGE_SIZE, P) in runs     # chunk 1's last 4 + chunk 2's first 4
    assert list(store.ranges()) == list(store.ranges(0, 3 * chunk))
    assert store.has(chunk - PAGE_SIZE, 5 * PAGE_SIZE, P) and not store.has(chunk - PAGE_SIZE, 6 * PAGE_SIZE, P)
    store.check()


def test_dense_chunk_healed_page_by_page_returns_to_runs_then_to_one_run():
    store = MemoryAttributes(chunk_shift=SMALL_CHUNK_SHIFT)
    pages = 1 << SMALL_CHUNK_SHIFT
    store.load_bitmap(0, EVERY_OTHER * (pages // 8), P)
    assert 0 in store._dense
    forms = []
    for gfn in range(1, pages, 2):
        store.set(gfn * PAGE_SIZE, PAGE_SIZE, P)
        store.check()
        forms.append("dense" if store._dense else len(store))
    assert forms[0] == "dense" and forms[-1] == 1 and "dense" not in forms[forms.index(forms[-2]):]
    assert store.dump() == [(0, pages, P)]


def test_small_chunk_store_turns_dense_when_runs_cost_more():
    shift = SMALL_CHUNK_SHIFT
    store = MemoryAttributes(chunk_shift=shift)
    for gfn in range(0, 1 << shift, 2):
        store.set(gfn * PAGE_SIZE, PAGE_SIZE, P)
        store.check()
    assert list(store._dense) == [0]
    assert store.nbytes < 32 * RUNS_PER_CHUNK_BYTES(shift)


def RUNS_PER_CHUNK_BYTES(shift):
    """What the runs of every other page of one chunk would take: 12 bytes per bound."""
    return (1 << shift) * 12


def test_word_values_use_one_plane_per_bit():
    store = MemoryAttributes(0xFF, chunk_shift=WORD_CHUNK_SHIFT)
    pages = 1 << WORD_CHUNK_SHIFT
    store.load_bitmap(0, EVERY_OTHER * (pages // 8), 0x5)
    chunk = store._dense[0]
    assert chunk.bits == [1, 4] and store.get(0) == 5 and store.get(PAGE_SIZE) == 0
    store.set(PAGE_SIZE, PAGE_SIZE, 0x2)
    assert chunk.bits == [1, 2, 4] and store.get(PAGE_SIZE) == 2
    store.set(0, pages * PAGE_SIZE, 0x5)
    assert not store._dense and store.dump() == [(0, pages, 5)]
    store.check()


@pytest.mark.parametrize("args, field", [
    (dict(address=0, bits=b"", attributes=P), "bits"),
    (dict(address=0, bits=[1], attributes=P), "bits"),
    (dict(address=0, bits=b"\x01", attributes=1), "attributes"),
    (dict(address=100, bits=b"\x01", attributes=P), "address"),
    (dict(address=(1 << 64) - PAGE_SIZE, bits=b"\x01", attributes=P), "size"),
])
@pytest.mark.parametrize("store_type", [MemoryAttributes, PageMapAttributes])
def test_load_bitmap_validates_and_leaves_the_store_unchanged(store_type, args, field):
    store = store_type()
    store.set(0, 16 * PAGE_SIZE, P)
    store.load_bitmap(64 * PAGE_SIZE, EVERY_OTHER * 16, P)
    before = list(store.ranges())
    with pytest.raises(InvalidArgument) as error:
        store.load_bitmap(**args)
    assert error.value.field == field
    assert list(store.ranges()) == before


@pytest.mark.parametrize("shift", [2, 25, "16", True])
def test_chunk_shift_is_validated(shift):
    with pytest.raises(InvalidArgument, match="chunk_shift"):
        MemoryAttributes(chunk_shift=shift)


def test_form_choice_follows_measured_footprint():
    """The cost the form rule assumes for a dense chunk is what nbytes then reports, per chunk
    of a store holding many (a small dict's first entries cost more than its usual ones)."""
    chunks = 64
    store = MemoryAttributes()
    store.load_bitmap(0, EVERY_OTHER * (chunks * CHUNK_PAGES // 8), P)
    assert len(store._dense) == chunks
    per_chunk = (store.nbytes - MemoryAttributes().nbytes) / chunks
    assert abs(per_chunk - DenseChunk.footprint(1, CHUNK_PAGES // 8)) < 0.02 * per_chunk


@pytest.mark.parametrize("corrupt, why", [
    (lambda s: s._dense.pop(1), "dense"),
    (lambda s: setattr(s._dense[1], "transitions", 3), "transitions"),
    (lambda s: s._dense[1].ones.__setitem__(0, 7), "counts"),
    (lambda s: s._values.__setitem__(0, 3), "attributes"),
    (lambda s: s.get(0) and s._cache.codes.__setitem__(0, 1), "shared"),
])
def test_check_catches_broken_hybrid_invariants(corrupt, why):
    store = MemoryAttributes()
    store.set(0, 4 * PAGE_SIZE, P)
    store.load_bitmap(CHUNK_PAGES * PAGE_SIZE, EVERY_OTHER * (CHUNK_PAGES // 8), P)
    store.check()
    corrupt(store)
    with pytest.raises(AssertionError, match=why):
        store.check()


def test_check_catches_a_crowded_chunk_left_in_runs_form():
    store = MemoryAttributes(chunk_shift=SMALL_CHUNK_SHIFT)
    for gfn in range(0, 1 << SMALL_CHUNK_SHIFT, 2):
        store._assign(gfn, gfn + 1, P)  # runs-level writes: no form rule applied, on purpose
    with pytest.raises(AssertionError, match="more than its dense form"):
        store.check()


@settings(max_examples=100, deadline=None)
@given(loads=st.lists(st.tuples(st.integers(0, 520), st.binary(min_size=1, max_size=40), attributes), max_size=6))
def test_bitmap_twin_load_agrees(loads):
    memory = 4600 * PAGE_SIZE
    store, bitmap = MemoryAttributes(chunk_shift=SMALL_CHUNK_SHIFT), BitmapAttributes(memory)
    for first, bits, value in loads:
        store.load_bitmap(first * PAGE_SIZE, bits, value)
        bitmap.load_bitmap(first * PAGE_SIZE, bits, value)
    store.check()
    bitmap.check()
    assert list(bitmap.ranges()) == list(store.ranges())


@pytest.mark.parametrize("memory", [4 << 20, 32 << 20, 300 << 20])
def test_guests_not_a_multiple_of_a_chunk_cost_at_most_twice_a_bitmap(memory):
    """A plane reaches only the guest's pages, so small and odd-sized guests keep the bound
    (below 32 MiB the store's fixed objects, under 1 KiB, weigh more than the bits)."""
    pages = memory // PAGE_SIZE
    bound = max(2 * BitmapAttributes(memory).nbytes, BitmapAttributes(memory).nbytes + 1024)
    bulk = MemoryAttributes()
    bulk.load_bitmap(0, EVERY_OTHER * (pages // 8), P)
    assert bulk.nbytes <= bound
    if memory <= 4 << 20:
        per_page = MemoryAttributes()
        per_page.set(0, memory, P)
        for gfn in range(1, pages, 2):
            per_page.set(gfn * PAGE_SIZE, PAGE_SIZE, 0)
        per_page.check()
        assert per_page.nbytes <= bound
