"""Poll cost of the conntrack readers next to the raw cost of reading the same table.

    .venv/bin/python bench/conntrack_poll.py [--sizes 1000,5000,20000] [--repeat 7]
                                             [--no-kernel]

Synthetic: a table in the kernel's exact /proc format (mostly TCP, a few hundred UDP,
~10 % IPv6) written to a file, timed as `cat FILE >/dev/null` (a process, like a shell
poll), Python f.read(), our `conntrack.read_proc` poll and `detect()` over two
consecutive polls. Live (root): a vqa- router namespace filled with N kernel entries
(inserted over ctnetlink, same mix), timed as cat of /proc/net/nf_conntrack, f.read(),
read_proc, the lean ctnetlink dump (kernel filter, and Python-side filter) and
`conntrack -L -p udp`. Each size runs in a fresh process so its peak RSS is its own;
the import-only RSS is printed as the baseline. Times: median of --repeat runs, ms.
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable
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


def udp_count(n: int) -> int:
    return min(300, n // 10)


def flows(n: int, seed: int = 1) -> list[tuple[int, str, str, str, int, int, str, int]]:
    """(family, proto, lan, far, sport, dport, tcp state, packets) for a home router."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v6 = rng.random() < 0.1
        lan = f"fd00::{i:x}" if v6 else f"192.168.{i >> 8 & 255}.{i & 255 or 1}"
        far = (f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(1, 65536):x}" if v6 else
               f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}."
               f"{rng.randrange(1, 255)}")
        udp = i < udp_count(n)
        dport = rng.choice((53, 123, 443, 3478, 19302, 4500) if udp else
                           (443, 443, 443, 80, 993, 5228, 22))
        out.append((6 if v6 else 4, "udp" if udp else "tcp", lan, far,
                    rng.randrange(1024, 65535), dport,
                    "" if udp else rng.choice(TCP_STATES), rng.randrange(1, 100000)))
    rng.shuffle(out)
    return out


def full6(addr: str) -> str:
    """IPv6 written out in full, as the kernel's %pI6 prints it."""
    return ":".join(f"{x:04x}" for x in struct.unpack(">8H", socket.inet_pton(
        socket.AF_INET6, addr)))


def proc_text(rows: list, tick: int = 0) -> str:
    """The rows as ct_seq_show prints them; `tick` advances every counter by 50 packets."""
    lines = []
    for fam, proto, lan, far, sport, dport, state, pk in rows:
        wan = "2001:db8::1" if fam == 6 else "203.0.113.7"
        if fam == 6:
            lan, far, wan = full6(lan), full6(far), full6(wan)
        pk += 50 * tick
        head = (f"{'ipv4' if fam == 4 else 'ipv6':<8} {2 if fam == 4 else 10} "
                f"{proto:<8} {17 if proto == 'udp' else 6} "
                f"{119 if proto == 'udp' else 431999} {state + ' ' if state else ''}")
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


def run_synthetic(n: int, repeat: int) -> dict:
    rows = flows(n)
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
    assert nlsnap.entries == proc.entries, "netlink and /proc disagree"
    return {
        "n": proc.lines, "udp": len(proc.entries),
        "cat": median_ms(lambda: cat("cat", conntrack.PROC_PATH), repeat),
        "f.read": median_ms(lambda: read_file(conntrack.PROC_PATH), repeat),
        "read_proc": median_ms(conntrack.read_proc, repeat),
        "netlink": median_ms(ctnetlink.read_netlink, repeat),
        "netlink_py": median_ms(lambda: ctnetlink.read_netlink(kernel_filter=False), repeat),
        "conntrack -L -p udp": median_ms(lambda: cat("conntrack", "-L", "-p", "udp"),
                                         repeat),
        "rss": rss_mib(),
    }


def ct_new(row: tuple, seq: int) -> bytes:
    """An IPCTNL_MSG_CT_NEW request creating one ASSURED entry for `row`."""
    fam, proto, lan, far, sport, dport, state, _ = row
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
            + a(ctnetlink.CTA_TIMEOUT, struct.pack(">I", 3600))
            + a(ctnetlink.CTA_STATUS, struct.pack(">I", 0xE)))  # SEEN_REPLY|ASSURED|CONFIRMED
    if state:
        tcp_state = ctnetlink.TCP_STATES.index(state)
        body += a(ctnetlink.CTA_PROTOINFO | nest, a(1 | nest, a(1, bytes([tcp_state]))))
    # IPCTNL_MSG_CT_NEW, NLM_F_REQUEST|NLM_F_CREATE|NLM_F_EXCL: errors still come back
    return struct.pack("=IHHII", 16 + len(body), 1 << 8, 0x1 | 0x400 | 0x200, seq, 0) + body


def fill_table(n: int) -> None:
    """Run inside the router namespace: insert the synthetic rows as kernel entries."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, ctnetlink.NETLINK_NETFILTER) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        rows = flows(n)
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
        if errors:
            raise SystemExit(f"fill: {errors} inserts refused")


def child(args: list[str]) -> dict:
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def show(label: str, row: dict, base_rss: float) -> None:
    times = "  ".join(f"{k} {v:7.2f}" for k, v in row.items()
                      if k not in ("n", "udp", "MiB", "rss"))
    print(f"{label} n={row['n']:>6} wanted={row['udp']:>4}  {times}  "
          f"peak RSS {row['rss']:.1f} MiB (import-only {base_rss:.1f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,5000,20000")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-kernel", action="store_true")
    ap.add_argument("--child", choices=("synthetic", "live", "fill", "baseline"))
    ap.add_argument("--n", type=int, default=0)
    a = ap.parse_args()
    if a.child == "synthetic":
        print(json.dumps(run_synthetic(a.n, a.repeat)))
        return
    if a.child == "live":
        print(json.dumps(run_live(a.repeat)))
        return
    if a.child == "fill":
        fill_table(a.n)
        return
    if a.child == "baseline":
        print(json.dumps({"rss": rss_mib()}))
        return

    me = [sys.executable, __file__, "--repeat", str(a.repeat)]
    sizes = [int(s) for s in a.sizes.split(",")]
    print(machine())
    base = child([*me, "--child", "baseline"])["rss"]
    print("synthetic table file (ms):")
    for n in sizes:
        show("  file", child([*me, "--child", "synthetic", "--n", str(n)]), base)
    if a.no_kernel or os.geteuid() != 0:
        return
    from voipqos.lab.netns import three_hosts

    print("live /proc/net/nf_conntrack in a namespace (ms):")
    for n in sizes:
        with three_hosts("vqa-bench") as t:
            t.exec("router", [*me, "--child", "fill", "--n", str(n)], timeout=300)
            row = json.loads(t.exec("router", [*me, "--child", "live"], timeout=600)
                             .stdout.splitlines()[-1])
        show("  live", row, base)


if __name__ == "__main__":
    main()
