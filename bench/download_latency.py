"""Download delay vs goodput over the IFB default-class settings, next to the profile off.

    sudo .venv/bin/python bench/download_latency.py [--seconds 14] [--repeat 3]
        [--settings pfifo:20@90,pfifo:74@90,...] [--out bench-results/download]

The lab's topology (phone – router – isp – far, the isp's modem at 20 Mbit/s down with a
500 ms FIFO): an unpaced cubic bulk download (iperf3 -R -C cubic) and an irtt voice-like
probe (50 pps, 172 B) in the router's voice class (static voice port). Per setting the
upload is saturated
too (cubic), as in the lab: the download's ACKs queue behind it. Per setting the
router gets the HTB profile of plan.py with its IFB default leaf replaced by
KIND:LIMIT (pfifo / pfifo_head_drop packets, bfifo bytes) and the download shaped at
SHARE % of the line, plan.py's pure-ACK rules kept with +ack. `off` is the same load with
no profile (the baseline), `default` plan.py's own tree, `before` the default before this
bench (pfifo:74, no ACK rules). Printed per setting: p99 added one-way download delay (probe p99
minus the idle line's median) and goodput as % of the shaped rate, median and spread
(min–max) of --repeat runs, interleaved so drifts of the shared CPU hit every setting.
Writes results.json and p99_vs_goodput.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from voipqos import config  # noqa: E402
from voipqos import plan as P  # noqa: E402
from voipqos.lab import bulk, probe  # noqa: E402
from voipqos.lab.netns import cleanup_prefix, require_root  # noqa: E402
from voipqos.lab.topology import FAR4, ROUTER_WAN_DEV, Line, four_hosts  # noqa: E402

PREFIX = "vqp-dl-"
IRTT_PORT = 2112
FEATURES = P.Features(fq_codel=False, cake=False, cls_bpf=False)


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str = ""  # "" = plan.py's own leaf; "off" = no profile
    limit: int = 0
    share: int = 90  # download shaped at this % of the line
    ack: bool = False  # keep plan.py's pure-ACK rules (+ack); `default` always has them

    @classmethod
    def parse(cls, text: str) -> Setting:
        if text == "before":  # the default before bench/download_latency.py: 50 ms, no ACKs
            return cls(text, "pfifo", 74)
        if text.endswith("+ack"):
            s = cls.parse(text[:-4])
            return cls(text, s.kind, s.limit, s.share, True)
        if text in ("off", "default"):
            return cls(text, text if text == "off" else "")
        if text.startswith("default@"):
            return cls(text, "", 0, int(text.split("@")[1]))
        leaf, _, share = text.partition("@")
        kind, _, limit = leaf.partition(":")
        return cls(text, kind, int(limit), int(share or 90))


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                   platform.machine())
    return (f"{cpu}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
            f"load avg at start {os.getloadavg()[0]:.2f}")


def lab_cfg(line: Line, share: int) -> config.Config:
    return config.from_options({"interface": ROUTER_WAN_DEV,
                                "upload": str(line.up_kbit * 95 // 100),
                                "download": str(line.down_kbit * share // 100),
                                "voice_ports": [str(IRTT_PORT)]})


def shape(topo, s: Setting, line: Line) -> None:
    """Apply the setting in the router with the tc CLI (any fifo kind, exactly as set)."""
    ns = topo.ns("router")
    topo.exec("router", f"tc qdisc del dev {ROUTER_WAN_DEV} root", check=False)
    topo.exec("router", f"tc qdisc del dev {ROUTER_WAN_DEV} clsact", check=False)
    topo.exec("router", f"ip link del {P.ifb_name(ROUTER_WAN_DEV)}", check=False)
    if s.kind == "off":
        return
    from pyroute2 import NetNS

    from voipqos.tc import Tc

    tc = Tc(NetNS(ns))
    try:
        want = P.build(lab_cfg(line, s.share), ROUTER_WAN_DEV, FEATURES, "u32")
        if s.kind and not s.ack:  # without plan.py's pure-ACK rules
            acks = (P.ACK4, P.ACK6)
            want = P.Plan(tuple(o for o in want.objects if not (
                isinstance(o, P.FilterGroup) and o.rules in acks)), want.alerts)
        tc.apply(P.diff(want, tc.observe(ROUTER_WAN_DEV)))
    finally:
        tc.close()
    if s.kind:
        topo.exec("router", f"tc qdisc replace dev {P.ifb_name(ROUTER_WAN_DEV)} "
                            f"parent {P.MAJOR:x}:{P.DEFAULT:x} "
                            f"{s.kind} limit {s.limit}")


def one_run(topo, s: Setting, line: Line, seconds: int, out: Path) -> dict:
    shape(topo, s, line)
    topo.exec("router", "conntrack -F", check=False)
    tag = f"{s.name.replace(':', '_').replace('@', '_')}-{time.monotonic_ns()}"
    ip_json, irtt_json = out / f"{tag}.iperf.json", out / f"{tag}.irtt.json"
    load = topo.popen("phone", bulk.client_cmd(FAR4, bulk.DOWN_PORT, seconds, True),
                      stdout=ip_json.open("w"))
    # the upload saturated too, as in the lab: the download's ACKs queue behind it and
    # leave in bunches, so the sender answers with bursts at the far end's speed
    up = topo.popen("phone", bulk.client_cmd(FAR4, bulk.UP_PORT, seconds, False))
    time.sleep(3)  # past slow start: the steady sawtooth is what a call lives with
    p = topo.popen("phone", ["irtt", "client", "-i", "20ms", "-l", "172", "-d",
                             f"{seconds - 4}s", "-Q", "-o", str(irtt_json),
                             f"{FAR4}:{IRTT_PORT}"])
    p.wait(timeout=seconds + 20)
    load.wait(timeout=seconds + 20)
    up.wait(timeout=20)
    samples = probe.samples_from_irtt(json.loads(irtt_json.read_text()))
    down = [x.down for x in samples if x.down is not None]
    gp = bulk.goodput(json.loads(ip_json.read_text() or "{}"))
    shaped = line.down_kbit * s.share / 100
    return {"p99_down": probe.percentile(down, 99) if down else None,
            "lost": sum(x.down is None for x in samples), "n": len(samples),
            "goodput_kbit": gp.get("kbps"), "goodput_pct": 100 * gp.get("kbps", 0) / shaped,
            "retransmits": gp.get("retransmits")}


def plot(rows: list[dict], path: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        if r["p99_added"] is None:
            continue
        ax.errorbar(r["goodput_pct"], r["p99_added"],
                    xerr=[[r["goodput_pct"] - r["goodput_min"]],
                          [r["goodput_max"] - r["goodput_pct"]]],
                    yerr=[[r["p99_added"] - r["p99_min"]], [r["p99_max"] - r["p99_added"]]],
                    fmt="o", capsize=3)
        ax.annotate(r["setting"], (r["goodput_pct"], r["p99_added"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_yscale("log")
    ax.axhline(5, ls="--", c="grey", lw=0.8)
    ax.axvline(85, ls="--", c="grey", lw=0.8)
    ax.set_xlabel("download goodput, % of the shaped rate (off: of 90 % of the line)")
    ax.set_ylabel("p99 added one-way download delay, ms (log)")
    ax.set_title(f"IFB default leaf: delay vs goodput (median, min-max)\n{subtitle}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DEFAULT_SETTINGS = ("off,before,default,pfifo:16,pfifo:24,pfifo:40,pfifo:12+ack,pfifo:16+ack,"
                    "pfifo:24+ack,pfifo:32+ack,pfifo:74+ack,pfifo:20@85+ack,pfifo:24@80+ack,"
                    "pfifo_head_drop:20+ack")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=14)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--settings", default=DEFAULT_SETTINGS)
    ap.add_argument("--out", default="bench-results/download")
    args = ap.parse_args()
    why = require_root()
    if why:
        print(f"download_latency: {why}", file=sys.stderr)
        return 2
    settings = [Setting.parse(t) for t in args.settings.split(",")]
    out = Path(args.out).resolve()
    (out / "raw").mkdir(parents=True, exist_ok=True)
    line = Line()
    cleanup_prefix(PREFIX)
    runs: dict[str, list[dict]] = {s.name: [] for s in settings}
    with four_hosts(PREFIX, line) as topo:
        topo.popen("far", ["irtt", "server", "-b", f"{FAR4}:{IRTT_PORT}"])
        for port in (bulk.DOWN_PORT, bulk.UP_PORT):
            topo.popen("far", bulk.server_cmd(port))
        time.sleep(0.5)
        idle_json = out / "raw" / "idle.irtt.json"
        topo.exec("phone", ["irtt", "client", "-i", "20ms", "-l", "172", "-d", "4s", "-Q",
                            "-o", str(idle_json), f"{FAR4}:{IRTT_PORT}"], timeout=30)
        idle = probe.summarize(probe.samples_from_irtt(json.loads(idle_json.read_text())))
        for i in range(args.repeat):
            for s in settings:
                r = one_run(topo, s, line, args.seconds, out / "raw")
                runs[s.name].append(r)
                print(f"run {i + 1}/{args.repeat} {s.name:<22} p99 down "
                      f"{r['p99_down'] or float('nan'):8.2f} ms  goodput "
                      f"{r['goodput_pct']:5.1f} %  lost {r['lost']}", flush=True)
    base = idle["down"]["p50"]
    rows = []
    for s in settings:
        rs = runs[s.name]
        p99 = [r["p99_down"] - base for r in rs if r["p99_down"] is not None]
        gp = [r["goodput_pct"] for r in rs]
        rows.append({"setting": s.name, "kind": s.kind or "plan.py", "limit": s.limit,
                     "share": s.share,
                     "p99_added": statistics.median(p99) if p99 else None,
                     "p99_min": min(p99, default=None), "p99_max": max(p99, default=None),
                     "goodput_pct": statistics.median(gp), "goodput_min": min(gp),
                     "goodput_max": max(gp)})
    subtitle = (f"20 Mbit/s down, 500 ms modem FIFO, {args.repeat}× {args.seconds} s runs; "
                f"{machine()}")
    doc = {"machine": machine(), "idle_down_p50_ms": base, "rows": rows, "runs": runs,
           "seconds": args.seconds, "repeat": args.repeat}
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    plot(rows, out / "p99_vs_goodput.png", subtitle)
    print(f"\n{subtitle}\nidle line down p50 {base:.3f} ms")
    print(f"{'setting':<22} {'p99 added ms (min-max)':>26} {'goodput % (min-max)':>22}")
    for r in rows:
        p = (f"{r['p99_added']:.2f} ({r['p99_min']:.2f}-{r['p99_max']:.2f})"
             if r["p99_added"] is not None else "-")
        print(f"{r['setting']:<22} {p:>26} "
              f"{r['goodput_pct']:6.1f} ({r['goodput_min']:.1f}-{r['goodput_max']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
