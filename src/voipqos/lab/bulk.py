"""The load: iperf3 TCP upload and download at the same time, cubic congestion control.

The host's default BBR keeps queues short and would hide bufferbloat; cubic (the
default of most clients and servers behind a home router) fills every buffer it meets.
"""

from __future__ import annotations

from typing import Any

UP_PORT, DOWN_PORT = 5201, 5202  # one iperf3 server per direction: a server runs one test


def server_cmd(port: int) -> list[str]:
    return ["iperf3", "-s", "-p", str(port)]


def client_cmd(server: str, port: int, seconds: int, download: bool) -> list[str]:
    cmd = ["iperf3", "-c", server, "-p", str(port), "-C", "cubic", "-t", str(seconds),
           "-i", "1", "-J"]
    return [*cmd, "-R"] if download else cmd


def goodput(doc: dict[str, Any]) -> dict[str, Any]:
    """iperf3 `-J` → receiver goodput in kbit/s, per-second series (start, kbit/s) and
    the congestion control used; an error text if the test failed."""
    if doc.get("error"):
        return {"error": doc["error"]}
    end = doc.get("end") or {}
    start = (doc.get("start") or {}).get("timestamp", {}).get("timesecs", 0)
    series = [(start + iv["sum"]["start"], iv["sum"]["bits_per_second"] / 1000)
              for iv in doc.get("intervals") or []]
    return {"kbps": end.get("sum_received", {}).get("bits_per_second", 0) / 1000,
            "series": series,
            "retransmits": end.get("sum_sent", {}).get("retransmits"),
            "congestion": end.get("sender_tcp_congestion")}


def mean_rate(series: list[tuple[float, float]], start: float, end: float) -> float | None:
    """Mean of the per-second rates whose interval starts in [start, end)."""
    vals = [r for t, r in series if start <= t < end]
    return sum(vals) / len(vals) if vals else None
