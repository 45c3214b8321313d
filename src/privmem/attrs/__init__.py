"""Attribute stores: the range store and its naive twins (per-page map, bitmap)."""

from .bitmap import BitmapAttributes
from .pagemap import PageMapAttributes
from .ranges import MemoryAttributes
from .validate import ATTR_PRIVATE

__all__ = ["ATTR_PRIVATE", "BitmapAttributes", "MemoryAttributes", "PageMapAttributes"]
