"""Conversion tracking (pending requests), the engine and its discard policies."""

from .engine import ConversionEngine, EngineStats
from .policies import POLICIES, Policy, make_policy
from .tracker import Conversion, ConversionTracker, Request

__all__ = ["POLICIES", "Conversion", "ConversionEngine", "ConversionTracker", "EngineStats", "Policy",
           "Request", "make_policy"]
