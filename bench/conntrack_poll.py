"""Poll cost of the conntrack readers next to the raw cost of reading the same table.

    .venv/bin/python bench/conntrack_poll.py [--sizes 1000:100,20500:500,60000:30000]
                                             [--repeat 7] [--hashsize 4096] [--no-kernel]

Sizes are TOTAL:UDP entries (~10 % IPv6; UDP idle like a real table: timeouts decayed,
a few fresh). Synthetic: the table in the kernel's exact /proc format written to a file,
timed as `cat FILE >/dev/null`, Python f.read(), our `conntrack.read_proc` poll and
`detect()` over two consecutive polls. Live (root): a vqa- router namespace filled with
the entries (inserted over ctnetlink) plus 4 real voice-like UDP flows (50 pps), timed
as cat of /proc/net/nf_conntrack, f.read(), read_proc, the one-shot ctnetlink dump
(kernel filter) and the service's netlink Tracker per poll (median and max over
--polls polls 0.2 s apart, and how many polls a discovery cycle took). The live part
runs with the conntrack hash at --hashsize buckets (what a 128-256 MB OpenWrt router
gets from the kernel's default sizing; this VM has 262144), restored afterwards. Each
size runs in a fresh process so its peak RSS is its own; the import-only RSS is the
baseline. Times: median of --repeat runs, ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from voipqos import conntrack, ctnetlink  # noqa: E402
from voipqos.detect import DetectConfig, detect  # noqa: E402

TCP_STATES = ("ESTABLISHED",) * 6 + ("TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT", "SYN_SENT")


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), platform.machine())
    return (f"machine: {cpu}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
            f"Python {platform.python_version()}, pyroute2 {metadata.version('pyroute2')}, "
            f"psutil {metadata.version('psutil')}")


UDP_TIMEOUT_STREAM = 120
FRESH = 0.02  # share of UDP entries with a packet in the last seconds


def flows(n: int, udp: int, seed: int = 1
          ) -> list[tuple[int, str, str, str, int, int, str, int, int]]:
    """(family, proto, lan, far, sport, dport, tcp state, packets, timeout) for a home
    router: UDP timeouts as the kernel leaves them (idle flows decayed, FRESH of them
    refreshed by a packet just now), TCP established."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v6 = rng.random() < 0.1
        lan = f"fd00::{i:x}" if v6 else f"192.168.{i >> 8 & 255}.{i & 255 or 1}"
        far = (f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}" if v6 else
               f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
               f"{rng.randrange(1, 255)}")
        is_udp = i < udp
        dport = rng.choice((53, 123, 443, 3478, 19302, 4500, 6881) if is_udp else
                           (443, 443, 443, 80, 993, 5228, 22))
        timeout = ((UDP_TIMEOUT_STREAM - rng.randrange(3)) if rng.random() < FRESH
                   else rng.randrange(5, UDP_TIMEOUT_STREAM - 10)) if is_udp else 431999
        out.append((6 if v6 else 4, "udp" if is_udp else "tcp", lan, far,
                    rng.randrange(1024, 65535), dport,
                    "" if is_udp else rng.choice(TCP_STATES), rng.randrange(1, 100000),
                    timeout))
    rng.shuffle(out)
    return out


def full6(addr: str) -> str:
    """IPv6 written out in full, as the kernel's %pI6 prints it."""
    return ":".join(f"{x:04x}" for x in struct.unpack(">8H", socket.inet_pton(
        socket.AF_INET6, addr)))


def proc_text(rows: list, tick: int = 0) -> str:
    """The rows as ct_seq_show prints them; `tick` advances every counter by 50 packets."""
    lines = []
    for fam, proto, lan, far, sport, dport, state, pk, timeout in rows:
        wan = "2001:db8::1" if fam == 6 else "203.0.113.7"
        if fam == 6:
            lan, far, wan = full6(lan), full6(far), full6(wan)
        pk += 50 * tick
        head = (f"{'ipv4' if fam == 4 else 'ipv6':<8} {2 if fam == 4 else 10} "
                f"{proto:<8} {17 if proto == 'udp' else 6} "
                f"{timeout} {state + ' ' if state else ''}")
        lines.append(f"{head}src={lan} dst={far} sport={sport} dport={dport} packets={pk} "
                     f"bytes={pk * 160} src={far} dst={wan} sport={dport} dport={sport} "
                     f"packets={pk} bytes={pk * 900} [ASSURED] mark=0 zone=0 use=2\n")
    return "".join(lines)


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def read_file(path: str) -> None:
    with open(path) as f:
        f.read()


