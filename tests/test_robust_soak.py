"""`privmem soak` backend logic (src/privmem/soak.py): a short soak on each backend comes
out clean, a machine that loses data is caught, and bad arguments name the field."""

from __future__ import annotations

import pytest

from privmem import InvalidArgument
from privmem import runner
from privmem.soak import KEYS, format_soak, run_soak

from .resources import resources


@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=pytest.mark.kvm), "host"])
def test_short_soak_is_clean(backend):
    before = resources()
    result = run_soak(2.0, vcpus=2, memory="16M", policy="lazy", backend=backend, seed=3)
    assert set(KEYS) <= set(result)
    assert result["backend"] == backend and result["seconds"] >= 2.0
    assert result["conversions"] > 100 and result["conversions_per_s"] > 0
    assert result["data_errors"] == 0 and result["dma_errors"] == 0
    assert result["psc_errors"] == 0 and result["state_errors"] == 0
    assert result["verified_pages"] > 0 and result["psc_retries"] >= 0
    text = format_soak(result)
    assert f"soak on {backend}" in text and text.endswith("OK")
    assert resources() == before


@pytest.mark.kvm
def test_sampled_soak_on_the_machine_is_clean():
    result = run_soak(1.0, vcpus=2, memory="16M", policy="adaptive", backend="kvm", seed=4, data_check="sampled")
    assert result["data_errors"] == 0 and result["state_errors"] == 0 and result["conversions"] > 0


def test_host_soak_sees_overlapping_requests_retry():
    result = run_soak(1.0, vcpus=4, memory="16M", policy="eager", backend="host", seed=1)
    assert result["psc_retries"] > 0 and result["data_errors"] == 0


def test_soak_catches_a_machine_that_loses_data(monkeypatch):
    """Mutation check: swap the engine's backings so drains punch the side in use.  The soak
    must report data errors (it would be worthless if it could not)."""
    real = runner.make_machine

    def broken(*args, **kwargs):
        machine = real(*args, **kwargs)
        backings = machine.engine.backings
        backings[1], backings[2] = backings[2], backings[1]
        return machine

    monkeypatch.setattr(runner, "make_machine", broken)
    result = run_soak(0.5, vcpus=2, memory="16M", policy="lazy", backend="host", seed=2)
    assert result["data_errors"] > 0
    assert format_soak(result).endswith("FAILED")


@pytest.mark.parametrize("kwargs, shown", [
    (dict(seconds=0), "seconds=0: must be a number > 0 and at most 86400"),
    (dict(seconds=float("inf")), "seconds=inf"),
    (dict(seconds=1, vcpus=0), "vcpus=0: must be in 1..64"),
    (dict(seconds=1, memory="1Q"), "memory='1Q': not a size"),
    (dict(seconds=1, memory="4M", vcpus=4), "memory=0x400000: 4.0 MiB is too small for a soak with 4 vCPU(s)"),
    (dict(seconds=1, policy="sometimes", backend="host"), "policy='sometimes': unknown"),
    (dict(seconds=1, backend="qemu"), "backend='qemu': unknown"),
    (dict(seconds=1, seed="x"), "seed='x': must be an integer"),
    (dict(seconds=1, data_check="most"), "data_check='most': must be 'full' or 'sampled'"),
])
def test_bad_soak_arguments_name_the_field(kwargs, shown):
    before = resources()
    with pytest.raises(InvalidArgument) as info:
        run_soak(**kwargs)
    assert shown in str(info.value)
    assert resources() == before
