"""Status warnings: one type for every part (daemon, profiles, probe), and the texts that
more than one part shows, written once.

A warning is a `code` (listed in docs/design.md), a one-line message and the fix. The
daemon logs each one when it appears and when it clears (see `Ledger`), so what the
status shows is also in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger("voipqos")

OFFLOAD_FIX = ("uci set firewall.@defaults[0].flow_offloading=0; "
               "uci set firewall.@defaults[0].flow_offloading_hw=0; uci commit firewall; "
               "/etc/init.d/firewall restart")
ACCT_FIX = "sysctl -w net.netfilter.nf_conntrack_acct=1 (or set main.conntrack_acct 1)"


@dataclass(frozen=True)
class Alert:
    """A status warning: `code` from docs/design.md, a one-line message and the fix."""

    code: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "fix": self.fix}


def offload(what: str) -> Alert:
    """`what` names the offload found (fw4's option, a flowtable, offloaded entries)."""
    return Alert("offload", f"{what}: offloaded flows freeze their conntrack counters and "
                 "bypass the classifier", OFFLOAD_FIX)


def acct_off() -> Alert:
    return Alert("acct_off", "connection accounting is off: no packet counters, so calls "
                 "cannot be detected", ACCT_FIX)


class Ledger:
    """The warnings shown now; each is logged once when it appears (or its message
    changes) and once when it clears, however often the poll re-states it."""

    def __init__(self) -> None:
        self.shown: dict[str, Alert] = {}

    def update(self, alerts: Iterable[Alert]) -> None:
        now = {a.code: a for a in alerts}
        for code, a in now.items():
            if self.shown.get(code) != a:
                log.warning("warning [%s] %s (fix: %s)", code, a.message, a.fix or "-")
        for code in self.shown.keys() - now.keys():
            log.info("warning [%s] cleared", code)
        self.shown = now

    def logged(self, alert: Alert) -> None:
        """Show an alert whose owner logged it in its own words (one line per event,
        e.g. each rejected reload): not logged again here; its clearing still is."""
        self.shown[alert.code] = alert
