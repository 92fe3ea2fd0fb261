#!/usr/bin/env python3
"""Accuracy of the classifier's call quality against the endpoints' own figures
(root; namespaces with prefix vqq-).

Per condition and run, two calls phone - router - isp - far (the lab's topology, NAT and
the SIP helper on the router), the classifier on the router's wan0 egress and ingress
with the call's RTP tuples in its flow table (read from conntrack as the daemon does):

- baresip (PCMU/20 ms): the endpoint's figures from the far end's rtcpsummary line, its
  own receive statistics (upload) and the phone's RTCP receiver reports (download);
  libre stamps packets when the application reads them;
- the reference (bench/rtp_endpoint.py): 20 ms RTP both ways, every packet stamped by
  the receiving kernel (SO_TIMESTAMPNS) and counted by quality.RtpReceiver (RFC 3550
  A.1/A.8), at the far end (upload), the phone (download) and an AF_PACKET tap on the
  isp's side of the router's WAN link (the upload before the modem's queue adds
  anything the router cannot see); irtt (20 ms, phone -> far) runs beside it: its own
  loss and mean IPDV, a reference for the path, not for the RTP arithmetic.

Conditions:

- clean: no load;
- lan-loss: 3 % of the phone's RTP dropped as it leaves the phone (a lossy Wi-Fi);
- lan-jitter: the phone's link shaped to 2 Mbit/s with a cubic upload beside the call
  (a busy Wi-Fi: queueing delay that varies, some loss);
- bloat-down: a cubic download through the modem's 500 ms FIFO, no shaping (loss and
  jitter on the internet side of the router).

    .venv/bin/python bench/call_quality_accuracy.py [--seconds 20] [--runs 2] [--json OUT]
        [--plot docs/quality-accuracy.png] [--from-json OUT (tabulate/plot only)]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from voipqos import bpf, conntrack, quality
from voipqos.lab import bulk, sip
from voipqos.lab.netns import cleanup_prefix
from voipqos.lab.scenario import IRTT_PORT
from voipqos.lab.topology import FAR4, ISP_CPE_DEV, PHONE4, ROUTER_WAN_DEV, Line, four_hosts

PREFIX = "vqq-"
CONDITIONS = ("clean", "lan-loss", "lan-jitter", "bloat-down")
ENDPOINT = Path(__file__).with_name("rtp_endpoint.py")
REF_PHONE_PORT, REF_FAR_PORT = sip.RTP_PORTS[0], sip.RTP_PORTS[0] + 2   # lan-loss drops them too
LOSS_RULES = f"""
table inet vqq_loss {{
  chain output {{
    type filter hook output priority filter; policy accept;
    udp sport {sip.RTP_PORTS[0]}-{sip.RTP_PORTS[1]} numgen random mod 100 < 3 drop
  }}
}}
"""


def call_tuples(topo, deadline_s: float = 25) -> list[tuple[int, str, str, int, int]]:
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


@contextlib.contextmanager
def impaired(topo, name: str, seconds: int, kind: int) -> Iterator[None]:
    """The condition's impairment on the lab for one call, removed afterwards. Each kind
    of call has its own iperf3 servers: a server still winding down the previous call's
    killed test refuses the next one ("busy"), which left the second call unloaded."""
    topo.exec("router", "conntrack -F", check=False)
    load = None
    if name == "lan-loss":
        topo.nft("phone", LOSS_RULES)
    elif name == "lan-jitter":
        for cmd in ("qdisc replace dev eth0 root handle 1: htb default 1",
                    "class add dev eth0 parent 1: classid 1:1 htb rate 2mbit",
                    "qdisc add dev eth0 parent 1:1 pfifo limit 40"):
            topo.exec("phone", "tc " + cmd)
        load = topo.popen("phone", bulk.client_cmd(FAR4, bulk.UP_PORT + 10 * kind,
                                                   seconds + 6, False))
    elif name == "bloat-down":
        load = topo.popen("phone", bulk.client_cmd(FAR4, bulk.DOWN_PORT + 10 * kind,
                                                   seconds + 6, True))
    try:
        time.sleep(2 if load else 0.5)
        yield
    finally:
        if load:
            load.kill()
        topo.exec("phone", "nft delete table inet vqq_loss", check=False)
        topo.exec("phone", "tc qdisc del dev eth0 root", check=False)


def router_quality(clf: bpf.Classifier, tuples: list, until: subprocess.Popen,
                   timeout: float) -> quality.CallQuality:
    """The router's figures for the call once `until` (the caller) has finished."""
    clf.set_flows(tuples)
    try:
        until.wait(timeout=timeout)
        entries = clf.flow_quality()
    finally:
        clf.set_flows([])
    return quality.call_quality(entries[t] for t in tuples if t in entries)


