"""Fault injection: a backing whose chosen calls fail with chosen errnos.

For testing callers' error paths (discard failing with ENOMEM or EIO, ...) where the real
kernel cannot be made to fail on demand.  Not a mock of the kernel: every call that is not
made to fail goes to the real backing underneath.

    faulty = FaultyBacking(backing, fail={"discard": [errno.ENOMEM, None, errno.EIO]})
    faulty.discard(0, 4096)     # SyscallError("fallocate", ENOMEM), nothing discarded
    faulty.discard(0, 4096)     # None in the queue: the real discard runs
    faulty.discard(0, 4096)     # SyscallError("fallocate", EIO); later calls run for real

A rule is an int (every call fails with it), a sequence (one entry per call, None = pass
through, exhausted = pass through), or a callable ``rule(*args, **kwargs) -> errno | None``.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from ..errors import SyscallError

CALL_NAMES = {"discard": "fallocate", "allocate": "fallocate", "allocated_bytes": "cachestat",
              "allocated_bytes_in": "cachestat", "allocated_ranges": "cachestat", "seal": "mprotect",
              "read": "read", "write": "write", "fill": "write"}


class FaultyBacking:
    """Same interface as ``inner``; methods named in ``fail`` may raise
    ``SyscallError(<syscall>, errno, "injected")`` instead of running.

    ``injected`` lists (method, errno, args) of every failure raised; ``calls`` counts the
    calls per wrapped method (failed or not).
    """

    def __init__(self, inner, fail: dict[str, Any] | None = None):
        self.inner = inner
        self.injected: list[tuple[str, int, tuple]] = []
        self.calls: collections.Counter = collections.Counter()
        self._rules: dict[str, Callable[..., int | None]] = {}
        for method, rule in (fail or {}).items():
            self.set_rule(method, rule)

    def set_rule(self, method: str, rule) -> None:
        """Replace the rule for ``method`` (None removes it)."""
        if not callable(getattr(self.inner, method, None)):
            raise AttributeError(f"{type(self.inner).__name__} has no method {method!r}")
        if rule is None:
            self._rules.pop(method, None)
        elif isinstance(rule, int):
            self._rules[method] = lambda *a, _err=rule, **k: _err
        elif callable(rule):
            self._rules[method] = rule
        else:
            queue = collections.deque(rule)
            self._rules[method] = lambda *a, **k: queue.popleft() if queue else None

    def __getattr__(self, name: str):
        target = getattr(self.inner, name)
        rule = self._rules.get(name)
        if rule is None:
            return target

        def faulty(*args, **kwargs):
            self.calls[name] += 1
            err = rule(*args, **kwargs)
            if err:
                self.injected.append((name, err, args))
                raise SyscallError(CALL_NAMES.get(name, name), err, f"injected by FaultyBacking.{name}{args}")
            return target(*args, **kwargs)

        return faulty

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"<FaultyBacking {sorted(self._rules)} of {self.inner!r}>"
