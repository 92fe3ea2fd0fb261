"""The observer program against its specification, header_evidence.py: the same packet
sequences through the real program (BPF_PROG_TEST_RUN, loaded with tc as the daemon
loads it) and through FlowHeaders give the same counters. Also: what never takes an
entry (TCP, QUIC-like, fragments), and the program never changes a packet.
"""

from __future__ import annotations

import itertools
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from test_bpf_prog import (  # noqa: F401  (objects: a fixture)
    TCP,
    UDP,
    eth,
    ipv4,
    ipv6,
    l4,
    objects,
    on_test_devices,
)
from voipqos import bpf_syscall
from voipqos.header_evidence import (
    DNS_PORT,
    IN,
    OUT,
    STUN_COOKIE,
    FlowHeaders,
    HeaderCounts,
    worth_tracking,
)
from voipqos.observer import Observer

NS = f"vqo-prog{os.getpid()}"
UNSPEC = -1
NEAR4, FAR4 = "192.0.2.10", "198.51.100.20"
NEAR6, FAR6 = "2001:db8::10", "2001:db8:1::20"
# the L3 program's test run still takes skb->protocol from bytes 12-13, the first half of
# the source address: 8.0.x.x reads as ETH_P_IP
NEAR_L3, FAR_L3 = "8.0.2.10", "8.0.100.20"
FAR_PORT = 3478

pytestmark = pytest.mark.kernel

_ports = itertools.count(20000)


