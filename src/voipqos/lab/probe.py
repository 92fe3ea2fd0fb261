"""The latency probe: irtt's per-packet JSON as plain samples, and their summaries.

irtt client and server run on the same machine, so its one-way delays share one clock and
are exact: `up` is phone → far end (the upload queue), `down` the reverse. Pure code.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One probe packet: send time (Unix s) and delays in ms; None where it was lost."""

    at: float
    rtt: float | None
    up: float | None
    down: float | None


def samples_from_irtt(doc: dict[str, Any]) -> list[Sample]:
    """irtt's `-o` JSON → samples. Lost packets keep their slot with None delays
    (`true_down` lost only on the way back: the up delay is still known)."""
    out = []
    for rt in doc.get("round_trips") or []:
        at = rt["timestamps"]["client"]["send"]["wall"] / 1e9
        delay = rt.get("delay") or {}
        lost = rt.get("lost", "false")
        up = delay.get("send") if lost in ("false", "true_down") else None
        rtt = delay.get("rtt") if lost == "false" else None
        down = delay.get("receive") if lost == "false" else None
        out.append(Sample(at, _ms(rtt), _ms(up), _ms(down)))
    return out


def _ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sequence."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def delay_summary(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50": percentile(values, 50), "p95": percentile(values, 95),
            "p99": percentile(values, 99), "max": max(values), "n": len(values)}


def mean_abs_ipdv(values: Sequence[float]) -> float | None:
    """Mean |difference| of consecutive delays (IPDV, RFC 5481), the jitter a playout
    buffer has to absorb."""
    if len(values) < 2:
        return None
    return sum(abs(b - a) for a, b in itertools.pairwise(values)) / (len(values) - 1)


def window(samples: Iterable[Sample], start: float | None = None,
           end: float | None = None) -> list[Sample]:
    """Samples sent in [start, end)."""
    return [s for s in samples
            if (start is None or s.at >= start) and (end is None or s.at < end)]


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    """Delays (p50/p95/p99/max), IPDV jitter and loss per direction, in ms and %."""
    def known(attr: str) -> list[float]:
        return [v for s in samples if (v := getattr(s, attr)) is not None]

    up, down = known("up"), known("down")
    sent = len(samples)
    lost_up = sent - len(up)
    lost_down = len(up) - len(down)
    return {
        "sent": sent,
        "rtt": delay_summary(known("rtt")),
        "up": delay_summary(up),
        "down": delay_summary(down),
        "ipdv_up": mean_abs_ipdv(up),
        "ipdv_down": mean_abs_ipdv(down),
        "loss_up_pct": 100 * lost_up / sent if sent else None,
        "loss_down_pct": 100 * lost_down / len(up) if up else None,
    }


def added(summary: dict[str, Any], idle: dict[str, Any], key: str = "p99") -> dict[str, float]:
    """Delay added over the idle line, per direction, at one percentile."""
    out = {}
    for d in ("rtt", "up", "down"):
        if summary.get(d) and idle.get(d):
            out[d] = summary[d][key] - idle[d]["p50"]
    return out
