"""Result files: the envelope every JSON document privmem writes carries, and reading them back.

A result document is one JSON object: the envelope, then the writer's own keys.  The
envelope says what produced the document and where, so a file stands on its own months
later and two files can be told apart before their numbers are compared:

* ``schema``: the version of this layout (``SCHEMA``); readers refuse newer ones;
* ``kind``: which writer (``bench``, ``run``, ``soak``, ``advise``, ``bench-store``, ...);
* ``privmem_version``, ``created`` (ISO 8601, UTC), ``argv`` (the command line);
* ``host``: ``HOST_KEYS`` (kernel release, the KVM vendor module loaded, CPU model, the guest
  physical-address width KVM offers);
* ``requested``: what was asked for, with defaults filled in (``REQUESTED_KEYS`` always,
  ``None`` where a writer has no such setting, plus the writer's own settings).

Files written before the envelope existed have none of these keys; ``load`` reports them as
``schema`` 0 and leaves upgrading to the reader that knows their shape.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

from .errors import InvalidArgument

SCHEMA = 1
# The default backing (private memory in a guest_memfd, shared in a memfd), recorded as the
# policies' backing where a writer was not asked for another; a bench's in-place rows say
# their own backing in each row.
BACKING = "two-file"
ENVELOPE_KEYS = ("schema", "kind", "privmem_version", "created", "argv", "host", "requested")
HOST_KEYS = ("kernel", "kvm_module", "cpu_model", "gpa_width")
REQUESTED_KEYS = ("workloads", "policies", "backend", "backing", "layout", "memory", "vcpus", "repeat", "scale",
                  "seed")
KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")


def privmem_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("privmem")
    except PackageNotFoundError:
        return "unknown"


def loaded_kvm_modules(sys_module: str = "/sys/module", proc_modules: str = "/proc/modules") -> list[str]:
    """The KVM vendor modules loaded, from /sys/module (or /proc/modules where sysfs lacks them)."""
    found = [name for name in KVM_MODULES if os.path.isdir(os.path.join(sys_module, name))]
    if found:
        return found
    try:
        with open(proc_modules) as modules:
            loaded = {line.split(" ", 1)[0] for line in modules}
    except OSError:
        return []
    return [name for name in KVM_MODULES if name in loaded]


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "cpu model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def host_facts() -> dict:
    """``HOST_KEYS`` for this host.  ``kvm_module`` joins the loaded vendor modules with '+'
    (normally there is one); it and ``gpa_width`` are None where KVM is missing."""
    from .kvm.probe import probe

    modules = loaded_kvm_modules()
    return {"kernel": platform.release(), "kvm_module": "+".join(modules) or None, "cpu_model": cpu_model(),
            "gpa_width": probe(measure=False).get("gpa_width")}


def requested(**settings) -> dict:
    """What a writer was asked to do: ``REQUESTED_KEYS`` first (None where it has no such
    setting; ``backing`` is ``BACKING`` unless given), then its own settings.  Tuples become
    lists, as JSON would make them, so a document compares equal to its saved copy."""
    out = dict.fromkeys(REQUESTED_KEYS)
    out["backing"] = BACKING
    out.update(settings)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in out.items()}


def document(kind: str, requested_settings: dict, body: dict, argv: list[str] | None = None) -> dict:
    """The envelope followed by ``body`` (whose keys must not be envelope keys)."""
    clash = set(body) & set(ENVELOPE_KEYS)
    if clash:
        raise InvalidArgument("body", sorted(clash), "envelope keys are the envelope's own", hex_value=False)
    return {"schema": SCHEMA, "kind": kind, "privmem_version": privmem_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "argv": list(sys.argv if argv is None else argv), "host": host_facts(),
            "requested": requested_settings, **body}


def check_writable(field: str, path: str) -> None:
    """Raise InvalidArgument unless ``path`` can be written: checked before a long run, so
    the run is not lost to a typo in an output path."""
    target = Path(path)
    if target.is_dir():
        raise InvalidArgument(field, path, "is a directory", hex_value=False)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidArgument(field, path, f"directory {str(parent)!r} does not exist", hex_value=False)
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise InvalidArgument(field, path, "not writable", hex_value=False)
    # access(2) says yes to root everywhere, and knows nothing of read-only mounts or
    # pseudo-filesystems: make the temporary file the write will make, and remove it.
    probe = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise InvalidArgument(field, path, f"cannot be written here ({error.strerror})", hex_value=False) from None
    os.close(fd)
    probe.unlink()


def check_readable(field: str, path: str) -> None:
    """Raise InvalidArgument unless ``path`` is a file that can be opened for reading."""
    target = Path(path)
    if not target.exists():
        raise InvalidArgument(field, path, "no such file", hex_value=False)
    if target.is_dir():
        raise InvalidArgument(field, path, "is a directory", hex_value=False)
    try:
        with open(target, "rb"):
            pass
    except OSError as error:
        raise InvalidArgument(field, path, f"cannot be read ({error.strerror})", hex_value=False) from None


def write_outputs(*outputs) -> None:
    """Write every ``(path, write(temporary_path))`` whole or not at all: each to a temporary
    file beside it, then all renamed into place with Ctrl-C held off, so an interrupted
    command leaves either all its outputs or none."""
    from .threads import stop_signals_blocked

    temporaries = []
    try:
        for path, write in outputs:
            target = Path(path)
            temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            temporaries.append((temporary, target))
            write(temporary)
        with stop_signals_blocked():
            for temporary, target in temporaries:
                os.replace(temporary, target)
    finally:
        for temporary, _ in temporaries:
            temporary.unlink(missing_ok=True)


def json_writer(payload):
    """A ``write_outputs`` writer of ``payload`` as indented JSON."""
    return lambda path: Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def write_json(path: str, payload) -> None:
    write_outputs((path, json_writer(payload)))


def load(path: str, kind: str, field: str = "file") -> dict:
    """A result document of ``kind`` from ``path``: an object with the envelope, or one
    without any envelope key (``schema`` 0, an older privmem's file; its reader upgrades it).
    Raises InvalidArgument naming ``field`` and the path, or the envelope key that is wrong."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InvalidArgument(field, path, "no such file", hex_value=False) from None
    except IsADirectoryError:
        raise InvalidArgument(field, path, "is a directory", hex_value=False) from None
    except UnicodeDecodeError:
        raise InvalidArgument(field, path, "not JSON (not UTF-8 text)", hex_value=False) from None
    except OSError as error:
        raise InvalidArgument(field, path, f"cannot be read: {error.strerror}", hex_value=False) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidArgument(field, path, f"not JSON (line {error.lineno} column {error.colno}: {error.msg})",
                              hex_value=False) from None
    if not isinstance(doc, dict):
        raise InvalidArgument(field, path, f"not a privmem result (a JSON {type(doc).__name__}, not an object)",
                              hex_value=False)
    if not any(key in doc for key in ENVELOPE_KEYS):
        doc["schema"] = 0
        return doc
    for key in ENVELOPE_KEYS:
        if key not in doc:
            raise InvalidArgument(field, path, f"the envelope has no {key!r} key", hex_value=False)
    schema = doc["schema"]
    if isinstance(schema, bool) or not isinstance(schema, int) or not 1 <= schema <= SCHEMA:
        raise InvalidArgument("schema", schema, f"{path}: this privmem reads schemas 0 to {SCHEMA}",
                              hex_value=False)
    if doc["kind"] != kind:
        raise InvalidArgument("kind", doc["kind"], f"{path}: expected a {kind} result", hex_value=False)
    return doc

