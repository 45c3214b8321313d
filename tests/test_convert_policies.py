"""The policy API: specs, the registry, the protocol's contract for every registered policy,
the per-conversion hook, and policies registered by a user (from Python or an entry point)."""

import contextlib
import sys
import textwrap

import pytest

from privmem import ConversionEngine, ConversionTracker, InvalidArgument, MemoryAttributes
from privmem.backing import PrivateBacking, SharedBacking
from privmem.convert import (DISCARD, HOLD, MODEL_PROPERTIES, POLICIES, TIME, Policy, make_policy, parse_spec,
                             policy, policy_class)
from privmem.convert.drainer import Drainer
from privmem.convert.held import HELD_PRIVATE, HELD_SHARED
from privmem.convert.protocol import BUDGET_BOUNDED
from privmem.errors import InvalidState
from privmem.registry import Registry
from privmem.units import GiB, MiB

PAGE = 4096
MEMORY = 4 * MiB


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test are forgotten after it."""
    monkeypatch.setattr(POLICIES, "_entries", dict(POLICIES._entries))


@contextlib.contextmanager
def engine_with(policy_object, clock=None):
    with SharedBacking.create(MEMORY) as shared, PrivateBacking.standin(MEMORY) as private:
        kwargs = {"clock": clock} if clock else {}
        yield ConversionEngine(ConversionTracker(MemoryAttributes()), policy_object, shared, private, **kwargs)


# -- specs --------------------------------------------------------------------------------

def test_spec_grammar():
    assert parse_spec("lazy") == ("lazy", {})
    assert parse_spec(" lazy : budget = 8M , max_age=20ms ") == ("lazy", {"budget": "8M", "max_age": "20ms"})


def test_spec_values_in_their_units():
    lazy = make_policy("lazy:budget=8M,max_age=20ms", GiB)
    assert (lazy.budget, lazy.max_age, lazy.batch) == (8 * MiB, 0.020, 2 * MiB)
    assert make_policy("lazy:max_age=1.5s", GiB).max_age == 1.5
    assert make_policy("lazy:max_age=500us", GiB).max_age == 0.0005
    assert make_policy("lazy:budget=0x100000", GiB).budget == MiB
    assert make_policy("lazy", GiB).budget == GiB // 100          # the default follows the guest
    assert make_policy("lazy", GiB, budget=3 * MiB).budget == 3 * MiB


@pytest.mark.parametrize("spec, field, message", [
    ("sometimes", "policy='sometimes'", "unknown (choose from never, eager, keep-shared, lazy, adaptive"),
    ("", "policy=''", "not a policy spec"),
    ("lazy:", "policy='lazy:'", "nothing after ':'"),
    ("lazy:budget", "policy='lazy:budget'", "'budget' is not param=value"),
    ("lazy:budget=8M,budget=9M", "lazy.budget='9M'", "given twice"),
    ("lazy:bugdet=8M", "lazy.bugdet='8M'", "unknown parameter (lazy takes budget=SIZE, max_age=TIME, batch=SIZE)"),
    ("never:n=1", "never.n='1'", "unknown parameter (never takes no parameters)"),
    ("lazy:budget=8Q", "lazy.budget='8Q'", "not a size"),
    ("lazy:budget=0", "lazy.budget='0'", "must be positive"),
    ("lazy:max_age=20", "lazy.max_age='20'", "a unit is required"),
    ("lazy:max_age=-1ms", "lazy.max_age='-1ms'", "not a time"),
    ("lazy:batch=" + "9" * 200, "lazy.batch='" + "9" * 60, "...: must be below 2**64"),
])
def test_bad_specs_name_the_field_the_value_and_what_is_allowed(spec, field, message):
    with pytest.raises(InvalidArgument) as error:
        make_policy(spec, GiB)
    text = str(error.value)
    assert text.startswith(field) and message in text and len(text) < 400


def test_a_value_given_in_the_spec_and_from_python_is_refused():
    with pytest.raises(InvalidArgument, match="lazy.budget=.*given twice"):
        make_policy("lazy:budget=8M", GiB, budget=4 * MiB)


@pytest.mark.parametrize("seconds", [0.05, 0.02, 1.5, 2, 0.0005, 1e-7, 0.123456789, 3600])
def test_times_round_trip_through_their_canonical_text(seconds):
    assert TIME.parse(TIME.format(seconds)) == seconds


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_spec_round_trips(name):
    made = make_policy(name, GiB)
    again = make_policy(made.spec, 16 * MiB)         # every parameter written out: memory no longer matters
    assert str(again) == str(made) == made.spec and again.spec.split(":")[0] == name
    for param in made.params:
        assert getattr(again, param.name) == getattr(made, param.name)


# -- the protocol, for every registered policy --------------------------------------------

@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_keeps_the_protocol(name):
    cls = policy_class(name)
    made = make_policy(name, 64 * MiB)
    assert cls.name == name and cls.summary and cls.model_property in MODEL_PROPERTIES
    assert isinstance(made.queues, bool) and isinstance(made.ages, bool)
    assert made.tick_interval is None or made.tick_interval > 0
    assert made.budget_bytes is None or made.budget_bytes > 0
    if cls.model_property == BUDGET_BOUNDED:
        assert made.budget_bytes is not None, "a budget-bounded policy reports its budget"
    for param in cls.params:
        assert param.help and param.name in made.spec
    assert set(cls.model_params) <= {param.name for param in cls.params}
    for side in (HELD_SHARED, HELD_PRIVATE):
        pieces = make_policy(name, 64 * MiB).left_behind(side, 16 * PAGE, 8 * PAGE)
        cursor = 16 * PAGE
        for gpa, size, verdict in pieces:
            assert gpa == cursor and size > 0 and verdict in (DISCARD, HOLD)
            cursor += size
        assert cursor == 24 * PAGE, "left_behind pieces tile the range"
        if made.holds(side):
            assert pieces == [(16 * PAGE, 8 * PAGE, HOLD)], "holds(side) promises one HOLD piece"


@pytest.mark.parametrize("name", list(POLICIES))
def test_the_drainer_follows_the_tick_interval(name):
    with engine_with(make_policy(name, MEMORY)) as engine:
        drainer = Drainer.for_engine(engine)
        if engine.policy.tick_interval is None:
            assert isinstance(drainer, contextlib.nullcontext)
        else:
            assert drainer.interval == engine.policy.tick_interval


def test_builtins_do_not_bind_the_per_conversion_hook():
    for name in POLICIES:
        policy_object = make_policy(name, MEMORY)
        with engine_with(policy_object) as engine:
            overrides = type(policy_object).converted is not Policy.converted
            assert (engine._on_conversion is not None) == overrides


class Recorder(Policy):
    """Holds everything and records the engine's calls, in order."""

    queues = True

    def __init__(self):
        super().__init__()
        self.calls = []

    def converted(self, conversion, now):
        self.calls.append(("converted", conversion.changed, conversion.to_private))

    def holds(self, side):
        return False

    def entered(self, gpa, size, reclaimed):
        self.calls.append(("entered", gpa, size, reclaimed))

    def left_behind(self, side, gpa, size):
        self.calls.append(("left_behind", side, gpa, size))
        return [(gpa, size, HOLD)]

    def drain(self, held, now, force=False):
        self.calls.append(("drain", force))
        return super().drain(held, now, force)


