"""The built-in discard policies, one family per module, each registered with ``@policy``.

Every module of this package is imported here, so a new policy is one new file: the classic
catalogue first, in the order the docs present it, then every other module by name.  The
engine imports this package, so ``POLICIES`` is full whoever asks.
"""

import importlib
import pkgutil

from ..catalogue import POLICIES, make_policy, policy, policy_class
from ..protocol import DISCARD, HOLD, Policy
from . import simple, lazy, adaptive  # noqa: I001  (this order is the catalogue's)
from .adaptive import AdaptivePolicy
from .lazy import LazyPolicy
from .simple import EagerPolicy, KeepSharedPolicy, NeverPolicy

for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["AdaptivePolicy", "DISCARD", "EagerPolicy", "HOLD", "KeepSharedPolicy", "LazyPolicy", "NeverPolicy",
           "POLICIES", "Policy", "make_policy", "policy", "policy_class"]