def cat(*cmd: str) -> None:
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_synthetic(n: int, udp: int, repeat: int) -> dict:
    rows = flows(n, udp)
    with tempfile.TemporaryDirectory(prefix="vqa-bench") as tmp:
        before, after = Path(tmp, "before"), Path(tmp, "after")
        before.write_text(proc_text(rows))
        after.write_text(proc_text(rows, tick=1))
        prev = conntrack.read_proc(str(before), taken_at=0.0)
        cur = conntrack.read_proc(str(after), taken_at=1.0)
        cfg = DetectConfig()
        return {
            "n": n, "udp": len(cur.entries), "MiB": after.stat().st_size / 2**20,
            "cat": median_ms(lambda: cat("cat", str(after)), repeat),
            "f.read": median_ms(lambda: read_file(str(after)), repeat),
            "read_proc": median_ms(lambda: conntrack.read_proc(str(after)), repeat),
            "detect": median_ms(lambda: detect(prev, cur, cfg), repeat),
            "rss": rss_mib(),
        }


def run_live(repeat: int) -> dict:
    """Inside the router namespace: the real table, every way we can read it."""
    proc = conntrack.read_proc()
    nlsnap = ctnetlink.read_netlink()
    # idle entries expire between the two reads: a few may differ, not many
    differ = len(nlsnap.entries.keys() ^ proc.entries.keys())
    assert differ <= len(proc.entries) // 50, f"netlink and /proc disagree on {differ}"
    return {
        "n": proc.lines, "udp": len(proc.entries),
        "cat": median_ms(lambda: cat("cat", conntrack.PROC_PATH), repeat),
        "f.read": median_ms(lambda: read_file(conntrack.PROC_PATH), repeat),
        "read_proc": median_ms(conntrack.read_proc, repeat),
        "netlink dump": median_ms(ctnetlink.read_netlink, repeat),
        "rss": rss_mib(),
    }


def run_tracker(polls: int) -> dict:
    """The service's netlink source polled like the daemon (0.2 s apart here: the cycle
    in polls is what matters, not in seconds)."""
    tracker = ctnetlink.Tracker()
    times, entries, cycles = [], [], []
    for _ in range(polls):
        t0 = time.perf_counter()
        snap = tracker.poll(time.monotonic())
        times.append((time.perf_counter() - t0) * 1000)
        entries.append(len(snap.entries))
        cycles.append(tracker._cycles)
        time.sleep(0.2)
    tracker.close()
    # polls per discovery cycle, over the complete cycles after the first
    starts = [i for i in range(1, polls) if cycles[i] != cycles[i - 1]]
    per = (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) > 1 else float("nan")
    return {"n": 0, "udp": max(entries), "tracker p50": statistics.median(times),
            "tracker mean": statistics.fmean(times), "tracker max": max(times),
            "cycle polls": per, "rss": rss_mib()}


VOICE = """
import socket, sys, time
s = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for i, sock in enumerate(s):
        sock.sendto(b"v" * 160, (sys.argv[2], 30000 + i))
    time.sleep(0.02)
"""


def ct_new(row: tuple, seq: int) -> bytes:
    """An IPCTNL_MSG_CT_NEW request creating one ASSURED entry for `row`."""
    fam, proto, lan, far, sport, dport, state, _, timeout = row
    af = socket.AF_INET6 if fam == 6 else socket.AF_INET
    wan = "2001:db8::1" if fam == 6 else "203.0.113.7"
    num = ctnetlink.UDP if proto == "udp" else ctnetlink.TCP
    a, nest = ctnetlink._attr, ctnetlink.NLA_F_NESTED
    base = 3 if fam == 6 else 1

    def tup(kind: int, src: str, dst: str, sp: int, dp: int) -> bytes:
        return a(kind | nest, a(ctnetlink.CTA_TUPLE_IP | nest,
                                a(base, socket.inet_pton(af, src))
                                + a(base + 1, socket.inet_pton(af, dst)))
                 + a(ctnetlink.CTA_TUPLE_PROTO | nest,
                     a(1, bytes([num])) + a(2, struct.pack(">H", sp))
                     + a(3, struct.pack(">H", dp))))

    body = (struct.pack("=BBH", af, 0, 0)
            + tup(ctnetlink.CTA_TUPLE_ORIG, lan, far, sport, dport)
            + tup(ctnetlink.CTA_TUPLE_REPLY, far, wan, dport, sport)
            + a(ctnetlink.CTA_TIMEOUT, struct.pack(">I", timeout))
            + a(ctnetlink.CTA_STATUS, struct.pack(">I", 0xE)))  # SEEN_REPLY|ASSURED|CONFIRMED
    if state:
        tcp_state = ctnetlink.TCP_STATES.index(state)
        body += a(ctnetlink.CTA_PROTOINFO | nest, a(1 | nest, a(1, bytes([tcp_state]))))
    # IPCTNL_MSG_CT_NEW, NLM_F_REQUEST|NLM_F_CREATE|NLM_F_EXCL: errors still come back
    return struct.pack("=IHHII", 16 + len(body), 1 << 8, 0x1 | 0x400 | 0x200, seq, 0) + body


