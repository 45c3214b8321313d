"""privmem: fd-based private memory for confidential VMs on Linux KVM.

The public facade; everything else lives in its layer (see docs/design.md, docs/api.md)::

    import privmem

    result = privmem.run("ovmf-dma", policy="lazy:budget=8M,max_age=20ms", memory="256M")
    print(result.wall_s, result.discards, result.peak_double_alloc_bytes)
    with privmem.HostMachine("64M", policy="eager") as machine:   # or privmem.Machine on KVM
        print(machine.engine.policy, privmem.__version__)

``Machine`` (the KVM machine, ``privmem.vmm.Machine``), ``HostMachine`` (the same engine
with a Python guest, where there is no KVM), ``run``, ``RunResult`` and ``__version__`` are
loaded on first use, so ``import privmem`` stays cheap (no VMM, no rich, no matplotlib).
"""

from .attrs import ATTR_PRIVATE, BitmapAttributes, MemoryAttributes, PageMapAttributes
from .convert import POLICIES, Conversion, ConversionEngine, ConversionTracker, Request, make_policy
from .errors import (AccessDenied, Busy, GuestError, InvalidArgument, InvalidState, KvmError,
                     PrivmemError, SyscallError, TraceError, Unsupported)
from .units import PAGE_SIZE

_ON_FIRST_USE = {"Machine": "privmem.vmm.machine", "HostMachine": "privmem.vmm.host", "run": "privmem.api",
                 "RunResult": "privmem.runner"}


def _version() -> str:
    """The installed distribution's version; from a source tree, pyproject.toml's."""
    from importlib import metadata

    try:
        return metadata.version("privmem")
    except metadata.PackageNotFoundError:
        pass
    import pathlib
    import tomllib

    try:
        with open(pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as pyproject:
            return tomllib.load(pyproject)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0+unknown"


def __getattr__(name: str):
    if name == "__version__":
        value = _version()
    elif name in _ON_FIRST_USE:
        import importlib

        value = getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    else:
        raise AttributeError(f"module 'privmem' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_ON_FIRST_USE, "__version__"})


__all__ = [
    "ATTR_PRIVATE", "AccessDenied", "BitmapAttributes", "Busy", "Conversion", "ConversionEngine",
    "ConversionTracker", "GuestError", "HostMachine", "InvalidArgument", "InvalidState", "KvmError", "Machine",
    "MemoryAttributes", "PAGE_SIZE", "POLICIES", "PageMapAttributes", "PrivmemError", "Request", "RunResult",
    "SyscallError", "TraceError", "Unsupported", "make_policy", "run",
]
