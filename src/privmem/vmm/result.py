"""What one ``run_ops`` did, on either backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class OpsResult:
    """Deltas of a machine's counters over one ``run_ops``."""

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
