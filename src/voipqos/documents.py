"""The `flows` document and the per-call rows of `status`: shapes the daemon serves and
`voipqos analyze` prints, built from detection results (no daemon state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .detect import Call, Detection, Flow


def flow_row(f: Flow) -> dict[str, Any]:
    o = f.entry.orig
    return {
        "proto": f.entry.proto, "src": o.src, "dst": o.dst, "sport": o.sport, "dport": o.dport,
        "verdict": f.verdict, "reasons": list(f.reasons), "call": f.call,
        "lan_side": f.lan_side,
        "pps_out": round(f.out.pps, 1) if f.out else None,
        "pps_in": round(f.inb.pps, 1) if f.inb else None,
        "size_out": round(f.out.mean_size) if f.out else None,
        "size_in": round(f.inb.mean_size) if f.inb else None,
        "flags": sorted(f.entry.flags),
    }


def flows_document(det: Detection, include_other: bool = True) -> dict[str, Any]:
    """The `flows` shape shared by the daemon and `voipqos analyze`."""
    rows = [flow_row(f) for f in det.flows if include_other or f.verdict != "other"]
    order = {"media": 0, "signalling": 1, "other": 2}
    rows.sort(key=lambda r: (order[r["verdict"]], r["src"], r["dst"], r["sport"]))
    return {"calls": len(det.calls), "interval": det.interval, "flows": rows}


def call_doc(c: Call, started: float, now: float, wall: Callable[[float], float]) -> dict[str, Any]:
    """One call of `status`; `wall` turns the daemon's monotonic times into epoch seconds."""
    return {
        "id": c.id, "lan_host": c.lan_host, "far_host": c.far_host, "flows": len(c.flows),
        "flow_list": [{"proto": k[0], "src": k[1], "dst": k[2], "sport": k[3], "dport": k[4]}
                      for k in c.flows],
        "sip": c.sip, "lan_known": c.lan_known,
        "pps_out": round(c.out.pps, 1), "pps_in": round(c.inb.pps, 1),
        "kbps_out": round(c.out.bps * 8 / 1000, 1), "kbps_in": round(c.inb.bps * 8 / 1000, 1),
        "started": wall(started), "duration": round(now - started, 1),
    }