def baresip_call(topo, raw: Path, name: str, seconds: int, clf: bpf.Classifier) -> dict:
    """A real SIP call; the endpoint's figures from the far end's rtcpsummary line."""
    far_log, phone_log = raw / f"{name}.far.log", raw / f"{name}.phone.log"
    callee = topo.popen("far", sip.callee_cmd(raw / "baresip-far"), stdout=far_log.open("w"),
                        stderr=subprocess.STDOUT)
    try:
        caller = topo.popen("phone", sip.caller_cmd(raw / "baresip-phone", seconds,
                                                    f"sip:far@{FAR4}"),
                            stdout=phone_log.open("w"), stderr=subprocess.STDOUT)
        q = router_quality(clf, call_tuples(topo), caller, seconds + 20)
        time.sleep(1)
    finally:
        callee.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            callee.wait(timeout=5)
    far = sip.parse_rtcpsummary(far_log.read_text(errors="replace")) or {}
    nan = float("nan")
    return {"router": q.as_dict(),
            "far_rx": {"loss_percent": percent(far.get("lost_rx", nan),
                                               far.get("lost_rx", nan)
                                               + far.get("packets_rx", nan)),
                       "jitter_ms": far.get("jitter_rx_ms")},
            "phone_rx": {"loss_percent": percent(far.get("lost_tx", nan),
                                                 far.get("packets_tx", nan)),
                         "jitter_ms": far.get("jitter_tx_ms")}}


def reference(received: list) -> dict[str, float | None]:
    """RFC 3550 loss and jitter of kernel-timestamped packets (quality.RtpReceiver)."""
    if not received:
        return {"loss_percent": None, "jitter_ms": None}
    ref = quality.RtpReceiver(*received[0], 8000)
    for seq, ts, at in received[1:]:
        ref.packet(seq, ts, at)
    return {"loss_percent": percent(ref.lost, ref.expected), "jitter_ms": ref.jitter_ms}


def irtt_stats(path: Path) -> dict[str, Any]:
    """irtt's own loss and mean IPDV per direction (its packets, not RTP)."""
    try:
        st = json.loads(path.read_text())["stats"]
    except (OSError, ValueError, KeyError):
        return {}
    return {"up_loss_percent": st.get("upstream_loss_percent"),
            "down_loss_percent": st.get("downstream_loss_percent"),
            "up_ipdv_ms": (st.get("ipdv_send") or {}).get("mean", 0) / 1e6,
            "down_ipdv_ms": (st.get("ipdv_receive") or {}).get("mean", 0) / 1e6}


def reference_call(topo, raw: Path, name: str, seconds: int, clf: bpf.Classifier) -> dict:
    """bench/rtp_endpoint.py both ways, an AF_PACKET tap on the isp's side of the
    router's WAN link (the upload before the modem's queue), irtt beside it."""
    n, py = seconds * 50, sys.executable
    far = topo.popen("far", [py, str(ENDPOINT), "answer", str(REF_FAR_PORT), str(n)],
                     stdout=subprocess.PIPE, text=True)
    tap = topo.popen("isp", [py, str(ENDPOINT), "tap", ISP_CPE_DEV, str(REF_FAR_PORT),
                             str(seconds + 8)], stdout=subprocess.PIPE, text=True)
    irtt_out = raw / f"{name}.irtt.json"
    irtt = topo.popen("phone", ["irtt", "client", "-i", "20ms", "-l", "172",
                                "-d", f"{seconds}s", "-Q", "-o", str(irtt_out),
                                f"{FAR4}:{IRTT_PORT}"])
    time.sleep(0.3)
    phone = topo.popen("phone", [py, str(ENDPOINT), "call", PHONE4, str(REF_PHONE_PORT), FAR4,
                                 str(REF_FAR_PORT), str(n)], stdout=subprocess.PIPE, text=True)
    try:
        q = router_quality(clf, call_tuples(topo), phone, seconds + 20)
        got = {who: json.loads(p.communicate(timeout=seconds + 20)[0] or "[]")
               for who, p in (("phone", phone), ("far", far), ("tap", tap))}
        irtt.wait(timeout=10)
    finally:
        for p in (far, tap, irtt, phone):
            p.kill()
    return {"router": q.as_dict(), "far_rx": reference(got["far"]),
            "tap_rx": reference(got["tap"]), "phone_rx": reference(got["phone"]),
            "irtt": irtt_stats(irtt_out)}