def test_the_hook_runs_once_per_conversion_before_the_per_range_calls():
    recorder = Recorder()
    with engine_with(recorder) as engine:
        engine.convert(2 * PAGE, PAGE, True)
        recorder.calls.clear()
        engine.convert(0, 4 * PAGE, True)                 # changes [0, 2) and [3, 4) pages
        assert recorder.calls == [
            ("converted", ((0, 2 * PAGE), (3 * PAGE, PAGE)), True),
            ("entered", 0, 2 * PAGE, 0), ("left_behind", HELD_SHARED, 0, 2 * PAGE),
            ("entered", 3 * PAGE, PAGE, 0), ("left_behind", HELD_SHARED, 3 * PAGE, PAGE),
            ("drain", False)]
        recorder.calls.clear()
        engine.convert(0, 4 * PAGE, True)                 # nothing changes: no hook, still a drain
        assert recorder.calls == [("drain", False)]
        recorder.calls.clear()
        engine.convert(0, PAGE, False)                    # a flip back: its memory reclaimed
        assert recorder.calls[1] == ("entered", 0, PAGE, PAGE)
        engine.flush()
        assert recorder.calls[-1] == ("drain", True) and engine.stats.double_allocated_bytes == 0


def test_a_queueing_policy_without_ages_reports_its_queued_bytes():
    recorder = Recorder()
    assert recorder.queues and not recorder.ages
    with engine_with(recorder) as engine:
        engine.convert(0, 8 * PAGE, True)
        assert not engine.held.track_age
        assert engine.stats.queued_bytes == engine.stats.double_allocated_bytes == 8 * PAGE
        engine.flush()
        assert engine.stats.queued_bytes == 0 and engine.stats.discarded_bytes == 8 * PAGE


