"""Bit planes: one bit per page in a ``bytearray``, page ``i`` at bit ``i & 7`` of byte ``i >> 3``.

The little-endian bit order of the bitmap twin and of QEMU's bitmaps, so a plane's bytes read
as one little-endian integer whose bit ``i`` is page ``i``.  A plane may stop short of the
pages it stands for: the bits past its end are 0, and ``fill`` extends it when it sets one
there.  Every range is half-open, ``0 <= lo < hi``, and trusted: the callers validated it.  The work is done
by C-level byte slices, ``int.from_bytes`` and ``str.find``, so a range costs O(pages / 8)
machine work and O(1) Python steps, and a decode costs one Python step per run found.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

_ALL_ONES = b"\xff"
_ALL_ZEROS = b"\x00"


def bit(plane: bytearray, page: int) -> int:
    """The bit of one page: 0 or 1."""
    return plane[page >> 3] >> (page & 7) & 1 if page >> 3 < len(plane) else 0


def window(plane: bytearray, lo: int, hi: int) -> int:
    """The bits of pages ``[lo, hi)`` as an integer whose bit ``k`` is page ``lo + k``."""
    return int.from_bytes(plane[lo >> 3:(hi + 7) >> 3], "little") >> (lo & 7) & ((1 << (hi - lo)) - 1)


def count(plane: bytearray, lo: int, hi: int) -> int:
    """Set bits among pages ``[lo, hi)``."""
    return window(plane, lo, hi).bit_count()


def fill(plane: bytearray, lo: int, hi: int, on: bool) -> None:
    """Set (``on``) or clear every bit of pages ``[lo, hi)``, extending the plane to set bits
    past its end (clearing them there is nothing to do)."""
    head, last = lo >> 3, (hi - 1) >> 3
    if last >= len(plane):
        if on:
            plane.extend(bytes(last + 1 - len(plane)))
        elif head >= len(plane):
            return
        else:
            hi, last = len(plane) << 3, len(plane) - 1
    if head == last:
        mask = ((1 << (hi - lo)) - 1) << (lo & 7)
        plane[head] = plane[head] | mask if on else plane[head] & ~mask
        return
    head_mask, tail_mask = (0xFF << (lo & 7)) & 0xFF, 0xFF >> (7 - ((hi - 1) & 7))
    if on:
        plane[head] |= head_mask
        plane[last] |= tail_mask
    else:
        plane[head] &= ~head_mask & 0xFF
        plane[last] &= ~tail_mask & 0xFF
    if last - head > 1:
        plane[head + 1:last] = (_ALL_ONES if on else _ALL_ZEROS) * (last - head - 1)


def changes(windows: Sequence[int], pages: int) -> int:
    """Positions ``k`` in ``[0, pages - 1)`` where the value of page ``k + 1`` differs from page
    ``k``'s, as a bit mask; ``windows`` are the planes' bits over the same ``pages`` pages."""
    mask = 0
    for bits in windows:
        mask |= bits ^ (bits >> 1)
    return mask & ((1 << (pages - 1)) - 1)


def _string(bits: int, pages: int) -> str:
    """``bits`` as a string of '0'/'1' whose character ``k`` is bit ``k``."""
    return format(bits, "b").zfill(pages)[::-1]


def ones_runs(bits: int, pages: int) -> Iterator[tuple[int, int]]:
    """Maximal runs ``(lo, hi)`` of set bits in a window of ``pages`` bits (one plane)."""
    if not bits:
        return
    text = _string(bits, pages)
    find = text.find
    start = find("1")
    while start >= 0:
        stop = find("0", start)
        if stop < 0:
            yield start, pages
            return
        yield start, stop
        start = find("1", stop)


def value_runs(windows: Sequence[int], values: Sequence[int], pages: int) -> Iterator[tuple[int, int, int]]:
    """Maximal runs ``(lo, hi, value)`` of equal value in a window of ``pages`` pages, where a
    page's value is the sum of ``values[i]`` over the planes whose bit is set (``windows[i]``)."""
    texts = [_string(bits, pages) for bits in windows]
    boundaries = _string(changes(windows, pages), pages)
    find = boundaries.find
    start = 0
    while start < pages:
        last = find("1", start)
        stop = pages if last < 0 else last + 1
        value = 0
        for text, plane_value in zip(texts, values):
            if text[start] == "1":
                value |= plane_value
        yield start, stop, value
        start = stop
