"""Conversion tracking (pending requests), the engine and its discard policies."""

from .tracker import Conversion, ConversionTracker, Request

__all__ = ["Conversion", "ConversionTracker", "Request"]