@pytest.fixture(scope="module")
def prog(objects: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """(observer, fd of its Ethernet program, fd of its L3 program on a tun device)."""
    with on_test_devices(Observer(str(tmp_path_factory.mktemp("pin") / "bpffs"),
                                  objects / "voipqos-bpfel.o", netns=NS)) as x:
        yield x


def frame(direction: int, near_port: int, payload: bytes, proto: int = UDP, v6: bool = False,
          frag: int = 0, link: bool = True, far_port: int = FAR_PORT) -> bytes:
    """A packet of the flow (near, near_port) <-> (far, FAR_PORT) as the WAN device sees
    it leaving (OUT) or arriving (IN)."""
    near, far = far_of(v6, link, near=True), far_of(v6, link)
    src, dst, sport, dport = ((near, far, near_port, far_port) if direction == OUT
                              else (far, near, far_port, near_port))
    body = l4(proto, sport, dport, payload)
    if v6:
        return (eth(0x86DD) if link else b"") + ipv6(src, dst, proto, body)
    return (eth(0x0800) if link else b"") + ipv4(src, dst, proto, body, frag=frag)


def far_of(v6: bool = False, link: bool = True, near: bool = False) -> str:
    pair = (NEAR6, FAR6) if v6 else (NEAR4, FAR4) if link else (NEAR_L3, FAR_L3)
    return pair[0 if near else 1]


def rtp(seq: int, ssrc: int, pt: int = 111, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, 160 * seq,
                       ssrc) + bytes(40)


def stun(kind: int = 0x0001) -> bytes:
    return struct.pack("!HH", kind, 0) + STUN_COOKIE + bytes(12)


def feed(prog, packets: list[tuple[int, bytes]], **kw) -> tuple[HeaderCounts | None,
                                                                 HeaderCounts]:
    """The kernel's counters for one fresh flow after `packets` (direction, payload), and
    the reference model's."""
    o, fd, fd_l3 = prog
    port = next(_ports)
    ref = FlowHeaders()
    for direction, payload in packets:
        data = frame(direction, port, payload, **kw)
        res = bpf_syscall.prog_test_run(fd if kw.get("link", True) else fd_l3, data,
                                        ingress=direction == IN)
        assert res.retval == UNSPEC and res.data == data  # observe only
        ref.packet(direction, payload)
    return o.read().get((far_of(kw.get("v6", False), kw.get("link", True)),
                         kw.get("far_port", FAR_PORT), port)), ref.counts()


def both_ways(payloads: list[bytes]) -> list[tuple[int, bytes]]:
    return [(d, p) for p in payloads for d in (OUT, IN)]


SEQUENCES = {
    "across the sequence wrap": both_ways([rtp(s, 7) for s in range(65530, 65546)]),
    "thinned: gaps of 1..64 chain, 65 does not": both_ways(
        [rtp(s, 7) for s in (0, 1, 3, 67, 131, 196, 197, 197, 196)]),
    "two bundled SSRCs": both_ways([rtp(s // 2, 1 + s % 2, pt=96 + s % 2) for s in range(30)]),
    "three SSRCs take turns in two slots": both_ways(
        [rtp(s // 3, 1 + s % 3) for s in range(30)] + [rtp(10 + s, 1) for s in range(5)]),
    "RTCP (SR/RR/SDES/BYE/APP) is not RTP": both_ways(
        [rtp(s, 7, pt=pt & 0x7F, marker=True) for s in range(10) for pt in range(200, 205)]),
    "marker bit on RTP still counts": both_ways([rtp(s, 7, marker=s % 3 == 0)
                                                 for s in range(20)]),
    "STUN and TURN messages": both_ways([stun(k) for k in (0x0001, 0x0101, 0x0003, 0x0017)]),
    "ChannelData and QUIC-like are neither": both_ways(
        [b"\x40\x00\x00\x40" + bytes(60), b"\xc3\x00\x00\x00\x01" + bytes(60)] * 5),
    "short payloads": both_ways([rtp(s, 7)[:n] for s in range(5) for n in (0, 4, 8, 11, 12)]
                                + [stun()[:n] for n in (7, 8, 9, 11)]),
    "STUN opens the entry, RTP follows": [(OUT, stun()), (IN, stun()),
                                          *both_ways([rtp(s, 9) for s in range(10)])],
    "SSRC 0 and a duplicate packet": both_ways([rtp(s, 0) for s in (5, 6, 6, 7, 7, 8)]),
}


@pytest.mark.parametrize("packets", SEQUENCES.values(), ids=SEQUENCES.keys())
@pytest.mark.parametrize("kind", ["ipv4", "ipv6", "l3"])
def test_counts_equal_the_reference_model(prog, packets, kind: str) -> None:
    kw = {"ipv4": {}, "ipv6": {"v6": True}, "l3": {"link": False}}[kind]
    if kind == "l3":  # a test run wants 14 + 20 bytes at least: the IP header past "eth"
        packets = [(d, p) for d, p in packets if len(p) >= 6]
    got, want = feed(prog, packets, **kw)
    assert got == (want if any(worth_tracking(p) for _, p in packets) else None)


def test_rtp_counts_per_direction(prog) -> None:
    got, want = feed(prog, [(OUT, rtp(s, 1)) for s in range(10)]
                     + [(IN, rtp(s, 2)) for s in range(0, 40, 2)] + [(IN, stun())])
    assert got == want == HeaderCounts(rtp_out=9, rtp_in=19, stun_out=0, stun_in=1)


def test_neither_rtp_nor_stun_takes_no_entry(prog) -> None:
    assert feed(prog, both_ways([b"\xc3\x00\x00\x00\x01" + bytes(60)] * 3))[0] is None
    assert feed(prog, both_ways([rtp(1, 7, pt=200 & 0x7F, marker=True)]))[0] is None


def test_dns_takes_no_entry(prog) -> None:
    """A query ID of 0x8xxx makes a DNS header look like RTP; the router's resolver asks
    from a new port each time: DNS must not fill the map (header_evidence.DNS_PORT)."""
    queries = both_ways([rtp(s, 7) for s in range(5)])
    assert not worth_tracking(queries[0][1], (40000, DNS_PORT))
    assert feed(prog, queries, far_port=DNS_PORT)[0] is None
    assert feed(prog, queries, far_port=DNS_PORT, v6=True)[0] is None


def test_tcp_and_fragments_take_no_entry(prog) -> None:
    """TCP leaves at the protocol check, whatever its payload; IPv4 fragments (the first
    one has MF set) are not read either."""
    assert feed(prog, both_ways([rtp(s, 7) for s in range(5)]), proto=TCP)[0] is None
    assert feed(prog, both_ways([rtp(s, 7) for s in range(5)]), proto=TCP, v6=True)[0] is None
    assert feed(prog, both_ways([rtp(s, 7) for s in range(5)]), frag=0x2000)[0] is None


payloads = st.one_of(
    st.builds(rtp, st.integers(0, 200) | st.integers(65500, 65535), st.integers(1, 3),
              st.sampled_from([0, 8, 96, 111, 72, 76]), st.booleans()),
    st.builds(stun, st.integers(0, 0x3FFF)),
    st.binary(max_size=16),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([OUT, IN]), payloads), max_size=40))
def test_any_sequence_counts_as_the_model(prog, packets) -> None:
    got, want = feed(prog, packets)
    assert got == (want if any(worth_tracking(p) for _, p in packets) else None)
