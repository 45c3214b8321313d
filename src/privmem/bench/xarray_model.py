"""A model of the kernel's attribute XArray: its footprint computed from a guest's bitmap.

KVM keeps memory attributes in ``kvm->mem_attr_array``, an XArray with one entry per private
page (a value entry at index gfn; shared pages have none).  An XArray is a radix tree of
``struct xa_node``: 64 slots each (XA_CHUNK_SHIFT = 6), 576 bytes on 64-bit kernels.  A leaf
node exists for every group of 64 pages holding a private page; a node at level L for every
group of 64**L pages holding one; the tree is as tall as the highest index needs.  So the
footprint is counted, not run: for every level, the groups of the bitmap that are not all
zero, times 576 bytes.  Slab overhead is left out, so the model is a lower bound.
"""

from __future__ import annotations

from array import array

XA_NODE_BYTES = 576
XA_CHUNK_SHIFT = 6


def xarray_nodes(bits: bytes) -> int:
    """Nodes an XArray needs for the private pages of ``bits`` (page k = bit k & 7 of byte
    k >> 3; ``len(bits)`` a multiple of 8)."""
    words = array("Q")
    words.frombytes(bits)
    leaves = len(words) - words.count(0)   # level 1: one node per 64 pages (one u64 of bits)
    if not leaves:
        return 0
    highest_group = (len(bits.rstrip(b"\0")) - 1) >> 3   # the highest leaf's index (64 pages a leaf)
    nodes, group_bytes = leaves, 8
    while highest_group:          # a level above as long as leaves do not fit one node
        group_bytes <<= XA_CHUNK_SHIFT
        zero = bytes(group_bytes)
        nodes += sum(1 for offset in range(0, len(bits), group_bytes) if bits[offset:offset + group_bytes] != zero)
        highest_group >>= XA_CHUNK_SHIFT
    return nodes


def xarray_bytes(bits: bytes) -> int:
    """The modelled footprint: nodes times 576 bytes."""
    return xarray_nodes(bits) * XA_NODE_BYTES
