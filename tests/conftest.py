"""Shared pytest helpers: tests marked ``kvm`` run for real where /dev/kvm is usable and are
skipped, with the reason, where it is not."""

import os

import pytest


def _kvm_unusable_reason():
    if os.environ.get("PRIVMEM_NO_KVM"):
        return "PRIVMEM_NO_KVM is set"
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm on this host"
    from privmem.runner import kvm_unusable_reason

    reason = kvm_unusable_reason()
    return None if reason is None else f"KVM not usable: {reason}"


KVM_SKIP_REASON = _kvm_unusable_reason()


def pytest_collection_modifyitems(config, items):
    if KVM_SKIP_REASON is None:
        return
    skip = pytest.mark.skip(reason=KVM_SKIP_REASON)
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)
