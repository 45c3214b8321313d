"""Ctrl-C and SIGTERM at a random moment of a real run: the CLI stops every vCPU, exits 130
(143 for SIGTERM) with one line saying what was interrupted, and leaves no core and no
partial output behind."""

import random
import signal
import subprocess
import sys
import time

import pytest

BACKENDS = [pytest.param("kvm", marks=pytest.mark.kvm), "host"]


def interrupted(tmp_path, command: list[str], sig: int, after: float) -> tuple[int, str]:
    process = subprocess.Popen([sys.executable, "-m", "privmem", *command], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    time.sleep(after)
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, err.decode()


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_at_random_moments_of_a_soak(tmp_path, backend):
    rng = random.Random(20261201)
    for _ in range(3):
        code, err = interrupted(tmp_path, ["soak", "--seconds", "30", "--backend", backend, "--json"],
                                signal.SIGINT, rng.uniform(0.8, 2.5))
        assert code == 130, err
        assert err.strip().splitlines()[-1] == "privmem soak interrupted by Ctrl-C: every vCPU stopped, " \
                                                "no result written"
        assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []                 # no core, no partial file


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_during_a_bench_writes_nothing(tmp_path, backend):
    code, err = interrupted(tmp_path, ["bench", "--quick", "--backend", backend], signal.SIGTERM, 2.0)
    assert code == 143 and "privmem bench interrupted by SIGTERM" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
