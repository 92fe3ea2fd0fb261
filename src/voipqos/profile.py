"""The profile layer: what the daemon calls to switch shaping on and off.

A backend makes the kernel (or sqm-scripts) match the desired state. Contract, which
every backend keeps and the kernel tests check:
- `apply()` and `remove()` are idempotent; `remove()` touches only what voipqos made;
- a failing `apply()` raises ProfileError after undoing its partial work, so the line
  is never left half-built or throttled by accident;
- `set_flows()` replaces the classifier's table of call 5-tuples (both directions);
- `apply(rate_scale)` with a scale below 1 shapes that much below the configured rates
  (the daemon's drain burst right after switching on); backends that do not own the
  rates (sqm) ignore it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any, Protocol

from .config import Config
from .detect import FiveTuple

log = logging.getLogger(__name__)


class ProfileError(RuntimeError):
    """One-line cause of a failed apply/remove; the previous state is kept."""


class Profile(Protocol):
    name: str
    cfg: Config  # replaced on a reload that keeps backend and device

    def apply(self, rate_scale: float = 1.0) -> None: ...

    def remove(self) -> None: ...

    def set_flows(self, flows: Collection[FiveTuple]) -> None: ...

    def status(self) -> dict[str, Any]: ...


class LogProfile:
    """Shapes nothing; logs what a real backend would do (dry runs, offline tests)."""

    name = "log"

    def __init__(self, cfg: Config | None = None) -> None:
        self.cfg = cfg
        self.applied = False
        self.flows: frozenset[FiveTuple] = frozenset()

    def apply(self, rate_scale: float = 1.0) -> None:
        if not self.applied:
            log.info("profile on (log backend: nothing shaped)")
        self.applied = True

    def remove(self) -> None:
        if self.applied:
            log.info("profile off (log backend)")
        self.applied = False

    def set_flows(self, flows: Collection[FiveTuple]) -> None:
        self.flows = frozenset(flows)

    def status(self) -> dict[str, Any]:
        return {"backend": self.name, "applied": self.applied, "flows": len(self.flows),
                "warnings": []}
