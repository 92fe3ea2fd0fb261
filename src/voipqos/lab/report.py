"""Raw scenario measurements → the results document and the terminal table. Pure code.

Delay figures are per window of the call: `call` (all of it), and for auto also `on`
(from the profile switching on) and `drained` (from the first probe packet after that
with an RTT under SETTLED_MS: the queue the modem built before detection is gone, which
takes a few seconds because only the margin between line and shaper rate drains it).
"""

from __future__ import annotations

from typing import Any

from . import bulk, probe

SETTLED_MS = 20.0


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
            settled = next((x.at for x in samples if x.at >= times["on_at"]
                            and x.rtt is not None and x.rtt < SETTLED_MS), None)
            out["profile"]["drain_s"] = None if settled is None else settled - times["on_at"]
            if settled is not None:
                windows["drained"] = (settled, end)
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


WINDOW_TITLES = {"call": "", "on": ": on", "drained": ": drained"}
SHORT = {"none": "no voipqos", "auto": "auto", "forced": "forced on"}


def columns(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], str]]:
    """(title, scenario, window): every scenario's whole call, plus auto's later windows."""
    return [(SHORT.get(r["name"], r["name"]) + WINDOW_TITLES[w], r, w)
            for r in results for w in r["probe"]]


def rows(res: dict[str, Any], window: str) -> list[tuple[str, str]]:
    """(label, value) lines of one column; per-scenario figures only in its first column."""
    w = res["probe"][window]
    first = window == "call"
    prof = res.get("profile") or {}
    rtcp = res.get("rtcp") or {}
    b = res.get("bulk", {})
    d = res.get("daemon") or {}

    def once(v: str) -> str:
        return v if first else "″"

    def pcts(s: dict[str, Any] | None) -> str:
        return "/".join(_ms(_p(s, k)) for k in ("p50", "p99", "max"))

    return [
        ("RTT p50/p99/max ms", pcts(w["rtt"])),
        ("up delay p50/p99/max ms", pcts(w["up"])),
        ("down delay p50/p99/max ms", pcts(w["down"])),
        ("p99 added up / down ms", f"{_f(w['added_p99'].get('up'), '{:.2f}')} / "
                                   f"{_f(w['added_p99'].get('down'), '{:.2f}')}"),
        ("IPDV up / down ms", f"{_f(w['ipdv_up'], '{:.2f}')} / {_f(w['ipdv_down'], '{:.2f}')}"),
        ("loss up / down %", f"{_f(w['loss_up_pct'])} / {_f(w['loss_down_pct'])}"),
        ("probe packets", str(w["sent"])),
        ("RTCP lost rx/tx", once(f"{_f(rtcp.get('lost_rx'), '{:.0f}')} / "
                                 f"{_f(rtcp.get('lost_tx'), '{:.0f}')}")),
        ("RTCP jitter rx/tx ms", once(f"{_f(rtcp.get('jitter_rx_ms'))} / "
                                      f"{_f(rtcp.get('jitter_tx_ms'))}")),
        ("goodput up / down Mbit/s", once(f"{_f(_mbit(b, 'up'), '{:.2f}')} / "
                                          f"{_f(_mbit(b, 'down'), '{:.2f}')}")),
        ("profile on after 1st media s", once(_f(prof.get("detect_s"), "{:.2f}"))),
        ("modem queue drained after s", once(_f(prof.get("drain_s"), "{:.2f}"))),
        ("profile off after call end s", once(_f(prof.get("off_s"), "{:.2f}"))),
        ("daemon CPU % / RSS MB", once(f"{_f(d.get('cpu_percent'), '{:.2f}')} / "
                                       f"{_f(_mb(d.get('rss_bytes')))}")),
    ]


def _ms(v: float | None) -> str:
    """Two significant decimals where they matter (sub-ms), none where they do not."""
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _mbit(b: dict[str, Any], d: str) -> float | None:
    return b[d]["kbps"] / 1000 if d in b else None


def _mb(v: float | None) -> float | None:
    return None if v is None else v / 1e6


def table(results: list[dict[str, Any]], idle: dict[str, Any]) -> str:
    """Scenarios (and auto's windows) side by side."""
    cols = columns(results)
    cells = [dict(rows(r, w)) for _, r, w in cols]
    labels = list(cells[0])
    w0 = max(len(x) for x in labels) + 2
    ws = [max(len(t), *(len(c[x]) for x in labels)) + 2
          for (t, _, _), c in zip(cols, cells, strict=True)]
    head = " " * w0 + "".join(t.ljust(w) for (t, _, _), w in zip(cols, ws, strict=True))
    lines = [head, "-" * len(head)]
    for label in labels:
        lines.append(label.ljust(w0) + "".join(c[label].ljust(w) for c, w in
                                                zip(cells, ws, strict=True)))
    lines.append(f"idle line: RTT p50 {_f(_p(idle.get('rtt'), 'p50'), '{:.3f}')} ms, "
                 f"up p50 {_f(_p(idle.get('up'), 'p50'), '{:.3f}')} ms, "
                 f"down p50 {_f(_p(idle.get('down'), 'p50'), '{:.3f}')} ms")
    return "\n".join(lines)
