"""Regenerate the real-kernel conntrack fixtures in this directory (root, iproute2, nft).

    .venv/bin/python tests/data/conntrack/capture.py

Builds the vqa- lan–router–wan namespaces, drives UDP/TCP/ICMP over IPv4 and IPv6
through the router and saves the router's /proc/net/nf_conntrack: `acct-on.txt`
(accounting on; NAT, ASSURED, UNREPLIED, TCP states, SIP over TCP, mark, zones) and
`acct-off.txt` (accounting and timestamps toggled: no counters, `delta-time=`). The same
file is the traffic tool run inside the namespaces (`capture.py udp|udp-echo|tcp|tcp-serve`).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "vqa-cap"
# router rules that give entries a mark, a zone and an original-direction zone
EXTRAS = """
table inet vqa_extras {
  chain pre {
    type filter hook prerouting priority raw; policy accept;
    udp dport 4003 ct zone set 7
    udp dport 4004 ct original zone set 9
  }
  chain forward_mark {
    type filter hook forward priority filter + 1; policy accept;
    udp dport 4002 ct mark set 42
  }
}
"""
# the far end silently drops these SYNs: a TCP entry stuck in SYN_SENT
WAN_DROP = """
table inet vqa_drop {
  chain input {
    type filter hook input priority filter; policy accept;
    tcp dport 9999 drop
  }
}
"""


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def udp(dst: str, port: int, sport: int, pps: float, seconds: float) -> None:
    s = socket.socket(_family(dst), socket.SOCK_DGRAM)
    s.bind(("", sport))
    s.setblocking(False)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.sendto(b"v" * 160, (dst, port))
        time.sleep(1 / pps)


def udp_echo(addr: str, port: int) -> None:
    s = socket.socket(_family(addr), socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


def tcp_serve(addr: str, port: int) -> None:
    s = socket.socket(_family(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    conns = []
    while True:
        c, _ = s.accept()
        c.sendall(b"hello\r\n")
        conns.append(c)  # held open until the client closes or we are killed


def tcp(dst: str, port: int, hold: float) -> None:
    """Connect, talk, then hold (ESTABLISHED) or close at once (TIME_WAIT/CLOSE)."""
    s = socket.socket(_family(dst), socket.SOCK_STREAM)
    s.settimeout(hold + 2)
    try:
        s.connect((dst, port))
        s.sendall(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        s.recv(100)
        time.sleep(hold)
    except OSError:
        time.sleep(hold)
    s.close()


def capture() -> None:
    sys.path.insert(0, str(HERE.parents[2] / "src"))
    from voipqos.lab.netns import LAN_HOST6, WAN_HOST4, WAN_HOST6, three_hosts

    me = str(HERE / "capture.py")
    py = sys.executable

    with three_hosts(PREFIX) as t:
        t.nft("router", EXTRAS)
        t.nft("wan", WAN_DROP)
        for addr in (WAN_HOST4, WAN_HOST6):
            t.popen("wan", [py, me, "udp-echo", addr, "4000"])
            for port in ("8080", "5060"):
                t.popen("wan", [py, me, "tcp-serve", addr, port])
        t.popen("lan", [py, me, "udp-echo", LAN_HOST6, "4000"])
        time.sleep(0.5)

        def run_lan(*args: str) -> None:
            t.popen("lan", [py, me, *args])

        run_lan("udp", WAN_HOST4, "4000", "20000", "50", "3")   # ASSURED stream (>2 s)
        run_lan("udp", WAN_HOST6, "4000", "20002", "50", "3")   # same over IPv6
        run_lan("udp", WAN_HOST4, "4001", "20004", "5", "1")    # no listener: UNREPLIED
        run_lan("udp", WAN_HOST4, "4002", "20006", "5", "1")    # mark=42
        run_lan("udp", WAN_HOST4, "4003", "20008", "5", "1")    # zone=7
        run_lan("udp", WAN_HOST4, "4004", "20010", "5", "1")    # zone-orig=9
        run_lan("tcp", WAN_HOST4, "8080", "10")                 # ESTABLISHED
        run_lan("tcp", WAN_HOST6, "8080", "10")
        run_lan("tcp", WAN_HOST4, "5060", "10")                 # SIP over TCP
        run_lan("tcp", WAN_HOST6, "5060", "10")
        run_lan("tcp", WAN_HOST4, "8080", "0")                  # closed: TIME_WAIT
        run_lan("tcp", WAN_HOST4, "8081", "0")                  # refused: CLOSE
        run_lan("tcp", WAN_HOST4, "9999", "3")                  # dropped: SYN_SENT
        t.popen("wan", [py, me, "udp", LAN_HOST6, "4000", "20012", "50", "3"])  # inbound v6
        t.exec("lan", f"ping -c 2 -i 0.2 {WAN_HOST4}")
        t.exec("lan", f"ping -6 -c 2 -i 0.2 {WAN_HOST6}")
        time.sleep(3.5)
        (HERE / "acct-on.txt").write_text(t.exec("router", "cat /proc/net/nf_conntrack").stdout)

        t.exec("router", "conntrack -F", check=False)
        t.sysctl("router", "net.netfilter.nf_conntrack_acct", "0")
        t.sysctl("router", "net.netfilter.nf_conntrack_timestamp", "1")
        run_lan("udp", WAN_HOST4, "4000", "20020", "50", "3")
        run_lan("udp", WAN_HOST4, "4001", "20022", "5", "1")
        run_lan("tcp", WAN_HOST4, "5060", "10")
        run_lan("tcp", WAN_HOST6, "8080", "10")
        t.exec("lan", f"ping -6 -c 2 -i 0.2 {WAN_HOST6}")
        time.sleep(3.5)
        (HERE / "acct-off.txt").write_text(t.exec("router", "cat /proc/net/nf_conntrack").stdout)


COMMANDS = {
    "udp": lambda a: udp(a[0], int(a[1]), int(a[2]), float(a[3]), float(a[4])),
    "udp-echo": lambda a: udp_echo(a[0], int(a[1])),
    "tcp": lambda a: tcp(a[0], int(a[1]), float(a[2])),
    "tcp-serve": lambda a: tcp_serve(a[0], int(a[1])),
}

if __name__ == "__main__":
    if len(sys.argv) > 1:
        COMMANDS[sys.argv[1]](sys.argv[2:])
    else:
        capture()
