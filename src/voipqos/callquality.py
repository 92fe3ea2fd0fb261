"""Each call's quality while it runs, and what is kept when it ends: which calls ended
since the last poll, their summary (history, log line, event). Pure: the daemon hands in
the detection's calls and, at most once a poll, one read of the classifier's table.

The classifier's counters live in its flow table and start from zero when a tuple is
added again, so the daemon reads the table before the ended calls' tuples leave it; a
call keeps the last quality measured while its tuples were there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .detect import Call, FiveTuple
from .quality import DIRECTIONS, WHERE, CallQuality, Direction, call_quality, trouble

HISTORY = 10  # finished calls kept for status (a short look back, not a call log)
# seconds between reads of the table while calls run: one read costs about 0.3 ms per
# call here, 10x that on a router (bench/call_quality_poll.py); a call that ends is
# always read at once
READ_INTERVAL = 5.0
NOT_MEASURED = "quality unknown (not measured: the BPF classifier was not running)"
Table = Mapping[FiveTuple, Mapping[str, Direction]]


def quality_doc(q: CallQuality | None) -> dict[str, Any]:
    """A call's `quality` in status and events: per direction loss, jitter, MOS and the
    sentence saying where trouble lies ("trouble", None when there is none to say)."""
    if q is None:
        return {"known": False, "summary": NOT_MEASURED, "rtt_ms": {},
                "egress": None, "ingress": None}
    doc = q.as_dict()
    for name in DIRECTIONS:
        if doc[name] is not None:
            doc[name] |= {"where": WHERE[name], "trouble": trouble(name, getattr(q, name))}
    return doc


@dataclass
class Tracked:
    call: Call
    started: float  # monotonic
    quality: CallQuality | None = None
    confirmed: bool = False  # media beyond a pending first interval at some poll


class CallQualities:
    """Feed `update()` once a poll with the calls detected now; it returns the summaries
    of the calls that ended, which it also keeps (newest first) in `history`."""

    def __init__(self, keep: int = HISTORY, interval: float = READ_INTERVAL) -> None:
        self.calls: dict[str, Tracked] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=keep)
        self.interval = interval
        self.read_at = float("-inf")

    def update(self, calls: Sequence[Call], now: float, table: Table | None,
               wall: Callable[[float], float]) -> list[dict[str, Any]]:
        """`table` is `Classifier.flow_quality()` read this poll before any tuple was
        removed (None: not read). Ended calls are measured with their last tuples."""
        current = {c.id: c for c in calls}
        for c in calls:
            self.calls.setdefault(c.id, Tracked(c, now))
        if table is not None:
            self.read_at = now
        if table:
            for cid, t in self.calls.items():
                keys = t.call.tuples | (current[cid].tuples if cid in current else frozenset())
                entries = [table[k] for k in keys if k in table]
                if entries:
                    t.quality = call_quality(entries)
        ended = []
        for cid in [cid for cid in self.calls if cid not in current]:
            t = self.calls.pop(cid)
            if not t.confirmed:
                continue  # one pending interval (a burst a game or a VPN handshake made
                # call-shaped): never in the voice class, not a call to report
            ended.append(summary(t, now, wall))
            self.history.appendleft(ended[-1])
        for c in calls:
            t = self.calls[c.id]
            t.call = c
            t.confirmed |= bool(c.tuples)
        return ended

    def quality(self, call_id: str) -> dict[str, Any]:
        t = self.calls.get(call_id)
        return quality_doc(t.quality if t else None)

    def wants_read(self, calls: Sequence[Call], now: float) -> bool:
        """Whether this poll needs the classifier's table: a call ended (its last
        chance), a new one started, or `interval` passed while calls run."""
        ids = {c.id for c in calls}
        if ids != set(self.calls):
            return True
        return bool(ids) and now - self.read_at >= self.interval


def summary(t: Tracked, now: float, wall: Callable[[float], float]) -> dict[str, Any]:
    c = t.call
    return {"id": c.id, "lan_host": c.lan_host, "far_host": c.far_host, "sip": c.sip,
            "started": wall(t.started), "ended": wall(now),
            "duration": round(now - t.started, 1), "quality": quality_doc(t.quality)}


def _span(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _direction_words(label: str, d: dict[str, Any] | None) -> str:
    if d is None or not d["rtp"]:
        return f"{label} quality unknown"
    loss = "-" if d["loss_percent"] is None else f"{d['loss_percent']:.1f}"
    jitter = "" if d["jitter_ms"] is None else f", jitter {d['jitter_ms']:.1f} ms"
    mos = "" if d["mos"] is None else f", MOS {d['mos']:.1f}"
    return f"{label} {loss} % lost{jitter}{mos}"


def log_line(s: dict[str, Any]) -> str:
    """One line per finished call: "call A>B ended after 3m12s: in 0.4 % lost, jitter
    3 ms, MOS 4.3; out ...; <where trouble lies>"."""
    q = s["quality"]
    head = f"call {s['id']} ended after {_span(s['duration'])}: "
    if not q["known"]:
        return head + q["summary"]
    words = [_direction_words("in", q["ingress"]), _direction_words("out", q["egress"])]
    if q["summary"] != "good":
        words.append(q["summary"])
    return head + "; ".join(words)
