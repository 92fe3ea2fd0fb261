"""Raw scenario measurements → the results document and the terminal table. Pure code.

Delay figures are for the call: the whole call for `none` and `forced`, and for `auto`
also the part after the profile switched on (`on`), which is what voipqos promises.
"""

from __future__ import annotations

from typing import Any

from . import bulk, probe

TARGETS = {"p99_added_ms": 1.5, "loss_pct": 0.0, "rtcp_jitter_ms": 1.0,
           "goodput_share": 0.90, "detect_s": 2.0}


def profile_times(transitions: list[dict[str, Any]], first_media: float,
                  call_end: float) -> dict[str, float | None]:
    """When the profile went on after the first media packet and off after the call
    ended, from the daemon's transition log."""
    on_at = next((t["at"] for t in transitions
                  if t.get("active") and t["at"] >= first_media - 1.0), None)
    off_at = None
    if on_at is not None:
        off_at = next((t["at"] for t in transitions
                       if not t.get("active") and t["at"] > on_at), None)
    return {"on_at": on_at, "off_at": off_at,
            "detect_s": None if on_at is None else on_at - first_media,
            "off_s": None if off_at is None else off_at - call_end}


def summarize(raw: dict[str, Any], idle: dict[str, Any], shaped_kbit: dict[str, int]
              ) -> dict[str, Any]:
    """One scenario's figures; `series` keeps the per-packet delays for the plots."""
    samples = probe.samples_from_irtt(raw.get("irtt") or {})
    errors = list(raw.get("errors", []))
    if "error" in (raw.get("irtt") or {}):
        errors.append(raw["irtt"]["error"])
    first = samples[0].at if samples else raw.get("call_start", 0.0)
    end = samples[-1].at + 0.02 if samples else raw.get("call_end", 0.0)
    out: dict[str, Any] = {"name": raw["name"], "title": raw["title"], "errors": errors,
                           "call": {"first_media": first, "end": end}}
    windows = {"call": (first, end)}
    status = raw.get("status")
    if status is not None:
        times = profile_times(status.get("transitions", []), first, end)
        out["profile"] = {**times, "transitions": status.get("transitions", []),
                          "classifier": (status.get("profile") or {}).get("classifier"),
                          "warnings": status.get("warnings", [])}
        if times["on_at"] is not None:
            windows["on"] = (times["on_at"], end)
        out["daemon"] = {**raw.get("daemon", {}), "status_metrics": status.get("metrics")}
    out["probe"] = {}
    for key, (a, b) in windows.items():
        s = probe.summarize(probe.window(samples, a, b))
        s["added_p99"] = probe.added(s, idle)
        out["probe"][key] = s
    out["rtcp"] = raw.get("rtcp")
    out["bulk"] = {}
    for d, doc in (raw.get("iperf") or {}).items():
        g = bulk.goodput(doc)
        if "error" in g:
            errors.append(f"iperf3 {d}: {g['error']}")
            continue
        out["bulk"][d] = {"kbps": g["kbps"], "congestion": g["congestion"],
                          "during_call_kbps": bulk.mean_rate(g["series"], first, end),
                          "share_of_shaped": g["kbps"] / shaped_kbit[d],
                          "series": g["series"]}
    out["series"] = [[s.at - first, s.rtt, s.up, s.down] for s in samples]
    return out


def _f(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _p(s: dict[str, Any] | None, key: str) -> float | None:
    return None if not s else s.get(key)


def rows(res: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines of one scenario's column."""
    on = res["probe"].get("on") or res["probe"]["call"]
    call = res["probe"]["call"]
    prof = res.get("profile") or {}
    rtcp = res.get("rtcp") or {}
    b = res.get("bulk", {})
    d = res.get("daemon") or {}
    return [
        ("window", "profile on" if "on" in res["probe"] else "whole call"),
        ("RTT p50 / p99 ms", f"{_f(_p(on['rtt'], 'p50'))} / {_f(_p(on['rtt'], 'p99'))}"),
        ("up delay p50/p95/p99/max ms", "/".join(_f(_p(on["up"], k))
                                                 for k in ("p50", "p95", "p99", "max"))),
        ("down delay p50/p95/p99/max ms", "/".join(_f(_p(on["down"], k))
                                                   for k in ("p50", "p95", "p99", "max"))),
        ("p99 added up / down ms", f"{_f(on['added_p99'].get('up'), '{:.2f}')} / "
                                   f"{_f(on['added_p99'].get('down'), '{:.2f}')}"),
        ("IPDV up / down ms", f"{_f(on['ipdv_up'], '{:.2f}')} / "
                              f"{_f(on['ipdv_down'], '{:.2f}')}"),
        ("loss up / down %", f"{_f(on['loss_up_pct'])} / {_f(on['loss_down_pct'])}"),
        ("whole call p99 up/down ms", f"{_f(_p(call['up'], 'p99'))} / "
                                      f"{_f(_p(call['down'], 'p99'))}"),
        ("RTCP lost rx/tx", f"{_f(rtcp.get('lost_rx'), '{:.0f}')} / "
                            f"{_f(rtcp.get('lost_tx'), '{:.0f}')}"),
        ("RTCP jitter rx/tx ms", f"{_f(rtcp.get('jitter_rx_ms'))} / "
                                 f"{_f(rtcp.get('jitter_tx_ms'))}"),
        ("goodput up / down Mbit/s", f"{_f(_mbit(b, 'up'), '{:.2f}')} / "
                                     f"{_f(_mbit(b, 'down'), '{:.2f}')}"),
        ("profile on after 1st media s", _f(prof.get("detect_s"), "{:.2f}")),
        ("profile off after call end s", _f(prof.get("off_s"), "{:.2f}")),
        ("daemon CPU % / RSS MB", f"{_f(d.get('cpu_percent'), '{:.2f}')} / "
                                  f"{_f(_mb(d.get('rss_bytes')))}"),
    ]


def _mbit(b: dict[str, Any], d: str) -> float | None:
    return b[d]["kbps"] / 1000 if d in b else None


def _mb(v: float | None) -> float | None:
    return None if v is None else v / 1e6


def table(results: list[dict[str, Any]], idle: dict[str, Any]) -> str:
    """Scenarios side by side."""
    cols = [dict(rows(r)) for r in results]
    labels = [label for label, _ in rows(results[0])]
    w0 = max(len(x) for x in labels) + 2
    ws = [max(len(r["title"]), *(len(c[x]) for x in labels)) + 2 for r, c in
          zip(results, cols, strict=True)]
    head = " " * w0 + "".join(r["title"].ljust(w) for r, w in zip(results, ws, strict=True))
    lines = [head, "-" * len(head)]
    for label in labels:
        lines.append(label.ljust(w0) + "".join(c[label].ljust(w) for c, w in
                                                zip(cols, ws, strict=True)))
    lines.append(f"idle line: RTT p50 {_f(_p(idle.get('rtt'), 'p50'), '{:.3f}')} ms, "
                 f"up p50 {_f(_p(idle.get('up'), 'p50'), '{:.3f}')} ms, "
                 f"down p50 {_f(_p(idle.get('down'), 'p50'), '{:.3f}')} ms")
    return "\n".join(lines)
