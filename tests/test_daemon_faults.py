"""Issue 14's "it leaves the line wrong" and issue 16's status-truth rows as kernel tests:
the real daemon in a namespace router, a fault, and a deadline for the kernel to be right
again (the probes live in line_faults.py, which also runs them as a script)."""

from __future__ import annotations

import pytest

from line_faults import PROBES, run_probe

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("name", list(PROBES))
def test_fault_is_repaired(name, tmp_path):
    res = run_probe(name, tmp_path, f"vqf{list(PROBES).index(name)}-")
    assert res.ok, f"{name}: restore {res.restore_s}, {res.detail}"
