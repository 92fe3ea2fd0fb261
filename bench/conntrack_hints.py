"""How much sooner a new call's conntrack entry reaches detection with observer hints,
and what the hints cost per poll, next to the no-hint baseline of the same run.

    .venv/bin/python bench/conntrack_hints.py [--sizes 20500:500,60000:30000]
                                              [--hashsize 4096] [--trials 16] [--polls 30]

Root. Per size: a vqa- router namespace with the table of bench/conntrack_poll.py
(inserted over ctnetlink, conntrack hash at --hashsize buckets like a 128-256 MB router)
and one Tracker polled 0.2 s apart (the delay in polls is what matters; the daemon polls
once a second). Delay: a new 50 pps UDP flow starts (sent from the router itself to the
wan host: an entry like a call's, with a reply tuple to the router's WAN address) at a
random point of the discovery cycle; polls until its entry is in the Snapshot, without
hints and, alternating, with its reply tuple as the hint (what the observer's map gives
at the first poll after its first RTP packets). Cost: polls with 0 and with 32 hints
(32 fresh tuples the kernel has no entry for, so all are looked up), interleaved.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conntrack_poll as cp

from voipqos import ctnetlink
from voipqos.conntrack import Tuple
from voipqos.lab.netns import ROUTER_WAN4, WAN_HOST4, three_hosts

GAP_S = 0.2
MAX_POLLS = 30


class Streams:
    """50 pps UDP flows from the router to the wan host, one per local port."""

    def __init__(self) -> None:
        self.socks: dict[int, socket.socket] = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True).start()

    def start(self, port: int) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ROUTER_WAN4, port))
        with self.lock:
            self.socks[port] = s

    def stop(self, port: int) -> None:
        with self.lock:
            self.socks.pop(port).close()

    def _run(self) -> None:
        while True:
            with self.lock:
                for s in self.socks.values():
                    s.sendto(b"v" * 160, (WAN_HOST4, 4000))
            time.sleep(0.02)


def run(trials: int, polls: int) -> dict:
    """Inside the router namespace, after the fill."""
    rng = random.Random(7)
    tracker, streams = ctnetlink.Tracker(), Streams()
    for _ in range(12):  # two cycles: the slice has adapted to the table
        tracker.poll(time.monotonic())
        time.sleep(GAP_S)
    cost: dict[int, list[float]] = {0: [], 32: []}
    ghost, began = 50000, time.monotonic()
    for i in range(2 * polls):
        n = 32 if i % 2 else 0
        hints = [Tuple("192.0.2.1", ROUTER_WAN4, 9, ghost + j) for j in range(n)]
        ghost += n
        t0 = time.perf_counter()
        tracker.poll(time.monotonic(), hints)
        cost[n].append((time.perf_counter() - t0) * 1000)
        time.sleep(GAP_S)
    interval = (time.monotonic() - began) / (2 * polls)  # poll to poll, sleep included
    delay: dict[str, list[int]] = {"none": [], "hint": []}
    for trial in range(2 * trials):
        for _ in range(rng.randrange(5)):  # a random point of the cycle
            tracker.poll(time.monotonic())
            time.sleep(GAP_S)
        mode, port = ("hint" if trial % 2 else "none"), 42000 + trial
        reply = Tuple(WAN_HOST4, ROUTER_WAN4, 4000, port)
        streams.start(port)
        time.sleep(0.05)
        k = 0
        while k < MAX_POLLS:
            k += 1
            snap = tracker.poll(time.monotonic(), [reply] if mode == "hint" else ())
            if any(e.reply == reply for e in snap.entries.values()):
                break
            time.sleep(GAP_S)
        delay[mode].append(k)
        streams.stop(port)
    return {"cycle_polls": (tracker.cycle_s or 0) / interval, "slice_ms": tracker.slice_s * 1000,
            "cost": {n: [statistics.median(v), statistics.fmean(v), max(v)]
                     for n, v in cost.items()},
            "delay": {m: [statistics.median(v), statistics.fmean(v), max(v)]
                      for m, v in delay.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20500:500,60000:30000")
    ap.add_argument("--hashsize", type=int, default=cp.ROUTER_BUCKETS)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--polls", type=int, default=30)
    ap.add_argument("--child", action="store_true")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run(a.trials, a.polls)))
        return
    print(cp.machine())
    me = [sys.executable, __file__, "--trials", str(a.trials), "--polls", str(a.polls)]
    fill = [sys.executable, cp.__file__, "--child", "fill"]
    with cp.router_hash(a.hashsize) as before:
        print(f"router namespace, conntrack hash {a.hashsize} buckets (this VM: {before}); "
              f"polls {GAP_S} s apart")
        for n, udp in (map(int, s.split(":")) for s in a.sizes.split(",")):
            with three_hosts("vqa-hints") as t:
                t.exec("router", [*fill, "--n", str(n), "--udp", str(udp)], timeout=300)
                r = json.loads(t.exec("router", [*me, "--child"], timeout=900)
                               .stdout.splitlines()[-1])
            print(f"  table {n}:{udp}  discovery cycle {r['cycle_polls']:.1f} polls, "
                  f"slice {r['slice_ms']:.1f} ms")
            for k, label in (("0", "poll, no hints  "), ("32", "poll, 32 hints  ")):
                p50, mean, worst = r["cost"][k]
                print(f"    {label} p50 {p50:6.2f}  mean {mean:6.2f}  max {worst:6.2f} ms")
            for k, label in (("none", "new flow found, no hint "),
                             ("hint", "new flow found, hinted  ")):
                p50, mean, worst = r["delay"][k]
                print(f"    {label} after p50 {p50:.0f}  mean {mean:.1f}  max {worst} polls")


if __name__ == "__main__":
    main()
