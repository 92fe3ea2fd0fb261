"""conntrack parser: real kernel lines (tests/data/conntrack, made by capture.py in this
directory's data folder), the variants the kernel prints that this lab cannot produce,
malformed lines, and one live read of a namespace's table."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from voipqos import conntrack
from voipqos.conntrack import MalformedLine, parse, parse_line, read_proc
from voipqos.lab import netns

DATA = Path(__file__).parent / "data" / "conntrack"
WAN4, WAN6 = netns.ROUTER_WAN4, netns.ROUTER_WAN6
LAN4, FAR4 = netns.LAN_HOST4, netns.WAN_HOST4

# real lines from acct-on.txt / acct-off.txt
UDP = ("ipv4     2 udp      17 119 src=192.168.77.2 dst=198.51.100.2 sport=20000 dport=4000 "
       "packets=148 bytes=27824 src=198.51.100.2 dst=198.51.100.1 sport=4000 dport=20000 "
       "packets=148 bytes=27824 [ASSURED] mark=0 zone=0 use=2")
TCP_SIP = ("ipv4     2 tcp      6 431996 ESTABLISHED src=192.168.77.2 dst=198.51.100.2 "
           "sport=53734 dport=5060 packets=4 bytes=241 src=198.51.100.2 dst=198.51.100.1 "
           "sport=5060 dport=53734 packets=3 bytes=171 [ASSURED] mark=0 zone=0 use=2")
UDP_OFF = ("ipv4     2 udp      17 119 src=192.168.77.2 dst=198.51.100.2 sport=20020 dport=4000 "
           "src=198.51.100.2 dst=198.51.100.1 sport=4000 dport=20020 [ASSURED] mark=0 zone=0 "
           "delta-time=3 use=2")


def snap(name: str, **kw) -> conntrack.Snapshot:
    return read_proc(str(DATA / name), **kw)


def by_port(s: conntrack.Snapshot, proto: str, dport: int, family: int = 4) -> conntrack.Entry:
    """The one entry the LAN host opened to dport (capture.py uses each port once)."""
    (e,) = [e for e in s.entries.values() if e.proto == proto and e.orig.dport == dport
            and e.family == family and e.orig.src in (LAN4, netns.LAN_HOST6)]
    return e


# --- real kernel lines ---------------------------------------------------------------

def test_fixture_counts_udp_and_sip_tcp_parsed_rest_skipped():
    s = snap("acct-on.txt")
    # 7 UDP + 2 TCP on 5060 parsed; TCP on 8080/9999 and ICMP/ICMPv6 skipped
    assert (s.lines, s.parsed, s.skipped, s.malformed) == (15, 9, 6, 0)
    assert len(s.entries) == 9 and s.accounting is True


def test_nat_udp_stream_ipv4():
    e = by_port(snap("acct-on.txt"), "udp", 4000)
    assert (e.family, e.proto, e.state) == (4, "udp", "")
    assert (e.orig.src, e.orig.dst, e.orig.sport, e.orig.dport) == (LAN4, FAR4, 20000, 4000)
    assert (e.reply.src, e.reply.dst) == (FAR4, WAN4)  # masqueraded: reply to the WAN address
    assert (e.orig_packets, e.orig_bytes, e.reply_packets, e.reply_bytes) == (148, 27824,
                                                                            148, 27824)
    assert e.flags == {"ASSURED"} and e.timeout == 119 and not e.offloaded
    assert e.key == ("udp", LAN4, FAR4, 20000, 4000, 0)


def test_ipv6_addresses_compressed_both_directions_of_ownership():
    s = snap("acct-on.txt")
    out = by_port(s, "udp", 4000, family=6)
    assert (out.orig.src, out.orig.dst, out.reply.dst) == ("fd77::2", "2001:db8:77::2",
                                                          WAN6)
    inbound = [e for e in s.entries.values() if e.family == 6 and e.orig.sport == 20012]
    assert inbound[0].orig.src == "2001:db8:77::2"  # the far end sent first: it owns it


def test_unreplied_mark_and_zones():
    s = snap("acct-on.txt")
    unreplied = by_port(s, "udp", 4001)
    assert unreplied.flags == {"UNREPLIED"} and unreplied.reply_packets == 0
    assert by_port(s, "udp", 4002).mark == 42
    assert by_port(s, "udp", 4003).zone == 7
    zone_orig = by_port(s, "udp", 4004)  # printed as zone-orig=9, no zone= at the end
    assert zone_orig.zone == 9 and zone_orig.key[-1] == 9


def test_tcp_on_sip_port_has_state_ipv4_and_ipv6():
    s = snap("acct-on.txt")
    for family in (4, 6):
        e = by_port(s, "tcp", 5060, family)
        assert e.state == "ESTABLISHED" and e.flags == {"ASSURED"} and e.timeout == 431996


def test_accounting_off_gives_none_counters_and_delta_time_is_tolerated():
    s = snap("acct-off.txt")
    assert (s.lines, s.parsed, s.skipped, s.malformed) == (6, 3, 3, 0)
    assert s.accounting is False
    for e in s.entries.values():
        assert (e.orig_packets, e.orig_bytes, e.reply_packets, e.reply_bytes) == (None,) * 4
    assert parse_line(UDP_OFF).flags == {"ASSURED"}


def test_sip_ports_are_configurable():
    s = snap("acct-on.txt", sip_ports=(8080,))
    assert {e.orig.dport for e in s.entries.values() if e.proto == "tcp"} == {8080}
    assert snap("acct-on.txt", sip_ports=()).parsed == 7  # UDP only


def test_empty_table():
    s = parse([])
    assert (s.lines, s.parsed, s.skipped, s.malformed, s.accounting) == (0, 0, 0, 0, None)


# --- what the kernel prints that this lab cannot make (ct_seq_show) --------------------

def _vary(line: str, old: str, new: str) -> str:
    assert old in line
    return line.replace(old, new, 1)


VARIANTS = [
    # flow offload: the timeout is not printed and the status flag replaces ASSURED
    ("offload", _vary(_vary(UDP, " 119 ", " "), "[ASSURED]", "[OFFLOAD]"),
     lambda e: e.offloaded and e.flags == {"OFFLOAD"} and e.timeout == 0),
    ("hw offload", _vary(_vary(UDP, " 119 ", " "), "[ASSURED]", "[HW_OFFLOAD]"),
     lambda e: e.offloaded and e.flags == {"HW_OFFLOAD"}),
    ("tcp offload", _vary(_vary(TCP_SIP, " 431996 ", " "), "[ASSURED]", "[OFFLOAD]"),
     lambda e: e.state == "ESTABLISHED" and e.offloaded),
    ("secctx", _vary(UDP, "mark=0 ", "mark=0 secctx=system_u:object_r:unlabeled_t:s0 "),
     lambda e: e.orig_packets == 148),
    ("zone-reply", _vary(_vary(UDP, "sport=4000 dport=20000 ", "sport=4000 dport=20000 "
                               "zone-reply=3 "), "zone=0 ", ""),
     lambda e: e.zone == 3),
    ("no zones compiled", _vary(UDP, "zone=0 ", ""), lambda e: e.zone == 0),
    ("no mark compiled", _vary(UDP, "mark=0 ", ""), lambda e: e.mark == 0),
    ("max mark", _vary(UDP, "mark=0", "mark=4294967295"), lambda e: e.mark == 2**32 - 1),
    ("no status flag", _vary(UDP, "[ASSURED] ", ""), lambda e: e.flags == set()),
    ("future key=value field", _vary(UDP, "use=2", "foo-bar=x use=2"),
     lambda e: e.orig_packets == 148),
    ("counters past 2**32", _vary(UDP, "bytes=27824 s", "bytes=18446744073709551615 s"),
     lambda e: e.orig_bytes == 2**64 - 1),
    ("single spaces", " ".join(UDP.split()), lambda e: e.timeout == 119),
    ("CRLF copy", UDP + "\r", lambda e: e.orig_packets == 148),
]


@pytest.mark.parametrize(("line", "check"), [v[1:] for v in VARIANTS],
                         ids=[v[0] for v in VARIANTS])
def test_kernel_variants_parse(line, check):
    assert check(parse_line(line))
    assert parse([line]).parsed == 1


MALFORMED = [
    ("no use=", UDP.rsplit(" ", 1)[0]),
    ("bad address", _vary(UDP, "src=192.168.77.2", "src=192.168.777.2")),
    ("v6 address in v4 line", _vary(UDP, "src=192.168.77.2", "src=fd77::2")),
    ("port too big", _vary(UDP, "sport=20000", "sport=70000")),
    ("negative counter", _vary(UDP, "packets=148", "packets=-148")),
    ("counters one way", _vary(UDP, "packets=148 bytes=27824 [", "[")),
    ("udp with a state", _vary(UDP, " 119 ", " 119 ESTABLISHED ")),
    ("three tuples", _vary(UDP, "[ASSURED]", "src=1.2.3.4 dst=1.2.3.4 sport=1 dport=2")),
    ("no reply tuple", _vary(UDP, "src=198.51.100.2 dst=198.51.100.1 ", "")),
    ("family number mismatch", _vary(UDP, "ipv4     2", "ipv4     10")),
    ("mark not a number", _vary(UDP, "mark=0", "mark=zero")),
    ("mark past 32 bits", _vary(UDP, "mark=0", "mark=4294967296")),
    ("junk", "hello world"),
]


@pytest.mark.parametrize("line", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_lines_raise_and_are_counted(line):
    with pytest.raises(MalformedLine):
        parse_line(line)
    s = parse([line, UDP])
    assert (s.lines, s.parsed, s.malformed) == (2, 1, 1)


@pytest.mark.parametrize("line", [UDP, TCP_SIP, UDP_OFF])
def test_every_truncation_of_a_real_line_is_malformed(line):
    for cut in range(len(line)):
        s = parse([line[:cut]])
        assert s.parsed == 0, line[:cut]
        assert s.lines == s.malformed + s.skipped


def test_blank_lines_are_not_lines_and_garbage_is_malformed():
    s = parse(["", "   ", UDP, "garbage", "ipv4     2 icmp     1 29 src=1.1.1.1 use=2"])
    assert (s.lines, s.parsed, s.skipped, s.malformed) == (3, 1, 1, 1)


def test_repeated_key_keeps_the_last_line():
    newer = _vary(UDP, "packets=148 bytes=27824 src", "packets=150 bytes=28000 src")
    s = parse([UDP, newer])
    assert s.parsed == 2 and len(s.entries) == 1
    assert next(iter(s.entries.values())).orig_packets == 150


# --- accounting sysctl ---------------------------------------------------------------

def test_accounting_sysctl(tmp_path):
    path = tmp_path / "acct"
    assert conntrack.read_accounting(str(path)) is None
    path.write_text("0\n")
    assert conntrack.read_accounting(str(path)) is False
    conntrack.enable_accounting(str(path))
    assert conntrack.read_accounting(str(path)) is True


# --- the live table of a namespace ----------------------------------------------------

POLL = ("import json, sys; from voipqos.conntrack import read_proc; s = read_proc(); "
        "e = [x for x in s.entries.values() if x.orig.dport == 4000]; "
        "print(json.dumps([s.malformed, [(x.reply.dst, x.orig_packets) for x in e]]))")
SEND = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(100):\n    s.sendto(b'v' * 160, ('{dst}', 4000)); time.sleep(0.02)\n")


@pytest.mark.kernel
def test_read_proc_inside_a_router_namespace():
    with netns.three_hosts(f"vqa{os.getpid() % 100000}c-") as t:
        t.popen("lan", [sys.executable, "-c", SEND.format(dst=FAR4)])
        polls = []
        for _ in range(2):
            time.sleep(0.6)
            out = t.exec("router", [sys.executable, "-c", POLL]).stdout
            polls.append(json.loads(out))
        for p in t.procs:
            p.wait(timeout=10)
    (mal1, [(dst1, pk1)]), (mal2, [(dst2, pk2)]) = polls
    assert mal1 == mal2 == 0 and dst1 == dst2 == WAN4
    assert 0 < pk1 < pk2  # counters grow between polls

