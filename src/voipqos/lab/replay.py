"""Replay a real capture's UDP traffic through a namespace router and record conntrack.

lan -- router -- wan (`netns.three_hosts`: fw4-like rules, masquerade, acct=1). The
capture's LAN host becomes the lab's LAN host (same ports); every other address becomes
a lab address on the wan host that keeps the capture's /24 grouping (relays on nearby
addresses stay nearby). Each datagram is sent at its capture time from the matching side
with a payload that starts with the captured payload's first 12 bytes (its RTP/STUN
header, for the tc-BPF observer) and keeps the IP packet length the router counts (an
IPv6 datagram is replayed over IPv4 with 20 more payload bytes). The far side answers to
the NAT address it learnt from the LAN side's packets; a far-end packet before any LAN
packet of its flow is dropped (a NAT router would drop it too). Idle gaps longer than
`max_gap` (captures merged from several sessions) are shortened. The router's
/proc/net/nf_conntrack is read once a second into a snapshot sequence.

One process sends for both sides: sockets are opened inside each namespace with setns(2)
and keep their namespace afterwards, so the timing of both directions comes from one
clock. Only our own namespaces ever see a packet.
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import ipaddress
import json
import os
import socket
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..header_evidence import HEAD_LEN
from .netns import LAN_HOST4, ROUTER_WAN_DEV, WAN_HOST4, Topology, three_hosts
from .replay_pcap import Datagram, read_udp

FAR_NET = "100.64.0.0/10"  # lab addresses of the capture's far hosts (on the wan host)
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

Endpoint = tuple[str, int]


def _skip_addr(addr: str) -> bool:
    """Not a far host a router would forward to: multicast, loopback, link-local and
    broadcast (the capture's netmask is unknown: a .255 IPv4 address is taken as its
    subnet's broadcast, as on the /24 home networks of the corpus)."""
    ip = ipaddress.ip_address(addr)
    return ip.is_multicast or ip.is_loopback or ip.is_unspecified or ip.is_link_local \
        or (ip.version == 4 and addr.endswith(".255"))


@dataclass
class Plan:
    """What is replayed: (time from start, from LAN?, LAN port, far endpoint, payload
    length) per datagram, and the first HEAD_LEN bytes of each payload in `heads` (empty
    for a plan written before heads were kept: then zeros are sent)."""

    lan_host: str
    sends: list[tuple[float, bool, int, Endpoint, int]] = field(default_factory=list)
    far_map: dict[str, str] = field(default_factory=dict)  # capture address -> lab address
    skipped: int = 0  # datagrams not between the LAN host and a far host
    duration: float = 0.0
    heads: list[bytes] = field(default_factory=list)  # one per send, or none at all

    def head(self, i: int) -> bytes:
        return self.heads[i] if self.heads else b""


def plan(datagrams: Iterable[Datagram], lan_host: str, max_gap: float = 10.0,
         max_duration: float = 180.0) -> Plan:
    """Map a capture onto the lab: the LAN host keeps its ports, far hosts get lab
    addresses keeping their /24 neighbourhood, long idle gaps are cut to max_gap."""
    p = Plan(lan_host)
    nets: dict[str, int] = {}
    used: set[str] = set()
    last_ts: float | None = None
    clock = 0.0
    base = ipaddress.ip_network(FAR_NET).network_address
    for d in sorted(datagrams, key=lambda d: d.ts):
        if d.src == lan_host and not _skip_addr(d.dst):
            far, lan_port, far_port, out = d.dst, d.sport, d.dport, True
        elif d.dst == lan_host and not _skip_addr(d.src):
            far, lan_port, far_port, out = d.src, d.dport, d.sport, False
        else:
            p.skipped += 1
            continue
        if far == lan_host:
            p.skipped += 1
            continue
        if last_ts is not None:
            clock += min(max(0.0, d.ts - last_ts), max_gap)
        last_ts = d.ts
        if clock > max_duration:
            break
        if far not in p.far_map:
            ip = ipaddress.ip_address(far)
            net = str(ipaddress.ip_network(f"{far}/{24 if ip.version == 4 else 64}",
                                           strict=False))
            idx = nets.setdefault(net, len(nets))
            host = int(ip) & 0xFF or 1
            while True:
                lab = str(base + (idx << 8) + host)
                if lab not in used:
                    break
                host = host % 254 + 1
            used.add(lab)
            p.far_map[far] = lab
        payload = max(0, d.ip_len - 28)
        p.sends.append((clock, out, lan_port, (p.far_map[far], far_port), payload))
        p.heads.append(d.head)
    p.duration = clock
    return p


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _udp(bind: Endpoint) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(bind)
    s.setblocking(False)
    return s


# a UDP datagram as the router's WAN device saw it: (leaving?, src, sport, dst, dport,
# the payload's first HEAD_LEN bytes)
Wire = tuple[bool, str, int, str, int, bytes]


@dataclass
class Result:
    snapshots: list[tuple[float, list[str]]]
    sent: int
    dropped: int  # far-end packets with no NAT mapping learnt yet
    wan: list[Wire] = field(default_factory=list)  # with tap=True


def _tap() -> socket.socket:
    """A packet socket on the router's WAN device (opened inside its namespace): every
    IPv4 frame leaving or arriving, where the tc-BPF observer sits."""
    # ETH_P_ALL: only those taps see frames leaving (ETH_P_IP ones get arriving only)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE: hold a whole replay
    s.bind((ROUTER_WAN_DEV, 3))
    s.setblocking(False)
    return s


def _tapped(s: socket.socket) -> list[Wire]:
    out: list[Wire] = []
    while True:
        try:
            frame, addr = s.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return out
        ip = frame[14:]  # veth: Ethernet
        if frame[12:14] != b"\x08\x00" or len(ip) < 28 or ip[9] != 17:
            continue
        udp = (ip[0] & 15) * 4
        out.append((addr[2] == socket.PACKET_OUTGOING,
                    str(ipaddress.IPv4Address(ip[12:16])), int.from_bytes(ip[udp:udp + 2], "big"),
                    str(ipaddress.IPv4Address(ip[16:20])),
                    int.from_bytes(ip[udp + 2:udp + 4], "big"),
                    bytes(ip[udp + 8:udp + 8 + HEAD_LEN])))


def replay(p: Plan, prefix: str, speed: float = 1.0, tail: float = 3.0,
           tap: bool = False,
           during: Callable[[Topology], AbstractContextManager[object]] | None = None
           ) -> Result:
    """Send the plan through a fresh lan-router-wan topology; snapshot conntrack each
    second (t=0 before the first packet, up to `tail` s after the last); with `tap`, also
    every UDP datagram the router's WAN device carried (`Result.wan`). `during(topology)`
    is entered just before the first datagram and left after the last snapshot: the
    real daemon running on the lab router while the capture plays."""
    topo = three_hosts(prefix)
    try:
        topo.route("router", f"{FAR_NET} via {WAN_HOST4}")
        far_addrs = sorted({ep[0] for *_, ep, _ in p.sends})
        topo.exec("wan", ["ip", "-batch", "-"], input="".join(
            f"addr add {a}/32 dev lo\n" for a in far_addrs))
        # a process that stays in the router's namespace: /proc/PID/net is its table
        sleeper = topo.popen("router", ["sleep", "100000"])
        ct_path = f"/proc/{sleeper.pid}/net/nf_conntrack"
        deadline = time.monotonic() + 5
        while not os.path.exists(ct_path) and time.monotonic() < deadline:
            time.sleep(0.01)
        own = "/proc/self/ns/net"
        home = os.open(own, os.O_RDONLY)
        lan_socks: dict[int, socket.socket] = {}
        far_socks: dict[Endpoint, socket.socket] = {}
        wan = None
        try:
            if tap:
                _setns(f"/run/netns/{topo.ns('router')}")
                wan = _tap()
            _setns(f"/run/netns/{topo.ns('lan')}")
            for port in sorted({s[2] for s in p.sends}):
                lan_socks[port] = _udp((LAN_HOST4, port))
            _setns(f"/run/netns/{topo.ns('wan')}")
            for ep in sorted({s[3] for s in p.sends}):
                far_socks[ep] = _udp(ep)
        finally:
            _libc.setns(home, CLONE_NEWNET)
            os.close(home)
        with during(topo) if during is not None else nullcontext():
            res = _run(p, lan_socks, far_socks, ct_path, speed, tail)
        if wan is not None:
            res.wan = _tapped(wan)
            wan.close()
        return res
    finally:
        topo.close()


def _read_ct(path: str) -> list[str]:
    with open(path, encoding="ascii", errors="replace") as f:
        return [line.rstrip("\n") for line in f if " udp " in line[:24]]


def _run(p: Plan, lan_socks: dict[int, socket.socket], far_socks: dict[Endpoint, socket.socket],
         ct_path: str, speed: float, tail: float) -> Result:
    learnt: dict[tuple[Endpoint, int], Endpoint] = {}
    snaps: list[tuple[float, list[str]]] = []
    sent = dropped = 0
    start = time.monotonic()
    next_snap = 0
    end = p.duration + tail
    i = 0

    def drain() -> None:
        for ep, s in far_socks.items():
            while True:
                try:
                    data, src = s.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                if len(data) >= HEAD_LEN + 2:
                    learnt[(ep, int.from_bytes(data[HEAD_LEN:HEAD_LEN + 2], "big"))] = src
                else:
                    learnt.setdefault((ep, -1), src)

    while True:
        now = (time.monotonic() - start) * speed
        if now >= next_snap:
            snaps.append((float(next_snap), _read_ct(ct_path)))
            next_snap += 1
            if next_snap > end + 1:
                break
            continue
        if i < len(p.sends) and p.sends[i][0] <= now:
            _, out, lan_port, far, size = p.sends[i]
            payload = _payload(p.head(i), lan_port, size)
            i += 1
            try:
                if out:
                    lan_socks[lan_port].sendto(payload, far)
                    sent += 1
                else:
                    drain()
                    dst = learnt.get((far, lan_port)) or learnt.get((far, -1))
                    if dst is None:
                        dropped += 1
                        continue
                    far_socks[far].sendto(payload, dst)
                    sent += 1
            except OSError:
                dropped += 1
            continue
        due = min(next_snap, p.sends[i][0] if i < len(p.sends) else next_snap)
        drain()
        time.sleep(max(0.0, min((due - now) / speed, 0.002)))
    return Result(snaps, sent, dropped)


def _payload(head: bytes, lan_port: int, size: int) -> bytes:
    """`size` bytes: the captured head (zeros if unknown), then the LAN port, which tells
    the far side which NAT mapping answers to which LAN socket, then zeros."""
    return (head[:HEAD_LEN].ljust(HEAD_LEN, b"\0") + lan_port.to_bytes(2, "big")
            + bytes(max(0, size - HEAD_LEN - 2)))[:size]


def write_plan(path: Path, p: Plan) -> None:
    """The plan as gzip'd text (`lan HOST`, `far CAPTURE LAB`, then one send a line:
    `SECONDS out|in LANPORT FARADDR FARPORT PAYLOAD HEAD`): the capture's timing and sizes
    and each payload's first 12 bytes in hex (`-`: empty) without the rest of the
    payload, enough to replay it again without the pcap."""
    lines = [f"lan {p.lan_host}", f"skipped {p.skipped}", f"duration {p.duration:.6f}",
             *(f"far {a} {b}" for a, b in p.far_map.items()),
             *(f"{t:.6f} {'out' if out else 'in'} {lp} {far[0]} {far[1]} {size}"
               + (f" {p.heads[i].hex() or '-'}" if p.heads else "")
               for i, (t, out, lp, far, size) in enumerate(p.sends))]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


def read_plan(path: Path) -> Plan:
    p = Plan("")
    for line in gzip.decompress(Path(path).read_bytes()).decode().splitlines():
        w = line.split()
        if w[0] == "lan":
            p.lan_host = w[1]
        elif w[0] == "skipped":
            p.skipped = int(w[1])
        elif w[0] == "duration":
            p.duration = float(w[1])
        elif w[0] == "far":
            p.far_map[w[1]] = w[2]
        else:
            p.sends.append((float(w[0]), w[1] == "out", int(w[2]), (w[3], int(w[4])),
                            int(w[5])))
            if len(w) > 6:  # plans written before heads were kept have none
                p.heads.append(b"" if w[6] == "-" else bytes.fromhex(w[6]))
    if p.heads and len(p.heads) != len(p.sends):
        raise ValueError(f"{path}: heads on {len(p.heads)} of {len(p.sends)} sends")
    return p


def write_snapshots(path: Path, snaps: list[tuple[float, list[str]]]) -> None:
    """One text file: a `# t=SECONDS` line before each snapshot's table lines."""
    with open(path, "w") as f:
        for t, lines in snaps:
            f.write(f"# t={t:g}\n")
            f.writelines(line + "\n" for line in lines)


def read_snapshots(path: Path) -> list[tuple[float, list[str]]]:
    out: list[tuple[float, list[str]]] = []
    for line in Path(path).read_text().splitlines():
        if line.startswith("# t="):
            out.append((float(line[4:]), []))
        elif line and out:
            out[-1][1].append(line)
    return out


def media_seconds(p: Plan, flows: Iterable[str]) -> dict[int, int]:
    """Per replay second, packets of the labelled call flows ("LANPORT-FARIP:FARPORT" in
    the capture's addresses): the ground truth of when the call was active."""
    lab = set()
    for f in flows:
        lan_port, _, far = f.partition("-")
        ip, _, port = far.rpartition(":")
        lab_ip = p.far_map.get(ipaddress.ip_address(ip).compressed, "")
        lab.add((int(lan_port), (lab_ip, int(port))))
    per: dict[int, int] = defaultdict(int)
    for t, _, lan_port, far, _ in p.sends:
        if (lan_port, far) in lab:
            per[int(t)] += 1
    return dict(sorted(per.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voipqos-replay", description=__doc__.split("\n")[0])
    ap.add_argument("pcap")
    ap.add_argument("--lan", required=True, help="the capture's LAN host address")
    ap.add_argument("--out", required=True, help="snapshot sequence file to write")
    ap.add_argument("--prefix", default=f"vqr{os.getpid()}-")
    ap.add_argument("--max-gap", type=float, default=10.0)
    ap.add_argument("--max-duration", type=float, default=180.0)
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("voipqos-replay: needs root (network namespaces)", file=sys.stderr)
        return 2
    datagrams, _ = read_udp(a.pcap)
    p = plan(datagrams, ipaddress.ip_address(a.lan).compressed, a.max_gap, a.max_duration)
    res = replay(p, a.prefix)
    write_snapshots(Path(a.out), res.snapshots)
    print(json.dumps({"sent": res.sent, "dropped": res.dropped, "skipped": p.skipped,
                      "snapshots": len(res.snapshots), "duration": round(p.duration, 1),
                      "far_map": p.far_map}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
