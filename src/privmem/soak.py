"""`privmem soak`: random conversions and DMA on every vCPU for a while, every byte checked.

``run_soak(seconds, vcpus=2, memory="64M", policy="lazy", backend=None, seed=0) -> dict``
runs chunks of seeded random ops until ``seconds`` have passed, on one machine (the real KVM
machine where /dev/kvm works, else the host backend):

* each vCPU owns a window of ``OWN_PAGES`` pages where it converts runs either way, writes
  patterns through the view matching each page's state (guest ``write``, device ``dma_in``)
  and checks them (guest ``verify``, device ``dma_out``), keeping a page model of what every
  page must hold;
* all vCPUs also convert random ranges of one common window (``COMMON_BYTES``, no data), so
  their requests overlap and meet in the tracker (Busy -> retry);
* at the end every page with defined data is checked: private pages by a final guest
  ``verify``, shared pages by the host through ``shared_read``; and each page's attribute is
  compared with the model.

The result counts conversions, conversions per second, retries and data errors (which must
be 0).  ``format_soak(result)`` renders it for the command line.
"""

from __future__ import annotations

import random
import time

from .attrs import ATTR_PRIVATE
from .errors import InvalidArgument
from .memmap import GuestMemoryMap
from .vmm.machine import MAX_VCPUS
from .units import MiB, PAGE_SIZE, format_size, parse_size
from .ops import Op

OWN_PAGES = 256                 # 1 MiB per vCPU
COMMON_BYTES = 2 * MiB
CHUNK_OPS = 150                 # ops per vCPU per run_ops call
MAX_SECONDS = 24 * 3600.0      # a day: past it, a soak is a service, not a test
MAX_RUN = 8                     # pages per data op (guest data ops are emulated: keep them short)
TIMEOUT = 120.0

KEYS = ("backend", "backing", "policy", "memory", "vcpus", "seed", "data_check", "seconds", "chunks", "ops", "conversions",
        "conversions_per_s", "pages_converted", "psc_retries", "psc_errors", "data_errors", "dma_errors",
        "state_errors", "verified_pages", "discards", "peak_double_allocated_bytes")


class _Window:
    """One vCPU's own pages and the page model: state (private?) and the pattern (None: undefined)."""

    def __init__(self, vcpu: int, base: int, rng: random.Random):
        self.vcpu, self.base, self.rng = vcpu, base, rng
        self.private = [True] * OWN_PAGES        # machines start with workload memory private
        self.data: list[int | None] = [None] * OWN_PAGES
        self.by_guest = [False] * OWN_PAGES      # last written by a guest WRITE (else DMA_IN)

    def _run(self, first: int, key) -> int:
        want, n = key(first), 1
        while n < MAX_RUN and first + n < OWN_PAGES and key(first + n) == want:
            n += 1
        return n

    def _op(self, kind: str, first: int, n: int, **fields) -> Op:
        return Op(kind, self.base + first * PAGE_SIZE, n * PAGE_SIZE, self.vcpu, **fields)

    def step(self, common_base: int) -> Op:
        rng = self.rng
        roll = rng.random()
        if roll < 0.2:                                   # the common window: overlaps other vCPUs
            pages = COMMON_BYTES // PAGE_SIZE
            n = rng.randint(1, 32)
            first = rng.randrange(pages - n + 1)
            return Op("convert", common_base + first * PAGE_SIZE, n * PAGE_SIZE, self.vcpu,
                      to=rng.choice(("private", "shared")))
        first = rng.randrange(OWN_PAGES)
        if roll < 0.4:                                   # own window conversion
            n = rng.randint(1, min(16, OWN_PAGES - first))
            private = rng.random() < 0.5
            self.private[first:first + n] = [private] * n
            self.data[first:first + n] = [None] * n      # contents undefined after a conversion
            return self._op("convert", first, n, to="private" if private else "shared")
        view = "private" if self.private[first] else "shared"
        if self.data[first] is not None and rng.random() < 0.5:     # check what is there
            n = self._run(first, lambda i: (self.private[i], self.data[i]))
            pattern = self.data[first]
            if view == "shared" and rng.random() < 0.5:
                return self._op("dma_out", first, n, pattern=pattern)
            return self._op("verify", first, n, view=view, pattern=pattern)
        n = self._run(first, lambda i: self.private[i])
        pattern = rng.randrange(256)
        self.data[first:first + n] = [pattern] * n
        device = view == "shared" and rng.random() < 0.5
        self.by_guest[first:first + n] = [not device] * n
        if device:
            return self._op("dma_in", first, n, pattern=pattern)
        return self._op("write", first, n, view=view, pattern=pattern)

    def final_private_checks(self) -> list[Op]:
        """Guest verifies of every private page with defined data, in uniform runs."""
        ops, page = [], 0
        while page < OWN_PAGES:
            if self.private[page] and self.data[page] is not None:
                n = self._run(page, lambda i: (self.private[i], self.data[i]))
                ops.append(self._op("verify", page, n, view="private", pattern=self.data[page]))
                page += n
            else:
                page += 1
        return ops


