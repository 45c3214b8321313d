"""Guest programs (GNU as sources and their committed raw binaries)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name: str = "player") -> bytes:
    """The committed binary ``NAME.bin``."""
    return (HERE / f"{name}.bin").read_bytes()
