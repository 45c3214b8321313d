"""Assemble the guest programs: ``python -m privmem.vmm.guest.assemble [--check]``.

Each ``NAME.S`` here becomes ``NAME.bin`` (raw 64-bit code) with GNU ``as --64`` and
``objcopy -O binary``.  The .bin files are committed so that running a machine needs no
toolchain; ``--check`` re-assembles and fails if a committed .bin differs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def have_toolchain() -> bool:
    return bool(shutil.which("as") and shutil.which("objcopy"))


def assemble(source: Path) -> bytes:
    """Return the raw binary of one .S file."""
    with tempfile.TemporaryDirectory(prefix="privmem-as-") as tmp:
        obj, binary = Path(tmp, "guest.o"), Path(tmp, "guest.bin")
        for cmd in (["as", "--64", "-o", str(obj), str(source)],
                    ["objcopy", "-O", "binary", "-j", ".text", str(obj), str(binary)]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
        return binary.read_bytes()


def sources() -> list[Path]:
    return sorted(HERE.glob("*.S"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    status = 0
    for source in sources():
        code = assemble(source)
        target = source.with_suffix(".bin")
        if check:
            same = target.exists() and target.read_bytes() == code
            print(f"{target.name}: {'up to date' if same else 'DIFFERS'}")
            status |= not same
        else:
            target.write_bytes(code)
            print(f"{target.name}: {len(code)} bytes")
    return status


if __name__ == "__main__":
    sys.exit(main())