def _check_args(seconds, vcpus, memory, seed) -> tuple[float, int, int]:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_SECONDS:
        raise InvalidArgument("seconds", seconds, f"must be a number > 0 and at most {MAX_SECONDS:g}",
                              hex_value=False)
    if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= MAX_VCPUS:
        raise InvalidArgument("vcpus", vcpus, f"must be in 1..{MAX_VCPUS}", hex_value=False)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgument("seed", seed, "must be an integer", hex_value=False)
    return float(seconds), vcpus, parse_size(memory, "memory")


def _layout(machine, memory: int, vcpus: int) -> tuple[list[int], int]:
    """Own window bases per vCPU and the common window base (2 MiB aligned)."""
    start = machine.memory_map.regions[0].gpa
    own = [start + v * OWN_PAGES * PAGE_SIZE for v in range(vcpus)]
    common = -(-(own[-1] + OWN_PAGES * PAGE_SIZE) // (2 * MiB)) * 2 * MiB
    return own, common


def run_soak(seconds: float, vcpus: int = 2, memory: int | str = "64M", policy: str | None = None,
             backend: str | None = None, seed: int = 0, data_check: str = "full", backing: str = "two-file",
             progress=None) -> dict:
    """Soak one machine for ``seconds``; see the module docstring.  Raises InvalidArgument
    naming the bad argument (seconds, vcpus, memory, policy, backend, seed, data_check).
    ``progress(elapsed_s, totals)`` after each chunk (``totals``: the counts so far).

    ``data_check``: on a machine that samples the guest's WRITE/VERIFY (the KVM machine, see
    vmm/machine.py) "full" makes them byte-exact (slower: emulated) and "sampled" keeps the
    machine's sampling; the host's own checks follow the choice."""
    from .runner import default_backend, make_machine

    seconds, vcpus, memory = _check_args(seconds, vcpus, memory, seed)
    if data_check not in ("full", "sampled"):
        raise InvalidArgument("data_check", data_check, "must be 'full' or 'sampled'", hex_value=False)
    backend = backend or default_backend()
    need = -(-(vcpus * OWN_PAGES * PAGE_SIZE) // (2 * MiB)) * 2 * MiB + COMMON_BYTES
    if memory < need:
        raise InvalidArgument("memory", memory, f"{format_size(memory)} is too small for a soak with {vcpus} "
                              f"vCPU(s): it needs at least {format_size(need)}")
    totals = dict.fromkeys(("ops", "conversions", "pages_converted", "psc_retries", "psc_errors", "data_errors",
                            "dma_errors", "exits"), 0)

    def add(result) -> None:
        totals["ops"] += result.ops
        for key in ("conversions", "pages_converted", "psc_retries", "psc_errors", "data_errors", "dma_errors",
                    "exits"):
            totals[key] += getattr(result, key)

    rng = random.Random(seed)
    if policy is None:
        policy = "never" if backing == "in-place" else "lazy"
    with make_machine(backend, GuestMemoryMap.flat(memory), vcpus, policy, backing=backing) as machine:
        if hasattr(machine, "data_check"):
            machine.data_check = data_check
        own, common = _layout(machine, memory, vcpus)
        windows = [_Window(v, own[v], random.Random(rng.getrandbits(64))) for v in range(vcpus)]
        chunks = 0
        start = time.perf_counter()
        run_time = 0.0
        while chunks == 0 or time.perf_counter() - start < seconds:
            per_vcpu = [[w.step(common) for _ in range(CHUNK_OPS)] for w in windows]
            ops = [op for step in zip(*per_vcpu) for op in step]
            result = machine.run_ops(ops, timeout=TIMEOUT)
            run_time += result.wall_time
            add(result)
            chunks += 1
            if progress is not None:
                progress(time.perf_counter() - start, dict(totals))
        finals = [op for w in windows for op in w.final_private_checks()]
        if finals:
            add(machine.run_ops(finals, timeout=TIMEOUT))
        elapsed = time.perf_counter() - start
        host_errors = state_errors = verified = 0
        store = machine.engine.store
        for w in windows:
            for page in range(OWN_PAGES):
                gpa = w.base + page * PAGE_SIZE
                if not store.has(gpa, PAGE_SIZE, ATTR_PRIVATE if w.private[page] else 0):
                    state_errors += 1
                if w.data[page] is None:
                    continue
                verified += 1
                if not w.private[page]:
                    pattern = w.data[page]
                    # A guest WRITE defines what the machine's data check defines (a sample per
                    # page when sampling); a DMA_IN wrote every byte.
                    ok = (machine.shared_matches(gpa, PAGE_SIZE, pattern) if w.by_guest[page]
                          else machine.shared_read(gpa, PAGE_SIZE) == bytes([pattern]) * PAGE_SIZE)
                    host_errors += not ok
        stats = machine.engine.stats
        conversions = totals["conversions"]
        return {
            "backend": backend, "backing": backing, "policy": policy, "memory": memory, "vcpus": vcpus, "seed": seed,
            "data_check": data_check,
            "seconds": round(elapsed, 3), "chunks": chunks, "ops": totals["ops"], "conversions": conversions,
            "conversions_per_s": round(conversions / run_time, 1) if run_time > 0 else 0.0,
            "pages_converted": totals["pages_converted"], "psc_retries": totals["psc_retries"],
            "psc_errors": totals["psc_errors"], "data_errors": totals["data_errors"] + host_errors,
            "dma_errors": totals["dma_errors"], "state_errors": state_errors, "verified_pages": verified,
            "discards": stats.discards, "peak_double_allocated_bytes": stats.peak_double_allocated_bytes,
        }


def soak_document(result: dict, seconds: float, argv: list[str] | None = None) -> dict:
    """``privmem soak --json``: the envelope (``seconds`` as asked; the result has the
    seconds it took), then ``run_soak``'s keys."""
    from .results import document, requested

    settings = requested(policies=[result["policy"]], backend=result["backend"], backing=result["backing"], layout="flat",
                         memory=result["memory"], vcpus=result["vcpus"], seed=result["seed"], seconds=seconds,
                         data_check=result["data_check"])
    return document("soak", settings, result, argv)


def format_soak(result: dict) -> str:
    """A few lines for the terminal; the verdict last."""
    ok = not (result["data_errors"] or result["dma_errors"] or result["psc_errors"] or result["state_errors"])
    return "\n".join([
        f"soak on {result['backend']} ({format_size(result['memory'])}, {result['vcpus']} vCPU), "
        f"policy {result['policy']}, seed {result['seed']}: {result['seconds']:.1f} s, {result['chunks']:,} chunks, "
        f"{result['ops']:,} ops",
        f"conversions {result['conversions']:,} ({result['conversions_per_s']:,.0f}/s, "
        f"{result['pages_converted']:,} pages), retries {result['psc_retries']:,}, discards {result['discards']:,}, "
        f"peak held {format_size(result['peak_double_allocated_bytes'])}",
        f"checked {result['verified_pages']:,} pages at the end: data errors {result['data_errors']}, "
        f"DMA errors {result['dma_errors']}, PSC errors {result['psc_errors']}, "
        f"state errors {result['state_errors']}: {'OK' if ok else 'FAILED'}",
    ])


__all__ = ["KEYS", "format_soak", "run_soak", "soak_document"]
