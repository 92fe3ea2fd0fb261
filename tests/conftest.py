"""Shared test policy: a kernel test that cannot run here fails, it never skips (CI is
root with namespaces; a silent skip would hide a missing install step)."""

from __future__ import annotations

import pytest

from voipqos.lab import netns


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel"):
        why = netns.require_root()
        if why:
            pytest.fail(f"kernel test cannot run here: {why}", pytrace=False)
