#!/usr/bin/env python3
"""What per-call quality adds to a daemon poll while calls run (root; `make -s bpf` first).

Each poll with a call on reads the classifier's flow table once (`flow_quality()`, one
BPF_MAP_LOOKUP_BATCH plus unpacking every entry) and combines each call's entries
(`CallQualities.update`). Printed next to the read the status already makes every poll
from LuCI (`counters()`, one per-CPU lookup), same run, same machine:

    .venv/bin/python bench/call_quality_poll.py [--n 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bpf_classifier import machine

from voipqos import bpf, detect
from voipqos.callquality import CallQualities
from voipqos.lab import netns


def per_call_ms(fn, n: int) -> float:
    """Best of three runs of `n` calls, ms per call."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e3


def calls(k: int) -> list[detect.Call]:
    """`k` calls of two flows (RTP and RTCP), both tuples each, as the detector makes."""
    d = detect.Direction(50.0, 8000.0)
    out = []
    for i in range(k):
        lan = f"192.168.1.{10 + i}"
        tuples = frozenset(t for port in (40000, 40001) for t in (
            (17, lan, "203.0.113.9", port, 20000 + 2 * i),
            (17, "203.0.113.9", "198.51.100.1", 20000 + 2 * i, port + 100 * i)))
        out.append(detect.Call(f"{lan}>203.0.113.9", lan, "203.0.113.9", (), d, d, True, True,
                               tuples))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    with netns.three_hosts("vqq-bench-") as t, tempfile.TemporaryDirectory() as tmp:
        c = bpf.Classifier(str(Path(tmp, "bpffs")), netns=t.ns("router"))
        try:
            c.attach(netns.ROUTER_WAN_DEV, "egress")
            c.set_rules(0x00010010, True, False, [])
            print(machine())
            print(f"counters() (baseline, read by every status call): "
                  f"{per_call_ms(c.counters, args.n):.3f} ms")
            for k in (1, 4, 16):
                running = calls(k)
                c.set_flows(frozenset().union(*(x.tuples for x in running)))
                read = per_call_ms(c.flow_quality, args.n)
                table = c.flow_quality()
                cq = CallQualities()
                update = per_call_ms(lambda r=running, t=table, q=cq: q.update(r, 0.0, t, float),
                                     args.n)
                print(f"{k:2d} call(s), {4 * k:2d} table entries: flow_quality() {read:.3f} ms, "
                      f"CallQualities.update {update:.3f} ms")
        finally:
            c.close()


if __name__ == "__main__":
    main()
