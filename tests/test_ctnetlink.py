"""ctnetlink dump: message encoding and decoding without a kernel, then the real thing in
a vqa- router namespace, where it must give exactly the Snapshot entries /proc gives."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

import pytest

from voipqos import ctnetlink as nl
from voipqos.conntrack import Tuple
from voipqos.header_evidence import HeaderCounts
from voipqos.lab import netns

A = nl._attr


def nested(kind: int, *parts: bytes) -> bytes:
    return A(kind | nl.NLA_F_NESTED, b"".join(parts))


def tuple_attr(kind: int, src: str, dst: str, sport: int, dport: int, proto: int = nl.UDP,
               zone: int | None = None) -> bytes:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    base = 3 if fam == socket.AF_INET6 else 1
    parts = [nested(nl.CTA_TUPLE_IP, A(base, socket.inet_pton(fam, src)),
                    A(base + 1, socket.inet_pton(fam, dst))),
             nested(nl.CTA_TUPLE_PROTO, A(nl.CTA_PROTO_NUM, bytes([proto])),
                    A(nl.CTA_PROTO_SRC_PORT, struct.pack(">H", sport)),
                    A(nl.CTA_PROTO_DST_PORT, struct.pack(">H", dport)))]
    if zone is not None:
        parts.append(A(nl.CTA_TUPLE_ZONE, struct.pack(">H", zone)))
    return nested(kind, *parts)


def message(status: int, counters: bool = True, family: int = socket.AF_INET,
            extra: bytes = b"", orig_zone: int | None = None, proto: int = nl.UDP) -> bytes:
    """A CT_NEW body as the kernel sends it (the attributes decode() reads)."""
    lan, far, wan = ("fd77::2", "2001:db8::9", "2001:db8::1") if family == socket.AF_INET6 \
        else ("192.168.77.2", "203.0.113.9", "198.51.100.1")
    body = (struct.pack("=BBH", family, 0, 0)
            + tuple_attr(nl.CTA_TUPLE_ORIG, lan, far, 20000, 4000, proto, orig_zone)
            + tuple_attr(nl.CTA_TUPLE_REPLY, far, wan, 4000, 20000, proto)
            + A(nl.CTA_STATUS, struct.pack(">I", status))
            + A(nl.CTA_TIMEOUT, struct.pack(">I", 119)) + extra)
    if counters:
        for kind, (p, b) in ((nl.CTA_COUNTERS_ORIG, (148, 27824)),
                             (nl.CTA_COUNTERS_REPLY, (147, 27000))):
            body += nested(kind, A(1, struct.pack(">Q", p)), A(2, struct.pack(">Q", b)))
    return body


def decode(body: bytes):
    return nl.decode(memoryview(body), 0, len(body))


def test_decode_assured_udp_with_counters():
    e = decode(message(nl.IPS_SEEN_REPLY | nl.IPS_ASSURED,
                       extra=A(nl.CTA_MARK, struct.pack(">I", 42))))
    assert e.key == ("udp", "192.168.77.2", "203.0.113.9", 20000, 4000, 0)
    assert (e.reply.src, e.reply.dst) == ("203.0.113.9", "198.51.100.1")
    assert (e.orig_packets, e.orig_bytes, e.reply_packets, e.reply_bytes) == (148, 27824,
                                                                            147, 27000)
    assert e.flags == {"ASSURED"} and e.timeout == 119 and e.mark == 42


def test_decode_ipv6_is_compressed_like_proc():
    e = decode(message(nl.IPS_SEEN_REPLY, family=socket.AF_INET6))
    assert (e.family, e.orig.src, e.orig.dst) == (6, "fd77::2", "2001:db8::9")


def test_decode_flags_follow_proc_printing():
    assert decode(message(0)).flags == {"UNREPLIED"}
    offloaded = decode(message(nl.IPS_SEEN_REPLY | nl.IPS_ASSURED | nl.IPS_OFFLOAD))
    assert offloaded.flags == {"OFFLOAD"} and offloaded.timeout == 0  # /proc omits it
    hw = nl.IPS_SEEN_REPLY | nl.IPS_OFFLOAD | nl.IPS_HW_OFFLOAD
    assert decode(message(hw)).flags == {"HW_OFFLOAD"}


def test_decode_accounting_off_and_zones():
    assert decode(message(2, counters=False)).orig_packets is None
    assert decode(message(2, extra=A(nl.CTA_ZONE, struct.pack(">H", 7)))).zone == 7
    assert decode(message(2, orig_zone=9)).zone == 9  # zone-orig only


def test_decode_tcp_state_and_other_protocols():
    info = nested(nl.CTA_PROTOINFO, nested(1, A(1, bytes([3]))))
    e = decode(message(2, proto=nl.TCP, extra=info))
    assert (e.proto, e.state) == ("tcp", "ESTABLISHED")
    assert decode(message(2, proto=132)) is None  # SCTP: not ours


@pytest.mark.parametrize("cut", [4, 20, 60, 100])
def test_truncated_message_raises_a_decode_error(cut):
    with pytest.raises((nl.Malformed, KeyError, IndexError, struct.error)):
        decode(message(2)[:cut])


def test_request_is_a_filtered_dump():
    req = nl.request(socket.AF_INET, nl.TCP, (nl.CTA_PROTO_DST_PORT, 5060))
    assert req[0] == socket.AF_INET  # nfgenmsg first
    top = nl.attr_spans(memoryview(req), 4, len(req))
    assert set(top) == {nl.CTA_TUPLE_ORIG, nl.CTA_FILTER}
    flt = nl.attr_spans(memoryview(req), *top[nl.CTA_FILTER])
    (flags_word,) = struct.unpack_from("=I", req, flt[nl.CTA_FILTER_ORIG_FLAGS][0])
    assert flags_word == nl.FILTER_PROTO_NUM | nl.FILTER_DST_PORT
    assert len(nl.request()) == 4  # unfiltered: nfgenmsg only


def test_lookup_asks_for_the_entry_by_its_reply_tuple():
    req = nl.lookup(Tuple("203.0.113.9", "198.51.100.1", 4000, 20000))
    assert req[:4] == struct.pack("=BBH", socket.AF_INET, 0, 0)
    assert req[4:] == tuple_attr(nl.CTA_TUPLE_REPLY, "203.0.113.9", "198.51.100.1", 4000,
                                 20000)
    top = nl.attr_spans(memoryview(req), 4, len(req))
    assert set(top) == {nl.CTA_TUPLE_REPLY}  # no orig tuple, no dump flag: one entry


def test_reply_hints_are_rtp_flows_per_ipv4_wan_address():
    rtp, stun = HeaderCounts(rtp_in=3), HeaderCounts(stun_out=2, stun_in=2)
    headers = {("203.0.113.9", 4000, 20000): rtp,
               ("203.0.113.9", 3478, 20001): stun,  # STUN only: discovery's
               ("2001:db8::9", 4000, 20002): rtp}  # IPv6: the reply goes to a LAN host
    wans = {"198.51.100.1", "192.0.2.1", "2001:db8:77::1"}
    assert nl.reply_hints(headers, wans) == [
        Tuple("203.0.113.9", "192.0.2.1", 4000, 20000),
        Tuple("203.0.113.9", "198.51.100.1", 4000, 20000)]
    assert nl.reply_hints(None, wans) == nl.reply_hints(headers, ()) == []


# --- the real kernel ------------------------------------------------------------------

COMPARE = """
import json
from voipqos import conntrack, ctnetlink
proc = conntrack.read_proc()
out = {}
for name, kf in (("filtered", True), ("python", False)):
    s = ctnetlink.read_netlink(kernel_filter=kf)
    out[name] = [s.entries == proc.entries, s.parsed, s.malformed, s.lines]
