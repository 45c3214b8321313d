"""``privmem info`` (what this host's KVM offers) and ``privmem list`` (the names every option
takes, each with what it does)."""

from __future__ import annotations

import json
import textwrap

from . import arguments as a

CATALOGUES = ("policies", "workloads", "layouts", "importers")


def cmd_info(args) -> int:
    from ..kvm.probe import format_info, probe

    info = probe()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def catalogue(kind: str) -> dict[str, str]:
    """Name -> one-line description of every registered ``kind``."""
    if kind == "policies":
        from ..convert import POLICIES

        return {name: policy_summary(entry) for name, entry in POLICIES.items()}
    if kind == "workloads":
        from ..workload import WORKLOADS

        return dict(WORKLOADS)
    if kind == "layouts":
        from ..memmap import LAYOUTS

        return dict(LAYOUTS.summaries)
    from ..workload import IMPORTERS

    return dict(IMPORTERS.summaries)


def policy_summary(entry) -> str:
    summary = getattr(entry, "summary", None)
    if summary:
        return summary
    doc = (entry.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def cmd_list(args) -> int:
    kinds = [args.kind] if args.kind else list(CATALOGUES)
    listed = {kind: catalogue(kind) for kind in kinds}
    if args.json:
        print(json.dumps(listed if not args.kind else listed[args.kind], indent=2))
        return 0
    blocks = []
    for kind, names in listed.items():
        width = max(len(name) for name in names) + 2
        lines = [f"{kind}:"]
        for name, summary in names.items():
            wrapped = textwrap.wrap(summary, width=max(40, 78 - width)) or [""]
            lines.append(f"  {name:<{width}}{wrapped[0]}")
            lines += [f"  {'':<{width}}{line}" for line in wrapped[1:]]
        blocks.append("\n".join(lines))
    print("\n\n".join(blocks))
    return 0


def add_parsers(commands) -> None:
    info = commands.add_parser("info", help="what this host's KVM offers, probed (guest_memfd, attributes, "
                                            "address width, in-place conversion)")
    info.add_argument("--json", action="store_true", help="print the probe as JSON")
    info.set_defaults(handler=cmd_info)

    listing = commands.add_parser("list", help="the policies, workloads, layouts and importers, each with "
                                               "what it does")
    listing.add_argument("kind", nargs="?", type=a.choice("kind", CATALOGUES), metavar=a.braces(CATALOGUES),
                         help="one catalogue (default: all)")
    listing.add_argument("--json", action="store_true", help="print name -> description as JSON")
    listing.set_defaults(handler=cmd_list)


__all__ = ["add_parsers", "catalogue"]