def fill_table(n: int, udp: int) -> None:
    """Run inside the router namespace: insert the synthetic rows as kernel entries."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ctnetlink.NETLINK_NETFILTER) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        rows = flows(n, udp)
        for i in range(0, n, 100):
            s.send(b"".join(ct_new(r, i + j) for j, r in enumerate(rows[i:i + 100])))
        s.setblocking(False)
        errors = 0
        try:
            while data := s.recv(1 << 16):
                off = 0
                while off < len(data):
                    length, kind = struct.unpack_from("=IH", data, off)
                    errors += kind == ctnetlink.NLMSG_ERROR
                    off += (length + 3) & ~3
        except BlockingIOError:
            pass
        if errors > n // 1000:  # a random tuple may repeat one: a few are fine
            raise SystemExit(f"fill: {errors} inserts refused")


def child(args: list[str]) -> dict:
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def show(label: str, row: dict, base_rss: float) -> None:
    times = "  ".join(f"{k} {v:7.2f}" for k, v in row.items()
                      if k not in ("n", "udp", "MiB", "rss"))
    print(f"{label} n={row['n']:>6} wanted={row['udp']:>5}  {times}  "
          f"peak RSS {row['rss']:.1f} MiB (import-only {base_rss:.1f})", flush=True)


HASHSIZE = "/sys/module/nf_conntrack/parameters/hashsize"
ROUTER_BUCKETS = 4096  # the kernel's default sizing for 128-256 MB of RAM


@contextlib.contextmanager
def router_hash(buckets: int = ROUTER_BUCKETS) -> Iterator[str]:
    """The conntrack hash at `buckets` (global: all namespaces), restored afterwards;
    yields the size it had."""
    with open(HASHSIZE) as f:
        before = f.read().strip()
    try:
        with open(HASHSIZE, "w") as f:
            f.write(str(buckets))
        yield before
    finally:
        with open(HASHSIZE, "w") as f:
            f.write(before)


def live(me: list[str], sizes: list[tuple[int, int]], hashsize: int, polls: int,
         base: float) -> None:
    from voipqos.lab.netns import WAN_HOST4, three_hosts

    with router_hash(hashsize) as before:
        print(f"live, router namespace, conntrack hash {hashsize} buckets (this VM: "
              f"{before}); tracker: 4 real 50 pps UDP flows + the table (ms):")
        for n, udp in sizes:
            with three_hosts("vqa-bench") as t:
                t.exec("router", [*me, "--child", "fill", "--n", str(n), "--udp", str(udp)],
                       timeout=300)
                t.popen("lan", [sys.executable, "-c", VOICE, "600", WAN_HOST4])
                time.sleep(0.5)
                row = json.loads(t.exec("router", [*me, "--child", "live"], timeout=600)
                                 .stdout.splitlines()[-1])
                row["n"] = n
                show("  live   ", row, base)
                row = json.loads(t.exec("router", [*me, "--child", "tracker"], timeout=600)
                                 .stdout.splitlines()[-1])
                row["n"] = n
                show("  tracker", row, base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000:100,5000:300,20500:500,60000:30000")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--polls", type=int, default=40)
    ap.add_argument("--hashsize", type=int, default=ROUTER_BUCKETS)
    ap.add_argument("--no-kernel", action="store_true")
    ap.add_argument("--child", choices=("synthetic", "live", "tracker", "fill", "baseline"))
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--udp", type=int, default=0)
    a = ap.parse_args()
    if a.child == "synthetic":
        print(json.dumps(run_synthetic(a.n, a.udp, a.repeat)))
        return
    if a.child == "live":
        print(json.dumps(run_live(a.repeat)))
        return
    if a.child == "tracker":
        print(json.dumps(run_tracker(a.polls)))
        return
    if a.child == "fill":
        fill_table(a.n, a.udp)
        return
    if a.child == "baseline":
        print(json.dumps({"rss": rss_mib()}))
        return

    me = [sys.executable, __file__, "--repeat", str(a.repeat), "--polls", str(a.polls)]
    sizes = [(int(n), int(u)) for n, u in (x.split(":") for x in a.sizes.split(","))]
    print(machine())
    base = child([*me, "--child", "baseline"])["rss"]
    print("synthetic table file (ms):")
    for n, udp in sizes:
        show("  file", child([*me, "--child", "synthetic", "--n", str(n), "--udp", str(udp)]),
             base)
    if a.no_kernel or os.geteuid() != 0:
        return
    live(me, sizes, a.hashsize, a.polls, base)


if __name__ == "__main__":
    main()
