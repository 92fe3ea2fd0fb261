"""The classifier on a real path: lan -- router -- wan, NAT and conntrack on the router.

A small HTB (voice 1:10, default 1:20) built with tc in the test stands in for the
profile; the classifier sets skb->priority = 1:10 for the call's packets on the router's
wan0 egress, and on wan0 ingress ahead of the mirred redirect into an IFB. Packets are
captured on the far host with tcpdump -v (DSCP, IPv4 header checksum).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voipqos import bpf, bpf_syscall, conntrack, quality
from voipqos.lab import netns
from voipqos.lab.netns import run

PREFIX = f"vqb{os.getpid() % 100000}-"  # unique: a second run at once
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bpf"
VOICE_CLASS = 0x00010010
N = 20

pytestmark = pytest.mark.kernel

SEND = """
import socket, sys, time
src, sport, dst, dport, tos, n = sys.argv[1:]
v6 = ":" in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP,
             socket.IPV6_TCLASS if v6 else socket.IP_TOS, int(tos))
s.bind((src, int(sport)))
for _ in range(int(n)):
    s.sendto(b"v" * 160, (dst, int(dport)))
    time.sleep(0.002)
"""


@pytest.fixture(scope="module")
def obj() -> Path:
    run(["make", "-s", "-C", str(ROOT / "bpf"), f"OUT={OUT}"])
    return OUT / "voipqos-bpfel.o"


@pytest.fixture
def topo() -> Iterator[netns.Topology]:
    with netns.three_hosts(PREFIX + "n") as t:
        for short in ("lan", "wan"):  # real UDP checksums on the wire
            t.exec(short, "ethtool -K eth0 tx off", check=False)
        yield t


def htb(t: netns.Topology, dev: str) -> None:
    for cmd in (f"qdisc add dev {dev} root handle 1: htb default 20",
                f"class add dev {dev} parent 1: classid 1:1 htb rate 100mbit",
                f"class add dev {dev} parent 1:1 classid 1:10 htb rate 5mbit ceil 100mbit prio 0",
                f"class add dev {dev} parent 1:1 classid 1:20 htb rate 5mbit ceil 100mbit prio 1",
                f"qdisc add dev {dev} parent 1:10 pfifo limit 100",
                f"qdisc add dev {dev} parent 1:20 pfifo limit 100"):
        t.exec("router", "tc " + cmd)


def class_packets(t: netns.Topology, dev: str) -> dict[str, int]:
    """HTB class -> packets sent (tc 6.1 prints no JSON for htb classes)."""
    text = t.exec("router", f"tc -s class show dev {dev}").stdout
    return {m[1]: int(m[2]) for m in re.finditer(r"class htb (\S+) .*\n Sent \d+ bytes (\d+) pkt",
                                                 text)}


def direct_packets(t: netns.Topology, dev: str) -> int:
    return int(re.search(r"direct_packets_stat (\d+)",
                         t.exec("router", f"tc -s qdisc show dev {dev}").stdout)[1])


def send(t: netns.Topology, host: str, src: str, sport: int, dst: str, dport: int,
         n: int = N, tos: int = 0x01) -> None:
    t.exec(host, [sys.executable, "-c", SEND, src, str(sport), dst, str(dport), str(tos), str(n)])


class Capture:
    """tcpdump -v on a host's eth0; packets as (sport, dport, tos byte, checksum ok)."""

    def __init__(self, t: netns.Topology, host: str, count: int) -> None:
        self.proc = t.popen(host, ["timeout", "15", "tcpdump", "-i", "eth0", "-n", "-v", "-l",
                                   "--immediate-mode", "-c", str(count), "udp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.proc.stderr.readline()  # "listening on eth0 ..."

    def packets(self) -> list[tuple[int, int, int, bool]]:
        out, _ = self.proc.communicate(timeout=20)
        pkts = []
        # IPv4: "IP (tos 0xb9,ECT(1), ttl ..., length 188[, bad cksum ...])\n    a.b.c.d.P > ..."
        # IPv6: "IP6 (class 0xb9, flowlabel ..., hlim ...) addr.P > addr.P: ..."
        for m in re.finditer(r"IP6? \((?:tos|class) (0x[0-9a-f]+)(.*?)\)\s+\S+\.(\d+) > "
                             r"\S+\.(\d+):", out):
            pkts.append((int(m[3]), int(m[4]), int(m[1], 16), "bad cksum" not in m[2]))
        return pkts


def call_tuples(t: netns.Topology, sport: int) -> list[tuple[int, str, str, int, int]]:
    """Orig and reply tuples of the router's UDP conntrack entry from the LAN port."""
    snap = conntrack.parse(t.exec("router", "cat /proc/net/nf_conntrack").stdout.splitlines())
    for e in snap.entries.values():
        if e.orig.sport == sport:
            o, r = e.orig, e.reply
            return [(17, o.src, o.dst, o.sport, o.dport), (17, r.src, r.dst, r.sport, r.dport)]
    raise AssertionError(f"no conntrack entry from port {sport}")


def assert_clean(t: netns.Topology, c: bpf.Classifier, pin: Path) -> None:
    for hook in bpf.HOOKS:
        assert t.exec("router", f"tc filter show dev wan0 {hook}").stdout == ""
    assert "clsact" not in t.exec("router", "tc qdisc show dev wan0").stdout
    assert not pin.exists()
    assert str(pin) not in Path("/proc/self/mounts").read_text()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_upload_call_goes_to_voice_class_marked_ef(topo, obj, tmp_path: Path, v6: bool) -> None:
    t = topo
    lan, wan = (netns.LAN_HOST6, netns.WAN_HOST6) if v6 else (netns.LAN_HOST4, netns.WAN_HOST4)
    htb(t, "wan0")
    # the router's own packets (ND, MLD) between the qdisc and its default class go direct
    direct = direct_packets(t, "wan0")
    pin = tmp_path / "bpffs"
    c = bpf.Classifier(str(pin), obj, netns=t.ns("router"))
    try:
        c.attach("wan0", "egress")
        c.set_rules(VOICE_CLASS, True, False, [])
        send(t, "lan", lan, 40000, wan, 5004, n=1)  # the call's first packet: conntrack entry
        c.set_flows(call_tuples(t, 40000))
        cap = Capture(t, "wan", 2 * N)
        send(t, "lan", lan, 40000, wan, 5004)
        send(t, "lan", lan, 40001, wan, 5005)
        pkts = cap.packets()
        voice = [p for p in pkts if p[1] == 5004]
        other = [p for p in pkts if p[1] == 5005]
        assert len(voice) == N and len(other) == N
        assert all(tos == 0xB9 and ok for _, _, tos, ok in voice)  # EF, ECT(1) kept
        assert all(tos == 0x01 and ok for _, _, tos, ok in other)
        classes = class_packets(t, "wan0")
        assert classes["1:10"] >= N and classes["1:20"] >= N
        assert direct_packets(t, "wan0") == direct  # the classifier never gives 1:0
        assert c.counters()["voice"]["packets"] == N
    finally:
        c.close()
    assert_clean(t, c, pin)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_download_through_ifb_goes_to_voice_class(topo, obj, tmp_path: Path, v6: bool) -> None:
    """Ingress clsact on wan0: our filter (pref 1) runs before the u32 mirred redirect,
    and skb->priority survives the redirect into the IFB's HTB."""
    t = topo
    lan, wan = (netns.LAN_HOST6, netns.WAN_HOST6) if v6 else (netns.LAN_HOST4, netns.WAN_HOST4)
    # the lab masquerades both families: the far end answers the router's WAN address
    wan_side = netns.ROUTER_WAN6 if v6 else netns.ROUTER_WAN4
    t.exec("router", "ip link add ifb0 type ifb")
    t.exec("router", "ip link set ifb0 up")
    htb(t, "ifb0")
    direct = direct_packets(t, "ifb0")  # as above: set-up's own packets
    pin = tmp_path / "bpffs"
    c = bpf.Classifier(str(pin), obj, netns=t.ns("router"))
    try:
        c.attach("wan0", "ingress")
        t.exec("router", "tc filter add dev wan0 ingress pref 10 protocol all u32 match u32 0 0 "
                         "action mirred egress redirect dev ifb0")
        c.set_rules(VOICE_CLASS, True, False, [])
        for sport, dport in ((40000, 5004), (40001, 5005)):  # LAN opens both flows
            send(t, "lan", lan, sport, wan, dport, n=1)
        c.set_flows(call_tuples(t, 40000))
        cap = Capture(t, "lan", 2 * N)
        send(t, "wan", wan, 5004, wan_side, 40000)
        send(t, "wan", wan, 5005, wan_side, 40001)
        pkts = cap.packets()
        voice = [p for p in pkts if p[0] == 5004]
        other = [p for p in pkts if p[0] == 5005]
        assert len(voice) == N and len(other) == N
        assert all(tos == 0xB9 and ok for _, _, tos, ok in voice)
        assert all(tos == 0x01 and ok for _, _, tos, ok in other)
        classes = class_packets(t, "ifb0")
        assert classes["1:10"] >= N and classes["1:20"] >= N
        assert direct_packets(t, "ifb0") == direct
    finally:
        t.exec("router", "tc filter del dev wan0 ingress pref 10", check=False)
        c.close()
    assert_clean(t, c, pin)


def test_restart_adopts_pins_and_filters(topo, obj, tmp_path: Path) -> None:
    """A daemon killed with the classifier on: the next one reuses the pinned maps,
    replaces (not duplicates) the filter, reconciles the flow table and cleans up."""
    t = topo
    pin = tmp_path / "bpffs"
    pin.mkdir()
    run(["mount", "-t", "bpf", "bpf", str(pin)])
    try:
        old = bpf.Classifier(str(pin), obj, netns=t.ns("router"))
        old.attach("wan0", "egress")
        old.set_flows([(17, "192.0.2.1", "192.0.2.2", 1, 2), (17, "192.0.2.1", "192.0.2.2", 3, 4)])
        # no close(): the process died
        new = bpf.Classifier(str(pin), obj, netns=t.ns("router"))
        new.attach("wan0", "egress")
        filters = t.exec("router", "tc filter show dev wan0 egress").stdout
        assert filters.count("voipqos_eth") == 1
        new.set_flows([(17, "192.0.2.1", "192.0.2.2", 3, 4), (17, "2001:db8::1", "::1", 5, 6)])
        keys = set(bpf_syscall.map_keys(new._fd("voipqos_flows"), 40))
        assert keys == {new.maps.flow_key((17, "192.0.2.1", "192.0.2.2", 3, 4)),
                        new.maps.flow_key((17, "2001:db8::1", "::1", 5, 6))}
        new.detach("wan0", "egress")  # never attached by `new` in its own right: still ours
        assert t.exec("router", "tc filter show dev wan0 egress").stdout == ""
        new.close()
        assert not (pin / "tc").exists()
        old._fds.clear()  # its fds belong to a dead process in real life
    finally:
        run(["umount", str(pin)], check=False)


def test_pins_of_another_version_are_replaced(topo, obj, tmp_path: Path) -> None:
    """A crashed older daemon left maps with another layout pinned (here the flow table
    with 1-byte values, as before call quality): tc could not reuse them, so they are
    unpinned and the attach works."""
    t = topo
    pin = tmp_path / "bpffs"
    pin.mkdir()
    run(["mount", "-t", "bpf", "bpf", str(pin)])
    try:
        (pin / "tc" / "globals").mkdir(parents=True)
        run(["bpftool", "map", "create", str(pin / "tc/globals/voipqos_flows"), "type", "hash",
             "key", "40", "value", "1", "entries", "1024", "name", "voipqos_flows"])
        c = bpf.Classifier(str(pin), obj, netns=t.ns("router"))
        try:
            c.attach("wan0", "egress")
            c.set_flows([(17, "192.0.2.1", "192.0.2.2", 1, 2)])
            info = bpf_syscall.map_info(c._fd("voipqos_flows"))
            assert info.value_size == c.maps.size("voipqos_flows", "value")
        finally:
            c.close()
    finally:
        run(["umount", str(pin)], check=False)


def test_user_filters_and_qdiscs_are_left_alone(topo, obj, tmp_path: Path) -> None:
    t = topo
    t.exec("router", "tc qdisc add dev wan0 clsact")
    t.exec("router", "tc filter add dev wan0 egress pref 1 protocol ip u32 match u32 0 0 "
                     "classid 1:1")
    c = bpf.Classifier(str(tmp_path / "bpffs"), obj, netns=t.ns("router"))
    try:
        with pytest.raises(bpf.BpfError, match="pref 1 holds another filter"):
            c.attach("wan0", "egress")
        c.attach("wan0", "ingress")  # the user's clsact is used, and kept on detach
    finally:
        c.close()
    assert "u32" in t.exec("router", "tc filter show dev wan0 egress").stdout
    assert t.exec("router", "tc filter show dev wan0 ingress").stdout == ""
    assert "clsact" in t.exec("router", "tc qdisc show dev wan0").stdout


def test_ingress_qdisc_is_used_for_ingress_but_has_no_egress(topo, obj, tmp_path: Path) -> None:
    t = topo
    t.exec("router", "tc qdisc add dev wan0 handle ffff: ingress")
    c = bpf.Classifier(str(tmp_path / "bpffs"), obj, netns=t.ns("router"))
    try:
        c.attach("wan0", "ingress")
        assert "voipqos_eth" in t.exec("router", "tc filter show dev wan0 ingress").stdout
        with pytest.raises(bpf.BpfError, match="ingress qdisc, not clsact"):
            c.attach("wan0", "egress")
    finally:
        c.close()
    assert t.exec("router", "tc filter show dev wan0 ingress").stdout == ""
    assert "ingress ffff:" in t.exec("router", "tc qdisc show dev wan0").stdout


def test_next_to_sqm_egress_goes_on_the_root_qdisc_and_marks_ef(topo, obj, tmp_path: Path):
    """sqm's download redirect uses a plain `ingress` qdisc, so clsact (and its egress
    hook) cannot be added: the egress classifier goes on the root qdisc instead, where
    the shaper (HTB here, as sqm's simple.qos; cake alike) runs it before choosing."""
    t = topo
    t.exec("router", "tc qdisc add dev wan0 handle ffff: ingress")
    htb(t, "wan0")
    c = bpf.Classifier(str(tmp_path / "bpffs"), obj, netns=t.ns("router"))
    try:
        c.attach("wan0", "egress")
        c.attach("wan0", "ingress")
        c.set_rules(0, True, False, [])  # as the SQM backend: mark only
        send(t, "lan", netns.LAN_HOST4, 40000, netns.WAN_HOST4, 5004, n=1)
        c.set_flows(call_tuples(t, 40000))
        cap = Capture(t, "wan", N)
        send(t, "lan", netns.LAN_HOST4, 40000, netns.WAN_HOST4, 5004)
        assert all(tos == 0xB9 and ok for _, _, tos, ok in cap.packets())
        assert "voipqos_eth" in t.exec("router", "tc filter show dev wan0 parent 1:").stdout
    finally:
        c.close()
    assert "bpf" not in t.exec("router", "tc filter show dev wan0 parent 1:").stdout
    assert "ingress ffff:" in t.exec("router", "tc qdisc show dev wan0").stdout


def test_detach_of_a_vanished_device_is_quiet(topo, obj, tmp_path: Path) -> None:
    t = topo
    t.exec("router", "ip link add vq0 type veth peer name vq1")
    c = bpf.Classifier(str(tmp_path / "bpffs"), obj, netns=t.ns("router"))
    try:
        c.attach("vq0", "egress")
        t.exec("router", "ip link del vq0")
        time.sleep(0.05)
    finally:
        c.close()
    assert c.attached == set()


SINK = """
import socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
c, _ = s.accept()
while c.recv(1 << 16):
    pass
"""

STREAM = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
block = b"x" * (1 << 16)
for _ in range(int(sys.argv[3]) // len(block)):
    c.sendall(block)
c.close()
"""


def nstat(t: netns.Topology, host: str, name: str) -> int:
    """A SNMP counter of the host's namespace (absolute, not since last call)."""
    out = t.exec(host, ["nstat", "-a", "-z", "-j", name]).stdout
    return int(json.loads(out)["kernel"][name])


def test_counters_count_segments_of_gso_packets(topo, obj, tmp_path: Path) -> None:
    """TSO/GSO on along the path: wan0's egress sees 64 KB aggregates, and the
    classifier counts the segments they become on the wire (≈ the sender's TcpOutSegs,
    which counts GSO segments), not the skbs."""
    t = topo
    for host, dev in (("lan", "eth0"), ("router", "lan0"), ("router", "wan0"), ("wan", "eth0")):
        t.exec(host, f"ethtool -K {dev} tso on gso on gro on tx on")
    sink = t.popen("wan", [sys.executable, "-c", SINK, "5201"], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    c = bpf.Classifier(str(tmp_path / "bpffs"), obj, netns=t.ns("router"))
    try:
        c.attach("wan0", "egress")
        c.set_rules(VOICE_CLASS, True, False, [])
        # on the wire: new segments (TcpOutSegs) plus retransmitted ones, counted apart
        segs_before = nstat(t, "lan", "TcpOutSegs") + nstat(t, "lan", "TcpRetransSegs")
        t.exec("lan", [sys.executable, "-c", STREAM, netns.WAN_HOST4, "5201", str(16 << 20)])
        sink.wait(timeout=30)
        segs = nstat(t, "lan", "TcpOutSegs") + nstat(t, "lan", "TcpRetransSegs") - segs_before
        other = c.counters()["other"]
    finally:
        c.close()
    assert segs > (16 << 20) // 1500  # full-sized segments arrived
    assert abs(other["packets"] - segs) <= 0.02 * segs + 10, (other, segs)
    assert other["bytes"] / other["packets"] <= 1514  # counted per segment, not per skb


RTP_STREAM = """
import socket, struct, time

def stream(s, dst, n, skip, ssrc):
    t0 = time.monotonic()
    for i in range(n):
        # 20 ms packets leaving 0-8 ms late, as a busy phone or Wi-Fi would
        time.sleep(max(0.0, t0 + 0.02 * i + (0, 0.008, 0.002, 0.005)[i % 4] - time.monotonic()))
        if i not in skip:
            s.sendto(struct.pack("!BBHII", 0x80, 0, i, 160 * i, ssrc) + bytes(160), dst)
"""

RTP_SEND = RTP_STREAM + """
import sys
src, sport, dst, dport, n, skip = sys.argv[1:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, int(sport)))
s.sendto(b"hello", (dst, int(dport)))            # not RTP: opens the conntrack entry
time.sleep(0.5)
stream(s, (dst, int(dport)), int(n), {int(x) for x in skip.split(",")}, 1111)
"""

RTP_ANSWER = RTP_STREAM + """
import json, sys, threading
n, skip = sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS (not in the socket module)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(3)
print("ready", flush=True)
_, peer = s.recvfrom(100)                         # "hello": answer where it came from
time.sleep(0.5)                                   # as the caller: flows are set by then
threading.Thread(target=stream, args=(s, peer, int(n), {int(x) for x in skip.split(",")},
                                      2222)).start()
got = []
try:
    while True:
        data, anc, _, _ = s.recvmsg(2048, 1024)
        if len(data) < 12 or data[0] >> 6 != 2:
            continue
        sec, nsec = struct.unpack("=qq", anc[0][2][:16])
        seq, ts = struct.unpack_from("!HI", data, 2)
        got.append((seq, ts, sec + nsec / 1e9))
except socket.timeout:
    pass
print(json.dumps(got))
"""


def test_rtp_call_through_nat_quality_per_direction(topo, obj, tmp_path: Path) -> None:
    """A real RTP call across the router (NAT): loss before the router (packets the phone
    never got out) shows on egress, loss on the far side on ingress, and the egress
    jitter matches RFC 3550 computed from the far end's receive timestamps."""
    t = topo
    sink = t.popen("wan", [sys.executable, "-c", RTP_ANSWER, "5004", "100", "7,50,51"],
                   stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    c = bpf.Classifier(str(tmp_path / "bpffs"), obj, netns=t.ns("router"))
    try:
        c.attach("wan0", "egress")
        c.attach("wan0", "ingress")
        c.set_rules(VOICE_CLASS, True, False, [])
        up = t.popen("lan", [sys.executable, "-c", RTP_SEND, netns.LAN_HOST4, "40000",
                             netns.WAN_HOST4, "5004", "150", "5,17,18,40"])
        deadline = time.monotonic() + 5
        while True:  # the conntrack entry of the call, as the daemon would find it
            try:
                tuples = call_tuples(t, 40000)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "no conntrack entry for the call"
                time.sleep(0.05)
        c.set_flows(tuples)   # before the stream starts (the sender waits 0.5 s)
        assert up.wait(timeout=20) == 0
        received = json.loads(sink.communicate(timeout=10)[0].splitlines()[-1])
        entries = c.flow_quality()
    finally:
        c.close()
    q = bpf_quality(entries, tuples)
    assert q.egress is not None and q.ingress is not None
    assert (q.egress.ssrc, q.egress.expected, q.egress.lost) == (1111, 150, 4)
    assert q.egress.packets == 146 and q.egress.duplicates == q.egress.reordered == 0
    # the far end's stream, 3 lost on its way: the internet side
    assert (q.ingress.ssrc, q.ingress.expected, q.ingress.lost) == (2222, 100, 3)
    ref = quality.RtpReceiver(received[3][0], received[3][1], received[3][2], 8000, run=4)
    for seq, ts, at in received[4:]:
        ref.packet(seq, ts, at)
    assert ref.lost == q.egress.lost
    assert q.egress.jitter_ms is not None and ref.jitter_ms > 1
    assert abs(q.egress.jitter_ms - ref.jitter_ms) <= max(0.2 * ref.jitter_ms, 0.5)
    assert q.summary() == "losing 3 % on the Wi-Fi/LAN side; losing 3 % on the internet side"


def bpf_quality(entries, tuples) -> quality.CallQuality:
    return quality.call_quality(entries[tp] for tp in tuples if tp in entries)
