"""Seeded, deterministic workload generators modelled on real guests (docs/workloads-and-policies.md).

``generate(name, memory, vcpus, seed=0, scale=1.0, reserved=0, layout=None, memory_map=None)
-> Trace``.  The workloads are registered by name (``GENERATORS``, filled by ``@workload``;
``WORKLOADS`` maps each name to its description), so a new one is one function in any module:
``@workload(name, summary)`` over ``build(memory, vcpus, seed, scale, reserved) -> [Op]``.

Workloads are laid out in RAM *offsets* (0 .. memory), then placed in guest-physical space
through the guest memory map (``layout`` or ``memory_map``; default one region at 0): what
lies low (firmware bounce buffers, coherent DMA, the SWIOTLB pool) lands in low RAM, what
lies in the upper half of RAM (lazy acceptance) lands above 4 GiB on a q35 or Cloud
Hypervisor guest, as in real guests.  An op over offsets that cross into another region is
split at the boundary.

Conventions every generator follows (see :mod:`privmem.ops` for the data semantics):

* Guest memory starts PRIVATE: the runner pre-marks ``[reserved, memory)`` private before launch
  (``ConversionEngine.populate``), as QEMU sets the whole slot private and SNP firmware validates
  all RAM.  Every later change is an explicit ``convert`` op.
* No op touches the low ``reserved`` bytes of RAM (none by default: the machines keep their own
  code and pages outside RAM).  Work areas start at ``reserved`` rounded up to 2 MiB.
* Each vCPU works in its own disjoint windows, converts only its own pages and reads only data it
  wrote; so the result does not depend on how the vCPUs interleave (``random`` adds a window that
  all vCPUs convert, holding no data).  In the trace, vCPUs' steps are merged round-robin.
* Data checks are meaningful under every discard policy: a page is verified only with data written
  after its last conversion.  Pages written through the private view after a conversion back to
  private are verified at their next use or at the end, so a discard that hits a page after it
  was converted back and rewritten is caught.
* ``scale`` multiplies the amount of work (transactions, DMA mappings, allocations, ops, or the
  fraction of memory accepted); sizes follow ``memory``.  Too small a memory raises
  InvalidArgument naming ``memory`` and the minimum.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidArgument
from ..memmap import GuestMemoryMap
from ..registry import Registry
from ..units import GiB, MiB, PAGE_SIZE, format_size, format_size_exact, is_page_aligned
from .model import summary
from ..ops import Op, Trace, check_memory, check_vcpus, convert, dma_in, dma_out, touch, verify, write

__all__ = ["DEFAULT_WORKLOAD", "GENERATORS", "WORKLOADS", "Workload", "generate", "summary",
           "swiotlb_size", "workload"]

CHUNK = 2 * MiB                      # conversion granule for bulk conversions (PSC 2M entry, MapGPA chunk)
ACCEPT_CHUNK = 4 * MiB               # Linux accepts "typically ... in 4M chunks"
OVMF_TRANSACTIONS = 5000             # grub boot: ~5,100 DMA operations (edk2 c4e76d2fba)
OVMF_WINDOW = 2 * MiB                # bounce buffers come from a small pool of nearby pages
OVMF_LARGE_EVERY = 2500              # "2 over 1 MiB" per ~5,100
OVMF_LARGE_PAGES = 257               # 1 MiB + 4 KiB
SWIOTLB_MIN, SWIOTLB_MAX = 64 * MiB, 1 * GiB   # IO_TLB_DEFAULT_SIZE, SZ_1G (arch/x86/mm/mem_encrypt.c)
SWIOTLB_MAPPINGS = 4096              # streaming DMA mappings for scale 1
COHERENT_WINDOW = 4 * MiB
COHERENT_ALLOCATIONS = 512
RANDOM_OPS = 10000
SCATTER_PAGES = 512                  # pages per scale unit
RANDOM_OWN_WINDOW = 1 * MiB
RANDOM_SHARED_WINDOW = 8 * MiB
BOOT_ACCEPT_FRACTION = 0.25          # share of the unaccepted half a booted kernel accepts
BOOT_COHERENT_ALLOCATIONS = 128
BOOT_SWIOTLB_MAPPINGS = 2048

DEFAULT_WORKLOAD = "boot"
# Work grows linearly with scale (boot: about 37k ops per unit, ~280 B each in memory), so
# the bound keeps a generated trace near 1.2M ops, a few hundred MB, before any is built.
MAX_SCALE = 32.0

Step = list  # a list of Ops kept together when streams are merged


@dataclass(frozen=True)
class Workload:
    """A named generator: ``build(memory, vcpus, seed, scale, reserved) -> [Op]`` lays out its
    ops in RAM offsets, following the conventions above; ``generate`` checks the arguments
    first and places the ops in guest-physical space."""

    name: str
    summary: str
    build: Callable[[int, int, int, float, int], list[Op]]


GENERATORS: Registry[Workload] = Registry("workload", group="privmem.workloads")
WORKLOADS = GENERATORS.summaries     # name -> description, in registration order (the default first)


def workload(name: str, summary: str):
    """Register ``build(memory, vcpus, seed, scale, reserved) -> [Op]`` as the workload ``name``."""
    def register(build: Callable[[int, int, int, float, int], list[Op]]):
        GENERATORS.add(name, Workload(name, summary, build))
        return build
    return register


# ---------------------------------------------------------------------------------------------
# helpers

def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _align_down(value: int, align: int) -> int:
    return value // align * align


def _rng(name: str, seed: int, *parts: object) -> random.Random:
    """A generator per (workload, seed, part): string seeds hash the same in every process."""
    return random.Random(":".join(["privmem", name, str(seed), *map(str, parts)]))


def _pattern(rng: random.Random) -> int:
    """Nonzero, so a page zeroed by a wrong discard never passes a verify."""
    return rng.randrange(1, 256)


def _too_small(name: str, memory: int, vcpus: int, reserved: int, need: int) -> InvalidArgument:
    kept = f", {format_size(reserved)} of it kept by the caller" if reserved else ""
    return InvalidArgument("memory", memory, f"too small for workload {name!r} with {vcpus} vCPU(s){kept}: it "
                           f"needs at least {format_size(need)} (--memory {format_size_exact(need)})",
                           shown_as=format_size(memory))


def _merge(per_vcpu_steps: list[list[Step]]) -> list[Op]:
    """Round-robin over vCPUs, one step at a time, keeping each vCPU's order."""
    ops: list[Op] = []
    longest = max((len(steps) for steps in per_vcpu_steps), default=0)
    for i in range(longest):
        for steps in per_vcpu_steps:
            if i < len(steps):
                ops.extend(steps[i])
    return ops