out["proc"] = [sorted(map(list, proc.entries)), proc.malformed]
print(json.dumps(out))
"""
INSERT = [  # (conntrack -I arguments): what /proc and netlink must agree on
    "-p udp -s 10.9.0.1 -d 10.9.0.2 --sport 1000 --dport 2000 -t 100 -u SEEN_REPLY,ASSURED "
    "--mark 5",
    "-p udp -s 10.9.0.1 -d 10.9.0.2 --sport 1001 --dport 2000 -t 100 --zone 3",
    "-p udp -s fd00::1 -d 2001:db8::2 --sport 1000 --dport 2000 -t 100",
    "-p tcp -s 10.9.0.1 -d 10.9.0.2 --sport 40000 --dport 5060 -t 100 --state ESTABLISHED "
    "-u SEEN_REPLY",
    "-p tcp -s fd00::1 -d 2001:db8::2 --sport 5061 --dport 40000 -t 100 --state TIME_WAIT",
    "-p tcp -s 10.9.0.1 -d 10.9.0.2 --sport 40001 --dport 443 -t 100 --state ESTABLISHED",
    "-p icmp -s 10.9.0.1 -d 10.9.0.2 --icmp-type 8 --icmp-code 0 --icmp-id 5 -t 30",
]
SEND = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(25):\n    s.sendto(b'v' * 160, ('{dst}', 4000)); time.sleep(0.02)\n")


@pytest.mark.kernel
def test_netlink_snapshot_equals_proc_in_a_router_namespace():
    with netns.three_hosts(f"vqa{os.getpid() % 100000}n-") as t:
        for args in INSERT:
            t.exec("router", f"conntrack -I {args}")
        sender = t.popen("lan", [sys.executable, "-c", SEND.format(dst=netns.WAN_HOST4)])
        sender.wait(timeout=10)
        time.sleep(0.1)
        out = json.loads(t.exec("router", [sys.executable, "-c", COMPARE]).stdout)
    keys = {tuple(k) for k in out["proc"][0]}
    assert any(k[:3] == ("udp", netns.LAN_HOST4, netns.WAN_HOST4) and k[4] == 4000
               for k in keys)  # the stream through the NAT
    assert ("tcp", "10.9.0.1", "10.9.0.2", 40000, 5060, 0) in keys
    assert ("tcp", "fd00::1", "2001:db8::2", 5061, 40000, 0) in keys
    assert len(keys) == 6 and out["proc"][1] == 0  # 4 UDP (one in zone 3) + 2 SIP TCP
    for name in ("filtered", "python"):
        same, parsed, malformed, _ = out[name]
        assert same and parsed == 6 and malformed == 0, name
    assert out["filtered"][3] == 6  # the kernel sent only what we asked for


# --- the service's poll: only flows that can be calls ----------------------------------

TRACK = """
import dataclasses, json, time
from voipqos import conntrack, ctnetlink
t = ctnetlink.Tracker()
polls = []
for _ in range(14):
    snap = t.poll(time.monotonic())
    polls.append(sorted(map(list, snap.entries)))
    time.sleep(0.25)
