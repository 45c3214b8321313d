"""MemoryAttributes: validation, semantics, and agreement with the per-page twin."""

from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import privmem
from privmem import ATTR_PRIVATE, PAGE_SIZE, InvalidArgument, MemoryAttributes
from privmem.attrs import BitmapAttributes, PageMapAttributes

from .strategies import LAST_GFN, attributes, page_ranges

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


class StoreAgreesWithPageMap(RuleBasedStateMachine):
    """Random set sequences: the run store equals the per-page twin page by page."""

    @initialize()
    def start(self):
        self.store = MemoryAttributes()
        self.model = PageMapAttributes()
        self.touched: set[int] = set()

    @rule(r=page_ranges(), value=attributes)
    def set(self, r, value):
        gpa, size = r
        self.store.set(gpa, size, value)
        self.model.set(gpa, size, value)
        first = gpa // PAGE_SIZE
        self.touched.update((first - 1, first, first + size // PAGE_SIZE))

    @rule(r=page_ranges(), value=attributes, flags=st.integers(0, 3), skew=st.integers(0, 4096))
    def invalid_set_changes_nothing(self, r, value, flags, skew):
        gpa, size = r
        if flags == 0 and skew % PAGE_SIZE == 0:
            return
        before = list(self.store.ranges())
        with pytest.raises(InvalidArgument):
            self.store.set(gpa + skew, size, value, flags)
        assert list(self.store.ranges()) == before

    @rule(r=page_ranges(max_pages=600), value=attributes)
    def has_agrees(self, r, value):
        assert self.store.has(*r, value) == self.model.has(*r, value)

    @precondition(lambda self: self.touched)
    @rule(data=st.data())
    def get_agrees(self, data):
        gfn = data.draw(st.sampled_from(sorted(self.touched)))
        gfn = min(max(gfn, 0), LAST_GFN)
        assert self.store.get(gfn * PAGE_SIZE) == self.model.get(gfn * PAGE_SIZE)

    @rule(r=page_ranges())
    def window_agrees(self, r):
        assert list(self.store.ranges(*r)) == list(self.model.ranges(*r))

    @invariant()
    def same_runs_and_invariants_hold(self):
        self.store.check()
        assert list(self.store.ranges()) == list(self.model.ranges())
        assert self.store.pages(P) == self.model.pages(P)
        assert self.store.pages(0) == self.model.pages(0)


TestStoreAgreesWithPageMap = StoreAgreesWithPageMap.TestCase
TestStoreAgreesWithPageMap.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


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
