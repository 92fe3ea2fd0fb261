"""The daemon's header evidence: the observer (observer.py) kept on the WAN device and read
once a poll for the detector.

Evidence, not a function the router needs: when the observer cannot load, attach or be
read, the daemon goes on without it (the detector gets headers=None), says why once in
the log and in status, and tries again only when something changed (a reload, the WAN
device re-created), so a router without BPF does not pay for a failing attach every poll.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .alerts import Alert
from .header_evidence import HeaderCounts, HeaderKey

log = logging.getLogger(__name__)

ObserverFactory = Callable[[], Any]  # -> observer.Observer (imported lazily: ctypes)
Headers = Mapping[HeaderKey, HeaderCounts]
OFF_BY_CONFIG = "header_evidence is 0"


class HeaderWatch:
    """The observer's life in the daemon: attach at the first poll after a (re)configure,
    re-check after kernel changes, read each poll, detach on stop."""

    def __init__(self, factory: ObserverFactory | None) -> None:
        self.factory = factory
        self.wanted = False
        self.device = ""
        self.obs: Any = None
        self.reason = OFF_BY_CONFIG  # why it is off; "" while it runs
        self.due = False  # attach or re-check before the next read
        self.flows = 0
        self.read_ms = 0.0

    def configure(self, wanted: bool, device: str) -> None:
        """A loaded config: off now, or (re)attached on `device` at the next read."""
        self.wanted, self.device = wanted, device
        if wanted:
            self.due = True
            if self.obs is None:
                self.reason = "not attached yet"
        else:
            self.stop(OFF_BY_CONFIG)

    def kernel_changed(self, device_announced: bool) -> None:
        """tc or link events: a running observer may have lost a hook (a qdisc it sat on
        was replaced); a failed one is retried only when the device itself came (back)."""
        if self.wanted and (self.obs is not None or device_announced):
            self.due = True

    def read(self) -> Headers | None:
        """The map now, or None while the observer is off (or just failed)."""
        if self.due:
            self.due = False
            self._ensure()
        if self.obs is None:
            return None
        from .bpf import BpfError

        start = time.perf_counter()
        try:
            headers = self.obs.read()
        except BpfError as exc:
            self.stop(str(exc))  # the `observer` warning logs it once
            return None
        self.read_ms = (time.perf_counter() - start) * 1000
        self.flows = len(headers)
        return headers

    def _ensure(self) -> None:
        if self.factory is None:
            self.reason = "not available in this run (no BPF observer)"
            return
        try:
            if self.obs is None:  # a fresh attach (replaces a killed predecessor's filters)
                from .bpf import HOOKS

                self.obs = self.factory()
                for hook in HOOKS:
                    self.obs.attach(self.device, hook)
            else:
                self.obs.ensure(self.device)
        except (ImportError, OSError, RuntimeError) as exc:  # BpfError is a RuntimeError
            self.stop(str(exc))  # the `observer` warning logs it once
            return
        if self.reason:
            log.info("header evidence on: observer attached on %s", self.device)
        self.reason = ""

    def step_aside(self) -> None:
        """Off until the next read, clsact included: sqm-scripts adds a plain `ingress`
        qdisc for its download shaping, which the kernel refuses next to a clsact. The
        next read attaches again, on sqm's qdiscs."""
        if self.obs is not None:
            try:
                self.obs.remove_from(self.device)
            except RuntimeError as exc:
                log.warning("observer removal: %s", exc)
        self.stop("making way for sqm")
        self.due = self.wanted

    def stop(self, reason: str | None = None) -> None:
        """Detach and unpin the observer; nothing is left on the device."""
        obs, self.obs = self.obs, None
        self.flows = 0
        self.reason = reason or (OFF_BY_CONFIG if not self.wanted else
                                 "not attached yet" if self.due else "stopped")
        if obs is None:
            return
        try:
            obs.close()
        except RuntimeError as exc:
            log.warning("observer removal: %s", exc)

    def alert(self) -> Alert | None:
        """A status warning while it is wanted but off."""
        if not self.wanted or not self.reason or self.factory is None:
            return None
        return Alert("observer", f"header evidence off: {self.reason}",
                     "install kmod-sched-bpf and tc-bpf (or tc-full); calls are still "
                     "detected from conntrack alone")

    def status(self) -> dict[str, Any]:
        on = self.obs is not None and not self.reason
        return {"state": "on" if on else "off", "reason": self.reason or None,
                "device": self.device if on else None, "flows": self.flows,
                "read_ms": round(self.read_ms, 3)}