proc = conntrack.read_proc().entries
snap = t.poll(time.monotonic())
same = all(dataclasses.replace(e, timeout=0) == dataclasses.replace(proc[k], timeout=0)
           for k, e in snap.entries.items())
print(json.dumps({"polls": polls, "same_as_proc": same, "last": sorted(map(list, snap.entries)),
                  "idle_skipped": snap.skipped}))
"""
IDLE = [  # timeouts well below what a packet would have set: nobody sent for a while
    "-p udp -s 10.9.0.1 -d 10.9.0.2 --sport 1000 --dport 2000 -t 60 -u SEEN_REPLY,ASSURED",
    "-p udp -s 10.9.0.1 -d 10.9.0.2 --sport 1001 --dport 2000 -t 9",
    "-p udp -s fd00::1 -d 2001:db8::2 --sport 1002 --dport 2000 -t 9",
]
FRESH = "-p udp -s 10.9.0.1 -d 10.9.0.2 --sport 1003 --dport 2000 -t 30"  # one packet now
SIP_TCP = ("-p tcp -s 10.9.0.1 -d 10.9.0.2 --sport 40000 --dport 5060 -t 100 "
           "--state ESTABLISHED -u SEEN_REPLY")
STREAMS = ("import socket, sys, time\nsocks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
           " for _ in range(2)]\nend = time.monotonic() + 5\ni = 0\n"
           "while time.monotonic() < end:\n    socks[0].sendto(b'v' * 160, ('{dst}', 4000))\n"
           "    if i % 12 == 0:\n        socks[1].sendto(b'w' * 100, ('{dst}', 4001))\n"
           "    i += 1\n    time.sleep(0.02)\n")


@pytest.mark.kernel
def test_tracker_watches_what_can_be_a_call_and_skips_idle_flows():
    """A one-way 50 pps stream and a 4 pps one (WhatsApp's low rate) are watched from
    their first poll to the last; idle entries never reach detection; a fresh entry with
    no more packets leaves after QUIET_POLLS; TCP on a SIP port stays; the entries are
    /proc's."""
    with netns.three_hosts(f"vqa{os.getpid() % 100000}t-") as t:
        for args in [*IDLE, FRESH, SIP_TCP]:
            t.exec("router", f"conntrack -I {args}")
        sender = t.popen("lan", [sys.executable, "-c", STREAMS.format(dst=netns.WAN_HOST4)])
        time.sleep(0.3)
        out = json.loads(t.exec("router", [sys.executable, "-c", TRACK], timeout=60).stdout)
        sender.wait(timeout=10)
    ports = [{k[4] if k[4] > 2000 else k[3] for k in poll if k[0] == "udp"}
             for poll in out["polls"]]  # the streams' dports, the inserted entries' sports
    assert all({4000, 4001} <= p for p in ports[1:]), ports  # found in the first cycle
    assert not {1000, 1001, 1002} & set().union(*ports)  # idle: never decoded
    assert 1003 in ports[0]  # the fresh entry was looked at ...
    assert ports[-1] == {4000, 4001}  # ... and dropped when it stayed quiet
    assert ["tcp", "10.9.0.1", "10.9.0.2", 40000, 5060, 0] in out["last"]
    assert out["same_as_proc"]
