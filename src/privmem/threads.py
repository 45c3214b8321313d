"""Starting and joining threads so that Ctrl-C cannot land halfway.

Two hazards of CPython's ``threading`` that a stop path must avoid:

* ``Thread.start()`` waits for the new thread to come up; a KeyboardInterrupt raised in that
  wait leaves a thread that runs but that ``is_alive()`` may not report yet.
* ``Thread.join()`` interrupted by a KeyboardInterrupt (CPython 3.11's ``_wait_for_tstate_lock``
  error path) can release the joined thread's state lock and mark it stopped while it still
  runs: ``is_alive()`` then says False, and a stop path that trusts it unmaps memory under a
  running vCPU.

So threads are started and joined with SIGINT and SIGTERM blocked in the calling thread (a
signal that arrives meanwhile stays pending and is raised once the mask is restored), and
waiting for threads to finish, the part Ctrl-C must interrupt, waits on an Event each thread
sets as it ends.  Started threads inherit the mask, so a process-directed Ctrl-C always lands
in the main thread, never in a vCPU or helper thread.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def stop_signals_blocked():
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_all(threads: Iterable[threading.Thread]) -> None:
    """Start every thread; a Ctrl-C meanwhile is raised after the last one is up."""
    with stop_signals_blocked():
        for thread in threads:
            thread.start()


def join_all(threads: Iterable[threading.Thread], nudge: Callable[[], None] | None = None,
             every: float = 0.5) -> None:
    """Join every thread with Ctrl-C held off (it is raised afterwards), calling ``nudge()``
    (e.g. kick the vCPUs again) each ``every`` seconds a thread is still running."""
    with stop_signals_blocked():
        for thread in threads:
            if thread.ident is None:        # never started
                continue
            thread.join(every)
            while thread.is_alive():
                if nudge is not None:
                    nudge()
                thread.join(every)


__all__ = ["STOP_SIGNALS", "join_all", "start_all", "stop_signals_blocked"]