def _interleave(rng: random.Random, streams: list[list[Step]]) -> list[Step]:
    """Shuffle several step streams of one vCPU together, keeping each stream's order; a stream
    is picked with probability proportional to the steps it has left."""
    streams = [list(reversed(s)) for s in streams if s]
    out: list[Step] = []
    while streams:
        weights = [len(s) for s in streams]
        pick = rng.choices(range(len(streams)), weights)[0]
        out.append(streams[pick].pop())
        if not streams[pick]:
            streams.pop(pick)
    return out


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal counts (the first ones get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class _Window:
    """First-fit page allocator over ``[base, base + size)``; also remembers which private pattern
    each page last got, so its next user can verify it first."""

    def __init__(self, base: int, size: int, top_down: bool):
        self.base = base
        self.pages = size // PAGE_SIZE
        self.free = [True] * self.pages
        self.top_down = top_down
        self.private_data: dict[int, int] = {}     # page index -> pattern written through private view

    def alloc(self, n: int) -> int | None:
        order = range(self.pages - n, -1, -1) if self.top_down else range(0, self.pages - n + 1)
        for first in order:
            if all(self.free[first:first + n]):
                for i in range(first, first + n):
                    self.free[i] = False
                return first
        return None

    def release(self, first: int, n: int) -> None:
        for i in range(first, first + n):
            self.free[i] = True

    def gpa(self, page: int) -> int:
        return self.base + page * PAGE_SIZE

    def verify_private(self, first: int, n: int, vcpu: int) -> list[Op]:
        """Verify ops for the pages of [first, first+n) that hold a known private pattern (runs of
        equal patterns become one op); forgets them, as the caller converts them next."""
        ops: list[Op] = []
        run_start, run_pattern = None, None
        for i in range(first, first + n + 1):
            pattern = self.private_data.pop(i, None) if i < first + n else None
            if run_pattern is not None and pattern != run_pattern:
                size = (i - run_start) * PAGE_SIZE
                ops.append(verify(self.gpa(run_start), size, "private", run_pattern, vcpu))
                run_start, run_pattern = None, None
            if pattern is not None and run_pattern is None:
                run_start, run_pattern = i, pattern
        return ops

    def write_private(self, first: int, n: int, pattern: int, vcpu: int) -> Op:
        for i in range(first, first + n):
            self.private_data[i] = pattern
        return write(self.gpa(first), n * PAGE_SIZE, "private", pattern, vcpu)

    def verify_all_private(self, vcpu: int) -> list[Op]:
        """Final check of every page still holding a private pattern."""
        return self.verify_private(0, self.pages, vcpu)


# ---------------------------------------------------------------------------------------------
# building blocks: each returns a list of steps for one vCPU

def _ovmf_dma_steps(rng: random.Random, base: int, vcpu: int, transactions: int) -> list[Step]:
    """OVMF IoMmuDxe (before Dec 2022): per bus-master DMA, Map allocates a bounce buffer and makes
    it shared; Unmap makes it private again and clears it.  A request maps 1-3 buffers at once
    (e.g. virtio header, data, status).  Buffers are 1-2 pages, rarely 8 (32 KiB) and, about
    every 2,500 transactions, 257 pages (> 1 MiB).  Top-down first fit in a 2 MiB window, so the
    same few pages flip back and forth.  OVMF zeroes on Unmap; we write a nonzero pattern so a
    wrongly discarded page is caught when the buffer is next mapped."""
    window = _Window(base, OVMF_WINDOW, top_down=True)
    large_at = set(rng.sample(range(transactions), transactions // OVMF_LARGE_EVERY))
    steps: list[Step] = []
    done = 0
    while done < transactions:
        batch = min(transactions - done, rng.choices((1, 2, 3), (50, 30, 20))[0])
        mapped = []
        for index in range(done, done + batch):
            if index in large_at:
                pages = OVMF_LARGE_PAGES
            else:
                pages = rng.choices((1, 2, 8), (65, 33, 2))[0]
            first = window.alloc(pages)
            if first is None:             # no room while others are in flight: map it after them
                if not mapped:
                    raise AssertionError("bounce buffer larger than the pool window")
                break
            mapped.append((first, pages))
        done += len(mapped)
        step: Step = []
        for first, pages in mapped:          # Map
            step += window.verify_private(first, pages, vcpu)
            step.append(convert(window.gpa(first), pages * PAGE_SIZE, "shared", vcpu))
        for first, pages in mapped:          # the device does its DMA, the guest copies
            gpa, size, pattern = window.gpa(first), pages * PAGE_SIZE, _pattern(rng)
            if rng.random() < 0.75:          # device -> memory (disk read): BusMasterWrite
                step += [dma_in(gpa, size, pattern, vcpu), verify(gpa, size, "shared", pattern, vcpu)]
            else:                            # memory -> device: BusMasterRead
                step += [write(gpa, size, "shared", pattern, vcpu), dma_out(gpa, size, pattern, vcpu)]
        for first, pages in reversed(mapped):   # Unmap
            step.append(convert(window.gpa(first), pages * PAGE_SIZE, "private", vcpu))
            step.append(window.write_private(first, pages, _pattern(rng), vcpu))
            window.release(first, pages)
        steps.append(step)
    steps.append(window.verify_all_private(vcpu))
    return steps


def swiotlb_size(memory: int) -> int:
    """Linux's default pool for an encrypted guest: 6% of memory clamped to [64 MiB, 1 GiB]
    (arch/x86/mm/mem_encrypt.c), rounded down to 2 MiB (our bulk conversion chunk)."""
    size = min(max(memory * 6 // 100, SWIOTLB_MIN), SWIOTLB_MAX)
    return _align_down(size, CHUNK)


def _bulk_convert_steps(base: int, size: int, to: str, vcpu: int) -> list[Step]:
    """Convert ``[base, base+size)`` in 2 MiB-aligned chunks (one step per chunk)."""
    steps: list[Step] = []
    gpa = base
    while gpa < base + size:
        end = min(_align_down(gpa + CHUNK, CHUNK), base + size)
        steps.append([convert(gpa, end - gpa, to, vcpu)])
        gpa = end
    return steps


def _swiotlb_stream_steps(rng: random.Random, base: int, size: int, vcpu: int, mappings: int) -> list[Step]:
    """Streaming DMA through one vCPU's area of the (already shared) pool: slots taken at a rolling
    index, as swiotlb does; 70% device -> memory (dma_in + the guest's bounce copy out = verify),
    30% memory -> device (bounce copy in = write, then dma_out).  No conversion."""
    pages = size // PAGE_SIZE
    index = 0
    steps: list[Step] = []
    for _ in range(mappings):
        n = min(pages, rng.choices((1, 2, 4, 8, 16, 32), (35, 15, 15, 15, 12, 8))[0])
        if index + n > pages:
            index = 0
        gpa, length, pattern = base + index * PAGE_SIZE, n * PAGE_SIZE, _pattern(rng)
        index += n
        if rng.random() < 0.7:
            steps.append([dma_in(gpa, length, pattern, vcpu), verify(gpa, length, "shared", pattern, vcpu)])
        else:
            steps.append([write(gpa, length, "shared", pattern, vcpu), dma_out(gpa, length, pattern, vcpu)])
    return steps


def _accept_steps(rng: random.Random, base: int, size: int, vcpu: int, fraction: float) -> list[Step]:
    """Lazy acceptance of one vCPU's part of the unaccepted region.  The region is modelled as
    SHARED (no private page behind it): the first step converts it to shared.  Then, in a seeded
    random order, ``fraction`` of its 4 MiB chunks (at least one; the last may be 2 MiB) are
    accepted on first use: convert to private, touch every page (allocation), write a 64 KiB
    sample, which is verified one chunk later (and all at the end)."""
    steps: list[Step] = [[convert(base, size, "shared", vcpu)]]
    chunks = [(gpa, min(ACCEPT_CHUNK, base + size - gpa)) for gpa in range(base, base + size, ACCEPT_CHUNK)]
    rng.shuffle(chunks)
    count = max(1, min(len(chunks), round(len(chunks) * fraction)))
    pending: list[tuple[int, int, int]] = []
    for gpa, length in chunks[:count]:
        sample = min(length, 64 * 1024)
        pattern = _pattern(rng)
        step = [convert(gpa, length, "private", vcpu), touch(gpa, length, "private", vcpu),
                write(gpa, sample, "private", pattern, vcpu)]
        step += [verify(g, s, "private", p, vcpu) for g, s, p in pending]
        pending = [(gpa, sample, pattern)]
        steps.append(step)
    steps.append([verify(g, s, "private", p, vcpu) for g, s, p in pending])
    return steps


def _coherent_steps(rng: random.Random, base: int, vcpu: int, allocations: int) -> list[Step]:
    """dma_alloc_coherent / dma_free_coherent in one vCPU's 4 MiB window: each allocation is 1-4
    pages made shared (set_memory_decrypted), initialised by the driver (write shared) and read by
    the device (dma_out); live buffers are used now and then (dma_in + verify, or write + dma_out);
    70% are freed later (set_memory_encrypted: convert to private, the page is reused = write
    private, verified at its next allocation or at the end), 30% are never freed (virtqueues)."""
    window = _Window(base, COHERENT_WINDOW, top_down=False)
    live: list[tuple[int, int, bool]] = []      # (first page, pages, will be freed)
    steps: list[Step] = []

    def use(first: int, pages: int) -> Step:
        gpa, size, pattern = window.gpa(first), pages * PAGE_SIZE, _pattern(rng)
        if rng.random() < 0.5:
            return [dma_in(gpa, size, pattern, vcpu), verify(gpa, size, "shared", pattern, vcpu)]
        return [write(gpa, size, "shared", pattern, vcpu), dma_out(gpa, size, pattern, vcpu)]

    def free(entry) -> Step:
        live.remove(entry)
        first, pages, _ = entry
        step = [convert(window.gpa(first), pages * PAGE_SIZE, "private", vcpu),
                window.write_private(first, pages, _pattern(rng), vcpu)]
        window.release(first, pages)
        return step

    for _ in range(allocations):
        pages = rng.randint(1, 4)
        first = window.alloc(pages)
        while first is None:
            freeable = [entry for entry in live if entry[2]] or live
            steps.append(free(freeable[0]))
            first = window.alloc(pages)
        gpa, size, pattern = window.gpa(first), pages * PAGE_SIZE, _pattern(rng)
        step = window.verify_private(first, pages, vcpu)
        step += [convert(gpa, size, "shared", vcpu), write(gpa, size, "shared", pattern, vcpu),
                 dma_out(gpa, size, pattern, vcpu)]
        steps.append(step)
        live.append((first, pages, rng.random() < 0.7))
        for _ in range(rng.randint(0, 3)):
            entry = rng.choice(live)
            steps.append(use(entry[0], entry[1]))
        freeable = [entry for entry in live if entry[2]]
        if freeable and rng.random() < 0.6:
            steps.append(free(rng.choice(freeable)))
    steps += [use(first, pages) for first, pages, _ in live]
    steps.append(window.verify_all_private(vcpu))
    return steps


def _random_steps(rng: random.Random, own_base: int, own_size: int, shared_base: int, shared_size: int,
                  vcpu: int, count: int) -> list[Step]:
    """Seeded stress for one vCPU: 25% conversions anywhere in the common window (overlapping other
    vCPUs', no data there), 20% conversions in its own window, 55% data ops in its own window chosen
    to be valid for the page states the vCPU itself produced (its own model)."""
    pages = own_size // PAGE_SIZE
    shared_pages = shared_size // PAGE_SIZE
    private = [True] * pages
    data: list[int | None] = [None] * pages
    steps: list[Step] = []

    def run(first: int, limit: int, key) -> int:
        """Length of the run from ``first`` (at most ``limit``) where ``key`` stays the same."""
        want, n = key(first), 1
        while n < limit and first + n < pages and key(first + n) == want:
            n += 1
        return n

    for _ in range(count):
        roll = rng.random()
        if roll < 0.25:
            n = rng.randint(1, min(64, shared_pages))
            first = rng.randrange(shared_pages - n + 1)
            steps.append([convert(shared_base + first * PAGE_SIZE, n * PAGE_SIZE,
                                  rng.choice(("private", "shared")), vcpu)])
            continue
        first = rng.randrange(pages)
        gpa = own_base + first * PAGE_SIZE
        if roll < 0.45:
            n = rng.randint(1, min(32, pages - first))
            to_private = rng.random() < 0.5
            for i in range(first, first + n):
                private[i], data[i] = to_private, None
            steps.append([convert(gpa, n * PAGE_SIZE, "private" if to_private else "shared", vcpu)])
            continue
        view = "private" if private[first] else "shared"
        pattern = data[first]
        if pattern is not None and rng.random() < 0.5:      # check what is there
            n = run(first, 16, lambda i: (private[i], data[i]))
            size = n * PAGE_SIZE
            if view == "shared" and rng.random() < 0.5:
                steps.append([dma_out(gpa, size, pattern, vcpu)])
            else:
                steps.append([verify(gpa, size, view, pattern, vcpu)])
            continue
        n = run(first, 16, lambda i: private[i])
        size = n * PAGE_SIZE
        choice = rng.random()
        if choice < 0.15:
            steps.append([touch(gpa, size, view, vcpu)])
            continue
        new = _pattern(rng)
        for i in range(first, first + n):
            data[i] = new
        if view == "shared" and choice < 0.5:
            steps.append([dma_in(gpa, size, new, vcpu)])
        else:
            steps.append([write(gpa, size, view, new, vcpu)])
    return steps


# ---------------------------------------------------------------------------------------------
# workloads: each registers its builder with @workload, in the order `list` shows them

def boot_layout(memory: int, vcpus: int, reserved: int = 0) -> dict:
    """Where the ``boot`` phases live: {"firmware", "coherent", "swiotlb", "accept"} ->
    (gpa, size) (coherent/swiotlb/accept as a list of per-vCPU parts)."""
    start = _align_up(reserved, CHUNK)
    coherent_base = start + OVMF_WINDOW
    pool_base = coherent_base + vcpus * COHERENT_WINDOW
    accept_base = _align_up(max(memory // 2, pool_base + vcpus * CHUNK), CHUNK)
    need = accept_base + vcpus * CHUNK
    if need > _align_down(memory, CHUNK):
        raise _too_small("boot", memory, vcpus, reserved, need)
    area = _swiotlb_area(memory, vcpus, pool_base, accept_base)
    return {
        "firmware": (start, OVMF_WINDOW),
        "coherent": [(coherent_base + v * COHERENT_WINDOW, COHERENT_WINDOW) for v in range(vcpus)],
        "swiotlb": [(pool_base + v * area, area) for v in range(vcpus)],
        "accept": _accept_split(vcpus, accept_base, _align_down(memory, CHUNK)),
    }


@workload("boot", "composite boot (the default): firmware phase = ovmf-dma on vCPU 0, then kernel phase = "
                  "swiotlb pool setup + lazy acceptance of the upper half + dma_alloc_coherent + streaming DMA")
def _boot(memory, vcpus, seed, scale, reserved):
    """Firmware phase on vCPU 0 (the BSP) = ovmf-dma; then each vCPU's kernel phase: make its
    swiotlb area shared (2 MiB chunks; Linux does the whole pool on the BSP, we give each vCPU its
    own area so no vCPU depends on another's progress), then lazy acceptance of its part of the
    upper half of memory, coherent allocations and streaming DMA, interleaved (seeded)."""
    layout = boot_layout(memory, vcpus, reserved)
    firmware = _ovmf_dma_steps(_rng("boot", seed, "firmware"), layout["firmware"][0], 0,
                               max(1, round(OVMF_TRANSACTIONS * scale)))
    accept_fraction = min(1.0, BOOT_ACCEPT_FRACTION * scale)
    coherent = _split(max(vcpus, round(BOOT_COHERENT_ALLOCATIONS * scale)), vcpus)
    mappings = _split(max(vcpus, round(BOOT_SWIOTLB_MAPPINGS * scale)), vcpus)
    kernel = []
    for v in range(vcpus):
        pool_base, pool_size = layout["swiotlb"][v]
        accept_base, accept_size = layout["accept"][v]
        rng = _rng("boot", seed, "kernel", v)
        setup = _bulk_convert_steps(pool_base, pool_size, "shared", v)
        kernel.append(setup + _interleave(rng, [
            _accept_steps(rng, accept_base, accept_size, v, accept_fraction),
            _coherent_steps(rng, layout["coherent"][v][0], v, coherent[v]),
            _swiotlb_stream_steps(rng, pool_base, pool_size, v, mappings[v]),
        ]))
    return _merge([firmware]) + _merge(kernel)


@workload("ovmf-dma", "OVMF IoMmuDxe before Dec 2022: ~5,000 DMA transactions, each converting 1-2 "
                      "bounce-buffer pages to shared and back, reusing the same few pages (the flip-flop that "
                      "hurts eager discard)")
def _ovmf_dma(memory, vcpus, seed, scale, reserved):
    start = _align_up(reserved, CHUNK)
    need = start + vcpus * OVMF_WINDOW
    if need > memory:
        raise _too_small("ovmf-dma", memory, vcpus, reserved, need)
    total = max(1, round(OVMF_TRANSACTIONS * scale))
    return _merge([_ovmf_dma_steps(_rng("ovmf-dma", seed, v), start + v * OVMF_WINDOW, v, n)
                   for v, n in enumerate(_split(total, vcpus))])


def _swiotlb_area(memory: int, vcpus: int, start: int, limit: int) -> int:
    """Size of each vCPU's area: the Linux pool size clamped to what fits in [start, limit),
    split into ``vcpus`` areas of whole 2 MiB chunks (callers make sure one chunk each fits)."""
    pool = min(max(swiotlb_size(memory), vcpus * CHUNK), _align_down(limit - start, CHUNK))
    return _align_down(pool // vcpus, CHUNK)


@workload("swiotlb", "Linux SWIOTLB: 6% of memory clamped to [64 MiB, 1 GiB] converted to shared once in 2 MiB "
                     "chunks, then streaming DMA through it with no further conversion")
def _swiotlb(memory, vcpus, seed, scale, reserved):
    start = _align_up(reserved, CHUNK)
    need = start + vcpus * CHUNK
    if need > memory:
        raise _too_small("swiotlb", memory, vcpus, reserved, need)
    area = _swiotlb_area(memory, vcpus, start, memory)
    mappings = _split(max(vcpus, round(SWIOTLB_MAPPINGS * scale)), vcpus)
    out = []
    for v in range(vcpus):
        base = start + v * area
        out.append(_bulk_convert_steps(base, area, "shared", v)
                   + _swiotlb_stream_steps(_rng("swiotlb", seed, v), base, area, v, mappings[v]))
    return _merge(out)


def _accept_split(vcpus: int, base: int, limit: int) -> list[tuple[int, int]]:
    """Per-vCPU (base, size) parts of the unaccepted region [base, limit), in whole 2 MiB units
    (callers make sure there is at least one unit per vCPU)."""
    units = (limit - base) // CHUNK
    parts, gpa = [], base
    for count in _split(units, vcpus):
        parts.append((gpa, count * CHUNK))
        gpa += count * CHUNK
    return parts


@workload("accept", "Linux lazy acceptance: an unaccepted (shared) region converted to private in 4 MiB chunks "
                    "on first use (convert + touch + write, verified later)")
def _accept(memory, vcpus, seed, scale, reserved):
    start = _align_up(reserved, CHUNK)
    need = start + vcpus * CHUNK
    if need > _align_down(memory, CHUNK):
        raise _too_small("accept", memory, vcpus, reserved, need)
    parts = _accept_split(vcpus, start, _align_down(memory, CHUNK))
    fraction = min(1.0, scale)
    return _merge([_accept_steps(_rng("accept", seed, v), base, size, v, fraction)
                   for v, (base, size) in enumerate(parts)])


@workload("coherent", "dma_alloc_coherent: many 1-4 page shared allocations, used a while; most freed back to "
                      "private later, some (virtqueues) never")
def _coherent(memory, vcpus, seed, scale, reserved):
    start = _align_up(reserved, CHUNK)
    need = start + vcpus * COHERENT_WINDOW
    if need > memory:
        raise _too_small("coherent", memory, vcpus, reserved, need)
    total = max(vcpus, round(COHERENT_ALLOCATIONS * scale))
    return _merge([_coherent_steps(_rng("coherent", seed, v), start + v * COHERENT_WINDOW, v, n)
                   for v, n in enumerate(_split(total, vcpus))])


@workload("random", "seeded stress: overlapping conversions from all vCPUs in one shared window, plus random "
                    "conversions and data ops in per-vCPU windows")
def _random(memory, vcpus, seed, scale, reserved):
    start = _align_up(reserved, CHUNK)
    shared_base = _align_up(start + vcpus * RANDOM_OWN_WINDOW, CHUNK)
    shared_size = min(RANDOM_SHARED_WINDOW, memory - shared_base)
    if shared_size < CHUNK:
        raise _too_small("random", memory, vcpus, reserved, shared_base + CHUNK)
    total = max(vcpus, round(RANDOM_OPS * scale))
    return _merge([_random_steps(_rng("random", seed, v), start + v * RANDOM_OWN_WINDOW, RANDOM_OWN_WINDOW,
                                 shared_base, shared_size, v, n)
                   for v, n in enumerate(_split(total, vcpus))])


def _scatter_steps(rng: random.Random, pages: list[int], vcpu: int) -> list[Step]:
    """One vCPU's pages: to shared, the device writes, the guest checks; back to private, the
    guest writes; every private page checked at the end."""
    steps: list[Step] = []
    written = []
    for page in pages:
        gpa, shared, private = page * PAGE_SIZE, _pattern(rng), _pattern(rng)
        steps.append([convert(gpa, PAGE_SIZE, "shared", vcpu), dma_in(gpa, PAGE_SIZE, shared, vcpu),
                      verify(gpa, PAGE_SIZE, "shared", shared, vcpu), dma_out(gpa, PAGE_SIZE, shared, vcpu),
                      convert(gpa, PAGE_SIZE, "private", vcpu), write(gpa, PAGE_SIZE, "private", private, vcpu)])
        written.append((gpa, private))
    steps.append([verify(gpa, PAGE_SIZE, "private", pattern, vcpu) for gpa, pattern in written])
    return steps


@workload("scatter", "big-guest check: pages scattered over all of RAM (the first and the last page included) "
                     "converted to shared, DMA'd and verified, then back to private, written and verified")
def _scatter(memory, vcpus, seed, scale, reserved):
    first, last = -(-reserved // PAGE_SIZE), memory // PAGE_SIZE - 1
    count = min(last - first + 1, max(2 * vcpus, round(SCATTER_PAGES * scale)))
    if last - first + 1 < 2 * vcpus:
        raise _too_small("scatter", memory, vcpus, reserved, reserved + 2 * vcpus * PAGE_SIZE)
    rng = _rng("scatter", seed)
    chosen = {first, last}
    while len(chosen) < count:
        chosen.add(rng.randint(first, last))
    pages = sorted(chosen)
    return _merge([_scatter_steps(_rng("scatter", seed, v), pages[v::vcpus], v) for v in range(vcpus)])


def generate(name: str = DEFAULT_WORKLOAD, memory: int = 1 * GiB, vcpus: int = 1, seed: int = 0,
             scale: float = 1.0, reserved: int = 0, layout: str | None = None,
             memory_map: GuestMemoryMap | None = None) -> Trace:
    """Build workload ``name`` (see WORKLOADS) for a guest of ``memory`` bytes of RAM and
    ``vcpus`` vCPUs, laid out by ``layout`` (or ``memory_map``, whose RAM then sets
    ``memory``).  Same arguments, same trace.  Raises InvalidArgument naming the bad
    argument."""
    if name not in WORKLOADS:
        raise InvalidArgument("workload", name, f"unknown (one of {', '.join(WORKLOADS)})", hex_value=False)
    if memory_map is not None:
        memory = memory_map.ram_bytes
    check_memory(memory)
    if memory_map is None:
        memory_map = GuestMemoryMap.from_layout(layout or "flat", memory)
    check_vcpus(vcpus)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument("seed", seed, "must be an integer", hex_value=False)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= MAX_SCALE:
        raise InvalidArgument("scale", scale, f"must be a number > 0 and at most {MAX_SCALE:g}", hex_value=False)
    if isinstance(reserved, bool) or not isinstance(reserved, int) or reserved < 0 \
            or not is_page_aligned(reserved):
        raise InvalidArgument("reserved", reserved, "must be a page-aligned integer >= 0")
    if reserved >= memory:
        raise InvalidArgument("reserved", reserved, f"must be below memory ({memory:#x})")
    ops = GENERATORS[name].build(memory, vcpus, seed, scale, reserved)
    return Trace.on_map(name, memory_map, vcpus, _place(ops, memory_map)).validate()


def _place(ops: list[Op], memory_map: GuestMemoryMap) -> list[Op]:
    """Ops laid out in RAM offsets, moved to their guest-physical addresses (split where the
    offsets cross into another region)."""
    if memory_map == GuestMemoryMap.flat(memory_map.ram_bytes):
        return ops
    placed = []
    for op in ops:
        for gpa, size in memory_map.spans_of(op.gpa, op.size):
            placed.append(dataclasses.replace(op, gpa=gpa, size=size))
    return placed