# -- user policies --------------------------------------------------------------------------

def test_a_user_policy_registered_from_python_runs_everywhere(scratch_registry):
    from privmem.runner import run_trace
    from privmem.workload import generate

    @policy("test-every-other", "discard what is left on even conversions, hold it on odd ones")
    class EveryOther(Policy):
        queues = True

        def __init__(self, **values):
            super().__init__(**values)
            self.count = 0

        def converted(self, conversion, now):
            self.count += 1

        def left_behind(self, side, gpa, size):
            return [(gpa, size, DISCARD if self.count % 2 == 0 else HOLD)]

    assert "test-every-other" in POLICIES and list(POLICIES)[-1] == "test-every-other"
    result = run_trace(generate("ovmf-dma", memory=16 * MiB, scale=0.02), "test-every-other", backend="host")
    assert result.policy == "test-every-other" and result.data_errors == 0
    assert 0 < result.discards < result.conversions
    with pytest.raises(ValueError, match="already registered"):
        policy("test-every-other", "again")(EveryOther)


def test_the_decorator_refuses_what_is_not_a_policy(scratch_registry):
    with pytest.raises(TypeError):
        policy("test-not-a-class", "x")(lambda: None)
    with pytest.raises(ValueError, match="letters"):
        policy("bad:name", "x")(type("Bad", (Policy,), {}))
    with pytest.raises(ValueError, match="model_property"):
        policy("test-odd", "x")(type("Odd", (Policy,), {"model_property": "vibes"}))


def write_plugin(root, group: str, module: str, body: str) -> None:
    """A distribution on ``root`` whose entry point in ``group`` names ``module``."""
    info = root / "privmem_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: privmem-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{group}]\nplugin = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(body))


def test_policies_from_an_entry_point_load_once_on_first_read(tmp_path, monkeypatch, scratch_registry):
    write_plugin(tmp_path, "privmem.policies", "privmem_test_plugin_policy", """
        from privmem.convert import policy
        from privmem.convert.policies import NeverPolicy

        LOADS = []

        @policy("test-plugin", "a policy from another package")
        class PluginPolicy(NeverPolicy):
            pass                                  # never, under another name

        LOADS.append(1)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(POLICIES, "_loaded", False)
    try:
        assert "test-plugin" in POLICIES and "test-plugin" in list(POLICIES)
        assert make_policy("test-plugin", MEMORY).spec == "test-plugin"
        assert sys.modules["privmem_test_plugin_policy"].LOADS == [1]
    finally:
        sys.modules.pop("privmem_test_plugin_policy", None)


def test_a_plugin_that_fails_to_load_is_named(tmp_path, monkeypatch):
    write_plugin(tmp_path, "privmem.test-things", "privmem_test_plugin_broken", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    things = Registry("thing", group="privmem.test-things")
    with pytest.raises(InvalidState, match="thing plugin 'plugin' .*privmem_test_plugin_broken.*boom"):
        list(things)
