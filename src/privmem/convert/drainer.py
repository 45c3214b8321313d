"""Background draining: ticks the engine while the guest runs, as a VMM's worker would."""

from __future__ import annotations

import contextlib
import threading

from ..threads import join_all, start_all


class Drainer:
    """A thread calling ``engine.tick()`` every ``interval`` seconds (``for_engine``: the
    policy's ``tick_interval``), so held memory is discarded on time even when the guest stops
    converting.  Only policies whose drain depends on time need one; ``for_engine`` returns a
    do-nothing context for the rest (``tick_interval`` None).  A context manager: the thread
    stops and is joined on exit.  A tick that raises stops the drainer and never goes unseen:
    ``on_error(error)`` is called at once (a machine stops its run with it), and the error is
    re-raised from ``__exit__`` (the engine already keeps failed discards held and retries
    them, so this is a bug, not an I/O error)."""

    def __init__(self, engine, interval: float, on_error=None):
        self.engine, self.interval, self.on_error = engine, interval, on_error
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="privmem-drainer", daemon=True)

    @classmethod
    def for_engine(cls, engine, on_error=None):
        """A drainer for ``engine``'s policy, or a do-nothing context where none is needed."""
        interval = getattr(getattr(engine, "policy", None), "tick_interval", None)
        if interval is None:
            return contextlib.nullcontext()
        return cls(engine, interval, on_error)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                self.engine.tick()
        except BaseException as error:  # surfaced by on_error and __exit__
            self._error = error
            if self.on_error is not None:
                self.on_error(error)

    def __enter__(self) -> "Drainer":
        start_all([self._thread])
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        join_all([self._thread])
        if self._error is not None and exc[0] is None:
            raise self._error
