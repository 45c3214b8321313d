"""What one ``run_ops`` did, on either backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class OpsResult:
    """Deltas of a machine's counters over one ``run_ops``; the same meaning on every backend:
    ``conversions`` guest conversion requests the engine took, ``pages_converted`` the pages
    whose state they changed (the engine's count), ``psc_requests`` doorbell rings (one per
    request on the host backend), ``psc_retries`` requests answered "retry" (Busy),
    ``psc_errors`` requests refused as malformed, ``data_errors`` guest verifies and device
    reads that found other data, ``dma_errors`` device requests refused, ``exits_by_reason``
    by ``privmem.kvm.uapi`` exit name ("io", "hlt", ...)."""

    COUNTERS = ("conversions", "pages_converted", "psc_requests", "psc_errors", "psc_retries", "data_errors",
                "dma_errors")

    ops: int
    wall_time: float
    exits: int
    exits_by_reason: dict
    conversions: int
    pages_converted: int
    psc_requests: int
    psc_errors: int
    psc_retries: int
    data_errors: int
    dma_errors: int
    failures: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)