def percent(lost: float, expected: float) -> float | None:
    return 100.0 * lost / expected if expected == expected and expected > 0 else None


def fmt(v: float | None, unit: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{unit}"


def within(router: float | None, ref: float | None, rel: float, floor: float) -> str:
    """'yes' when router is within rel (fraction) or floor of ref: issue 11's targets."""
    if router is None or ref is None:
        return "-"
    return "yes" if abs(router - ref) <= max(rel * ref, floor) else "**no**"


ROWS = (("egress", "far_rx", "upload (vs far end)"),
        ("egress", "tap_rx", "upload (vs tap past router)"),
        ("ingress", "phone_rx", "download (vs phone)"))


def table(rows: list[dict[str, Any]]) -> str:
    """Router vs each reference of the same call, with the targets (loss ±0.5 pp, jitter
    ±20 % or ±0.5 ms); irtt's figures of the same minute beside the RTP reference."""
    lines = ["| condition | run | direction | endpoint | router loss | endpoint loss | loss ok | "
             "router jitter | endpoint jitter | jitter ok | irtt loss, mean IPDV |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for kind in ("baresip", "reference"):
            call = r[kind]
            irtt = call.get("irtt") or {}
            if "error" in call:
                lines.append(f"| {r['condition']} | {r['run']} | - | {kind} | failed: "
                             f"{call['error']} | | | | | | |")
            for name, key, what in ROWS:
                if key not in call:
                    continue
                d, ep = call["router"][name] or {}, call[key]
                way = "up" if name == "egress" else "down"
                irtt_txt = (f"{fmt(irtt.get(f'{way}_loss_percent'), ' %')}, "
                            f"{fmt(irtt.get(f'{way}_ipdv_ms'), ' ms')}" if irtt else "")
                lines.append(
                    f"| {r['condition']} | {r['run']} | {what} | {kind} | "
                    f"{fmt(d.get('loss_percent'), ' %')} | {fmt(ep['loss_percent'], ' %')} | "
                    f"{within(d.get('loss_percent'), ep['loss_percent'], 0, 0.5)} | "
                    f"{fmt(d.get('jitter_ms'), ' ms')} | {fmt(ep['jitter_ms'], ' ms')} | "
                    f"{within(d.get('jitter_ms'), ep['jitter_ms'], 0.2, 0.5)} | {irtt_txt} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, subtitle: str) -> None:
    """Router jitter and loss against each reference's, per condition/direction/run,
    with the target band around the reference (y = x)."""
    import matplotlib
    import matplotlib.patches
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), dpi=110)
    marks = {"far_rx": "o", "tap_rx": "s", "phone_rx": "^"}
    colors = dict(zip(CONDITIONS, ("tab:green", "tab:orange", "tab:red", "tab:blue"),
                      strict=True))
    for ax, metric, rel, floor, unit in ((axes[0], "jitter_ms", 0.2, 0.5, "ms"),
                                         (axes[1], "loss_percent", 0.0, 0.5, "%")):
        pts = []
        for r in rows:
            for kind in ("baresip", "reference"):
                for name, key, _what in ROWS:
                    ref = r[kind].get(key, {}).get(metric)
                    val = (r[kind]["router"][name] or {}).get(metric)
                    if ref is None or val is None:
                        continue
                    pts.append(ref)
                    ax.scatter(ref, val, marker=marks[key], s=36,
                               facecolors=colors[r["condition"]] if kind == "reference"
                               else "none", edgecolors=colors[r["condition"]])
        lo, hi = (min(pts) / 1.5, max(pts) * 1.5) if metric == "jitter_ms" else (0, 1.0)
        hi = max(hi, max(pts, default=0) * 1.15)
        xs = ([lo * (hi / lo) ** (i / 400) for i in range(401)] if metric == "jitter_ms"
              else [lo + i * (hi - lo) / 400 for i in range(401)])
        ax.plot(xs, xs, color="grey", lw=0.8)
        ax.fill_between(xs, [x - max(rel * x, floor) for x in xs],
                        [x + max(rel * x, floor) for x in xs], color="grey", alpha=0.2,
                        label="target band")
        if rel:
            for k in (1 - rel, 1 + rel):
                ax.plot(xs, [k * x for x in xs], color="grey", lw=0.6, ls=":")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        if metric == "jitter_ms":   # 0.03 to 40 ms: log, the band still +-20 % or 0.5 ms
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"endpoint's RFC 3550 figure, {unit}")
        ax.set_ylabel(f"router's figure, {unit}")
        ax.set_title({"jitter_ms": "jitter", "loss_percent": "loss"}[metric])
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=n)
               for n, c in colors.items()]
    handles += [plt.Line2D([], [], ls="", marker=marks[key], color="k", label=w)
                for _, key, w in ROWS]
    handles += [plt.Line2D([], [], ls="", marker="o", mfc="none", color="k",
                           label="hollow: vs baresip; filled: vs kernel-timestamped RTP"),
                matplotlib.patches.Patch(color="grey", alpha=0.2,
                                         label="target: ±20 % (dotted) or ±0.5 ms; ±0.5 pp")]
    axes[0].legend(handles=handles, fontsize=7, loc="upper left")
    fig.suptitle(f"Router (tc-BPF) call quality vs the endpoint's, same call\n{subtitle}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--from-json", type=Path, help="only tabulate/plot an earlier --json")
    args = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.machine())
    machine = (f"{cpu}, {os.cpu_count()} CPUs, "
               f"kernel {platform.release()}; {args.seconds} s calls")
    rows = json.loads(args.from_json.read_text()) if args.from_json else measure(args)
    print(f"machine: {machine}")
    print(table(rows))
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot, machine)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    subprocess.run(["make", "-s", "-C", str(Path(__file__).resolve().parents[1] / "bpf")],
                   check=True)
    cleanup_prefix(PREFIX)
    raw = Path(tempfile.mkdtemp(prefix="vqq-"))
    topo = four_hosts(PREFIX, Line())
    clf = bpf.Classifier(str(raw / "bpffs"), netns=topo.ns("router"))
    rows = []
    try:
        topo.popen("far", ["irtt", "server", "-b", f"{FAR4}:{IRTT_PORT}"])
        for port in (bulk.UP_PORT, bulk.DOWN_PORT):
            for kind in (0, 1):
                topo.popen("far", bulk.server_cmd(port + 10 * kind))
        tone = raw / "tone.wav"
        sip.write_tone(tone, args.seconds + 15)
        sip.write_profile(raw / "baresip-far", "far", FAR4, tone, answer=True)
        sip.write_profile(raw / "baresip-phone", "phone", PHONE4, tone, answer=False)
        clf.attach(ROUTER_WAN_DEV, "egress")
        clf.attach(ROUTER_WAN_DEV, "ingress")
        clf.set_rules(0, False, False, [])   # measure only: no class, no mark
        for run in range(1, args.runs + 1):
            for name in args.conditions.split(","):
                row = {"condition": name, "run": run}
                for i, (kind, call) in enumerate((("baresip", baresip_call),
                                                  ("reference", reference_call))):
                    try:
                        with impaired(topo, name, args.seconds, i):
                            row[kind] = call(topo, raw, f"{name}-{run}-{kind}", args.seconds,
                                             clf)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:   # keep the rest
                        row[kind] = {"error": str(e), "router": {}}
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
    finally:
        clf.close()
        topo.close()
    print(f"raw logs in {raw}")
    return rows


if __name__ == "__main__":
    main()
