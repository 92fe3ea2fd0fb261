#!/usr/bin/env python3
"""Accuracy of the classifier's call quality against the endpoints' own RTCP figures
(root; namespaces with prefix vqq-).

A real SIP call (baresip, PCMU/20 ms) phone - router - isp - far (the lab's topology,
NAT and the SIP helper on the router), the classifier on the router's wan0 egress and
ingress with the call's RTP tuples in its flow table (read from conntrack as the daemon
does). Per condition and direction, the router's loss % and jitter next to the figures
of the endpoint that receives that direction, both from the far end's baresip
rtcpsummary line: its own receive statistics for the upload, the phone's RTCP receiver
reports for the download. Conditions:

- clean: no load;
- lan-loss: 3 % of the phone's RTP dropped as it leaves the phone (a lossy Wi-Fi);
- lan-jitter: the phone's link shaped to 2 Mbit/s with a cubic upload beside the call
  (a busy Wi-Fi: queueing delay that varies, some loss);
- bloat-down: a cubic download through the modem's 500 ms FIFO, no shaping (loss and
  jitter on the internet side of the router).

    .venv/bin/python bench/call_quality_accuracy.py [--seconds 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from voipqos import bpf, conntrack, quality
from voipqos.lab import bulk, sip
from voipqos.lab.netns import cleanup_prefix
from voipqos.lab.topology import FAR4, PHONE4, ROUTER_WAN_DEV, Line, four_hosts

PREFIX = "vqq-"
CONDITIONS = ("clean", "lan-loss", "lan-jitter", "bloat-down")
LOSS_RULES = f"""
table inet vqq_loss {{
  chain output {{
    type filter hook output priority filter; policy accept;
    udp sport {sip.RTP_PORTS[0]}-{sip.RTP_PORTS[1]} numgen random mod 100 < 3 drop
  }}
}}
"""


def call_tuples(topo, deadline_s: float = 10) -> list[tuple[int, str, str, int, int]]:
    """Orig and reply tuples of the router's RTP conntrack entries (the call's media)."""
    lo, hi = sip.RTP_PORTS
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        text = topo.exec("router", "cat /proc/net/nf_conntrack").stdout
        out = []
        for e in conntrack.parse(text.splitlines()).entries.values():
            o, r = e.orig, e.reply
            if e.proto == "udp" and (lo <= o.sport <= hi or lo <= o.dport <= hi):
                out += [(17, o.src, o.dst, o.sport, o.dport), (17, r.src, r.dst, r.sport, r.dport)]
        if out:
            return out
        time.sleep(0.2)
    raise RuntimeError("no RTP conntrack entry on the router")


def condition(topo, raw: Path, name: str, seconds: int, clf: bpf.Classifier) -> dict[str, Any]:
    topo.exec("router", "conntrack -F", check=False)
    load = None
    if name == "lan-loss":
        topo.nft("phone", LOSS_RULES)
    elif name == "lan-jitter":
        for cmd in ("qdisc replace dev eth0 root handle 1: htb default 1",
                    "class add dev eth0 parent 1: classid 1:1 htb rate 2mbit",
                    "qdisc add dev eth0 parent 1:1 pfifo limit 40"):
            topo.exec("phone", "tc " + cmd)
        load = topo.popen("phone", bulk.client_cmd(FAR4, bulk.UP_PORT, seconds + 4, False))
    elif name == "bloat-down":
        load = topo.popen("phone", bulk.client_cmd(FAR4, bulk.DOWN_PORT, seconds + 4, True))
    far_log, phone_log = raw / f"{name}.far.log", raw / f"{name}.phone.log"
    callee = topo.popen("far", sip.callee_cmd(raw / "baresip-far"), stdout=far_log.open("w"),
                        stderr=subprocess.STDOUT)
    try:
        time.sleep(2 if load else 0.5)
        caller = topo.popen("phone", sip.caller_cmd(raw / "baresip-phone", seconds,
                                                    f"sip:far@{FAR4}"),
                            stdout=phone_log.open("w"), stderr=subprocess.STDOUT)
        tuples = call_tuples(topo)
        clf.set_flows(tuples)
        caller.wait(timeout=seconds + 20)
        entries = clf.flow_quality()
        time.sleep(1)
    finally:
        callee.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            callee.wait(timeout=5)
        if load:
            load.kill()
        clf.set_flows([])
        topo.exec("phone", "nft delete table inet vqq_loss", check=False)
        topo.exec("phone", "tc qdisc del dev eth0 root", check=False)
    q = quality.call_quality(entries[t] for t in tuples if t in entries)
    far = sip.parse_rtcpsummary(far_log.read_text(errors="replace")) or {}
    nan = float("nan")
    return {"condition": name, "router": q.as_dict(),
            "far_rx": {"loss_percent": percent(far.get("lost_rx", nan),
                                               far.get("lost_rx", nan)
                                               + far.get("packets_rx", nan)),
                       "jitter_ms": far.get("jitter_rx_ms")},
            "phone_rx": {"loss_percent": percent(far.get("lost_tx", nan),
                                                 far.get("packets_tx", nan)),
                         "jitter_ms": far.get("jitter_tx_ms")}}


def percent(lost: float, expected: float) -> float | None:
    return 100.0 * lost / expected if expected == expected and expected > 0 else None


def fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{unit}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| condition | direction | router loss | endpoint loss | router jitter | "
             "endpoint jitter | RTCP report seen by the router (loss last, jitter) | "
             "router MOS (upper bound) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, ep, who in (("egress", r["far_rx"], "far end"),
                              ("ingress", r["phone_rx"], "phone's RTCP")):
            d = r["router"][name] or {}
            rep = d.get("endpoint_report") or {}
            lines.append(f"| {r['condition']} | {name} (vs {who}) | "
                         f"{fmt(d.get('loss_percent'), ' %')} | {fmt(ep['loss_percent'], ' %')} | "
                         f"{fmt(d.get('jitter_ms'), ' ms')} | {fmt(ep.get('jitter_ms'), ' ms')} | "
                         f"{fmt(rep.get('loss_percent_last'), ' %')}, "
                         f"{fmt(rep.get('jitter_ms'), ' ms')} | {fmt(d.get('mos'))} |")
    lines.append("")
    lines += [f"{r['condition']}: router's round trips from RTCP SR/RR: "
              + (", ".join(f"{k} {v:.1f} ms" for k, v in r["router"]["rtt_ms"].items()) or "none")
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    args = ap.parse_args()
    subprocess.run(["make", "-s", "-C", str(Path(__file__).resolve().parents[1] / "bpf")],
                   check=True)
    cleanup_prefix(PREFIX)
    raw = Path(tempfile.mkdtemp(prefix="vqq-"))
    topo = four_hosts(PREFIX, Line())
    pin = raw / "bpffs"
    clf = bpf.Classifier(str(pin), netns=topo.ns("router"))
    rows = []
    try:
        for port in (bulk.UP_PORT, bulk.DOWN_PORT):
            topo.popen("far", bulk.server_cmd(port))
        tone = raw / "tone.wav"
        sip.write_tone(tone, args.seconds + 15)
        sip.write_profile(raw / "baresip-far", "far", FAR4, tone, answer=True)
        sip.write_profile(raw / "baresip-phone", "phone", PHONE4, tone, answer=False)
        clf.attach(ROUTER_WAN_DEV, "egress")
        clf.attach(ROUTER_WAN_DEV, "ingress")
        clf.set_rules(0, False, False, [])   # measure only: no class, no mark
        for name in args.conditions.split(","):
            rows.append(condition(topo, raw, name, args.seconds, clf))
    finally:
        clf.close()
        topo.close()
    print(f"machine: {platform.processor() or platform.machine()}, kernel {platform.release()}; "
          f"{args.seconds} s PCMU calls; raw logs in {raw}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
