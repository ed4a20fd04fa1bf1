"""Test tiers: markers decide what a test needs; tests whose needs are not met are skipped with the reason."""

from __future__ import annotations

import os
import shutil

import pytest


def _netns_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces (run as root, or run `make test-unit`/`make test-loopback`)"
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian package iproute2/ethtool; `make install` installs it)"
    return None


_NEEDS = {
    "netns": _netns_missing,
    "bmv2": lambda: None
    if shutil.which("simple_switch_grpc")
    else "simple_switch_grpc (BMv2 with P4Runtime) is not on PATH",
    "p4c": lambda: None if shutil.which("p4c-bm2-ss") else "p4c-bm2-ss (p4c's BMv2 back end) is not on PATH",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {name: check() for name, check in _NEEDS.items()}
    for item in items:
        for name, reason in reasons.items():
            if reason and item.get_closest_marker(name):
                item.add_marker(pytest.mark.skip(reason=reason))
