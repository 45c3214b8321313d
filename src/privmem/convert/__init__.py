"""Conversion tracking (pending requests), the engine and its discard policies (the protocol,
the specs that configure them and the registry, ``POLICIES``, filled by ``@policy``)."""

from .catalogue import POLICIES, make_policy, policy, policy_class
from .engine import ConversionEngine, EngineStats
from .protocol import DISCARD, HOLD, MODEL_PROPERTIES, HoldEverything, Policy
from .spec import FLOAT, INT, SIZE, TIME, Param, ShareOfMemory, parse_spec
from .tracker import Conversion, ConversionTracker, Request

__all__ = ["DISCARD", "FLOAT", "HOLD", "INT", "MODEL_PROPERTIES", "POLICIES", "SIZE", "TIME", "Conversion",
           "ConversionEngine", "ConversionTracker", "EngineStats", "HoldEverything", "Param", "Policy", "Request", "ShareOfMemory",
           "make_policy", "parse_spec", "policy", "policy_class"]
