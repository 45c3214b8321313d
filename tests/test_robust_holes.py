"""The remaining holes the adversarial pass found, one test each: the tracker trusts its own
copy of a request, a drainer's failure stops the run instead of draining silently no more,
a closed engine refuses conversions, and a guest that needs more memslots than KVM has gets
an error status while its run goes on."""

import threading
import time

import pytest

from privmem.attrs import ATTR_PRIVATE, MemoryAttributes
from privmem.convert import ConversionTracker
from privmem.convert.drainer import Drainer
from privmem.errors import InvalidState
from privmem.ops import convert, dma_in, verify
from privmem.units import MiB
from privmem.vmm.host import HostMachine

PAGE = 4096


def test_commit_applies_the_stored_request_not_the_callers_copy():
    tracker = ConversionTracker(MemoryAttributes())
    request = tracker.request(0, PAGE, True)
    forged = request._replace(gpa=16 * PAGE, size=64 * PAGE, private=False)
    conversion = tracker.commit(forged)
    assert conversion.changed == ((0, PAGE),) and conversion.to_private
    assert tracker.store.has(0, PAGE, ATTR_PRIVATE) and not tracker.store.has(16 * PAGE, PAGE, ATTR_PRIVATE)
    tracker.release(request)
    with pytest.raises(InvalidState, match="not in flight"):
        tracker.commit(request)                                  # committing twice is refused


class _FailingTick:
    """An engine stand-in whose tick raises (a bug in a policy's drain)."""

    def __init__(self):
        self.ticks = 0

    def tick(self):
        self.ticks += 1
        raise RuntimeError("drain blew up")


def test_a_drainer_error_reaches_on_error_at_once_and_is_raised_at_exit():
    engine, seen = _FailingTick(), []
    drainer = Drainer(engine, 0.001, on_error=seen.append)
    with pytest.raises(RuntimeError, match="drain blew up"):
        with drainer:
            deadline = time.monotonic() + 5
            while not seen and time.monotonic() < deadline:
                time.sleep(0.001)
    assert engine.ticks == 1 and len(seen) == 1                  # the drainer stopped at the first error


def test_a_drainer_error_stops_the_machines_run(monkeypatch):
    with HostMachine("16M", 1, policy="lazy:budget=1M,max_age=2ms") as machine:
        def broken_tick(*args, **kwargs):
            raise RuntimeError("drain blew up")
        monkeypatch.setattr(machine.engine, "tick", broken_tick)
        ops = [convert(4 * MiB, PAGE, "shared"), convert(4 * MiB, PAGE, "private")] * 20_000
        with pytest.raises(RuntimeError, match="drain blew up"):
            machine.run_ops(ops, timeout=60)
        assert not any(t.name.startswith("privmem-") for t in threading.enumerate() if t.is_alive())


def test_a_closed_engine_refuses_conversions():
    machine = HostMachine("16M", 1)
    engine = machine.engine
    machine.close()
    with pytest.raises(InvalidState, match="the engine is closed"):
        engine.convert(4 * MiB, PAGE, False)


@pytest.mark.kvm
def test_memslot_exhaustion_answers_the_guest_with_an_error_status():
    from privmem.vmm.memslots import MemslotMachine

    with MemslotMachine("16M", merge=False) as machine:
        machine.max_slots = machine.slot_firmware + 5           # room for one split, not two
        result = machine.run_ops([convert(4 * MiB, PAGE, "shared"), convert(8 * MiB, PAGE, "shared"),
                                  dma_in(4 * MiB, PAGE, 0x5a), verify(4 * MiB, PAGE, "shared", 0x5a)], timeout=60)
        assert machine.psc_errors == 1 and result.data_errors == 0  # refused, then the run went on
        assert machine.store.has(8 * MiB, PAGE, ATTR_PRIVATE)       # the refused conversion changed nothing
        machine.check_layout()


def test_a_conversion_cannot_punch_between_a_device_check_and_its_transfer():
    """An eager to-private conversion used to be able to punch the shared pages a DMA had
    just been allowed to use, so the DMA re-allocated memory the books never saw.  Now the
    check and the transfer happen under one pin: the conversion is Busy until the device is
    done, and nothing changed."""
    from privmem.errors import Busy

    base = 4 * MiB
    with HostMachine("16M", 1, policy="eager") as machine:
        engine = machine.engine
        engine.convert(base, 2 * PAGE, False)
        with engine.device_access(base, 2 * PAGE) as pieces:
            with pytest.raises(Busy) as info:
                engine.convert(base + PAGE, PAGE, True)
            assert info.value.gpa == base + PAGE                 # the first page the device holds
            for offset, size in pieces:                          # the transfer the check allowed
                machine.shared.write(offset, b"\x5a" * size)
            assert not engine.store.has(base + PAGE, PAGE, ATTR_PRIVATE)
        assert machine.shared.read(base + PAGE, 8) == b"\x5a" * 8
        engine.convert(base + PAGE, PAGE, True)                  # after the device: it converts, and punches
        assert engine.store.has(base + PAGE, PAGE, ATTR_PRIVATE)
        assert engine.shared.allocated_ranges(base + PAGE, PAGE) == []
