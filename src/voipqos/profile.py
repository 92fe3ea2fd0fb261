"""The profile layer: what the daemon calls to switch shaping on and off.

A backend makes the kernel (or sqm-scripts) match the desired state. Contract, which
every backend keeps and the kernel tests check:
- `apply()` and `remove()` are idempotent; `remove()` touches only what voipqos made;
- a failing `apply()` raises ProfileError after undoing its partial work, so the line
  is never left half-built or throttled by accident;
- `set_flows()` replaces the classifier's table of call 5-tuples (both directions); when
  it fails the previous table stays the profile's;
- `quality()` is the classifier's per-flow RTP counters (`Classifier.flow_quality()`),
  {} without a classifier; read before `set_flows()` drops a call's tuples, which resets
  them;
- `check()` says what of an applied profile the kernel no longer holds (None: all of it),
  read from the kernel, so the daemon can restore it;
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

    def check(self) -> str | None: ...

    def quality(self) -> dict[FiveTuple, dict[str, Any]]: ...

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

    def check(self) -> str | None:
        return None

    def quality(self) -> dict[FiveTuple, dict[str, Any]]:
        return {}

    def status(self) -> dict[str, Any]:
        return {"backend": self.name, "applied": self.applied, "flows": len(self.flows),
                "warnings": []}


def classifier_hooks(clf: Any, device: str, hooks: Collection[str], repair: bool = True) -> bool:
    """Compare the BPF classifier's hooks on `device` with the kernel, not with its own
    record (a device re-created or a failed apply leaves that record wrong): with `repair`,
    attach where wanted and missing, detach where no longer wanted. True when it runs on
    every wanted hook."""
    from .bpf import BpfError

    complete = True
    for hook in ("egress", "ingress"):
        try:
            clf.prog_id(device, hook)
            present = True
        except BpfError:
            present = False
        try:
            if hook in hooks and not present and not repair:
                complete = False
            elif hook in hooks and not present:
                clf.attach(device, hook)
            elif hook not in hooks and present and repair:
                clf.detach(device, hook)
        except BpfError as exc:
            raise ProfileError(str(exc)) from exc
    return complete


def classifier_quality(clf: Any) -> dict[FiveTuple, dict[str, Any]]:
    """`Profile.quality()` of a backend running the BPF classifier `clf` (None: {}).
    A failed read costs the poll's quality figures only, so it is logged, not raised."""
    if clf is None:
        return {}
    from .bpf import BpfError

    try:
        return clf.flow_quality()
    except BpfError as exc:
        log.debug("classifier quality: %s", exc)
        return {}
