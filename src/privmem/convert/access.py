"""The device-access rule every engine applies: the host and its devices touch shared pages
of guest RAM only, and a device's check and transfer see the same state."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import AccessDenied, InvalidArgument
from ..memmap import GpaRange
from ..units import PAGE_SHIFT, PAGE_SIZE


class DeviceAccessRules:
    """Mixed into an engine that has ``memory_map``, ``store`` and ``tracker``.  The store is
    read under the tracker's lock, which every commit takes, whatever else an engine locks."""

    def require_shared(self, gpa: int, size: int) -> None:
        """Raise AccessDenied unless every page of the range of RAM is shared: the host and
        its devices never touch private memory."""
        where = self.memory_map.range(gpa, size)
        with self.tracker.lock:
            self._refuse_private(where, gpa, size)

    def _refuse_private(self, where: GpaRange, gpa: int, size: int) -> None:
        private = next(self.store.page_runs(where.first, where.stop), None)
        if private is not None:
            raise AccessDenied(f"host access to [{gpa:#x}, {gpa + size:#x}) refused: "
                               f"page {private[0] << PAGE_SHIFT:#x} is private")

    def _device_pages(self, gpa: int, n: int) -> GpaRange | None:
        """The pages ``n`` bytes at ``gpa`` touch (None for no bytes); InvalidArgument if they
        are not all RAM."""
        if not isinstance(gpa, int) or isinstance(gpa, bool) or gpa < 0:
            raise InvalidArgument("gpa", gpa, "must be a non-negative integer")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InvalidArgument("size", n, "must be a non-negative integer", hex_value=False)
        if not n:
            return None
        if not self.memory_map.contains(gpa, n):
            raise self.memory_map.outside(gpa, n)
        first = gpa & ~(PAGE_SIZE - 1)
        return GpaRange(first, ((gpa + n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) - first)

    def check_device_access(self, gpa: int, n: int) -> list[tuple[int, int]]:
        """The device-access rule both machines apply to ``n`` bytes at ``gpa``:
        InvalidArgument outside guest RAM (naming the hole), AccessDenied if a page they
        touch is private.  Returns the ``(backing offset, size)`` pieces of the bytes."""
        pages = self._device_pages(gpa, n)
        if pages is None:
            return []
        with self.tracker.lock:
            self._refuse_private(pages, gpa, n)
        return list(self.memory_map.pieces(gpa, n))

    @contextlib.contextmanager
    def device_access(self, gpa: int, n: int, owner: str = "device") -> Iterator[list[tuple[int, int]]]:
        """``check_device_access``, holding the pages (a tracker pin) while the body runs: a
        conversion of them meanwhile gets Busy, so the check and the access see the same
        state and a conversion cannot punch memory between them.  Yields the backing
        pieces; raises Busy (the device retries) if a conversion of the pages is in flight."""
        pages = self._device_pages(gpa, n)
        if pages is None:
            yield []
            return
        with self.tracker.lock:
            self._refuse_private(pages, gpa, n)
            pin = self.tracker.pin_locked(pages, owner)
        try:
            yield list(self.memory_map.pieces(gpa, n))
        finally:
            self.tracker.unpin(pin)


__all__ = ["DeviceAccessRules"]
