"""The classifier's verdicts on crafted packets (BPF_PROG_TEST_RUN), and its objects.

The program is loaded the way the daemon loads it (tc, in a vqb- namespace, maps pinned
in a private bpffs); each test sets rules and flows, runs frames and reads skb->priority
and the rewritten bytes back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voipqos import bpf, bpf_syscall, quality
from voipqos.lab.netns import run

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bpf"
NS = f"vqbp{os.getpid() % 100000}"  # unique: a second run at once
VOICE = 0x00010010  # 1:10
UNSPEC = -1
UDP, TCP = 17, 6
A4, B4 = "192.0.2.10", "198.51.100.20"
A6, B6 = "2001:db8::10", "2001:db8:1::20"

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def objects() -> Path:
    """Build both objects from the source under test (make is incremental)."""
    run(["make", "-s", "-C", str(ROOT / "bpf"), f"OUT={OUT}"])
    return OUT


# --- crafted frames ------------------------------------------------------------------

def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(ethertype: int, vlans: tuple[int, ...] = ()) -> bytes:
    hdr = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02"
    for tpid in vlans:
        hdr += struct.pack("!HH", tpid, 7)
    return hdr + struct.pack("!H", ethertype)


def l4(proto: int, sport: int, dport: int, payload: bytes = b"x" * 20) -> bytes:
    if proto == TCP:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x10, 1000, 0, 0) + payload
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv4(src: str, dst: str, proto: int, body: bytes, tos: int = 0, frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(body), 1, frag, 64, proto, 0,
                      ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + body


def ipv6(src: str, dst: str, nxt: int, body: bytes, tclass: int = 0) -> bytes:
    first = (6 << 28) | (tclass << 20) | 0x12345
    return struct.pack("!IHBB16s16s", first, len(body), nxt, 64,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + body


def ext(nxt: int, body_len: int = 6) -> bytes:
    """A hop-by-hop / routing / destination options header of (body_len + 2) bytes."""
    return struct.pack("!BB", nxt, (body_len + 2) // 8 - 1) + b"\x01" * body_len


def udp4(sport: int = 40000, dport: int = 5004, tos: int = 0, src: str = A4, dst: str = B4,
         proto: int = UDP) -> bytes:
    return eth(0x0800) + ipv4(src, dst, proto, l4(proto, sport, dport), tos)


def udp6(sport: int = 40000, dport: int = 5004, tclass: int = 0) -> bytes:
    return eth(0x86DD) + ipv6(A6, B6, UDP, l4(UDP, sport, dport), tclass)


def tos_of(frame: bytes, l3: int = 14) -> int:
    if frame[l3] >> 4 == 4:
        return frame[l3 + 1]
    return (struct.unpack_from("!I", frame, l3)[0] >> 20) & 0xFF


# --- the loaded program ----------------------------------------------------------------

@contextlib.contextmanager
def on_test_devices(prog: bpf.TcProgram) -> Iterator[tuple[Any, int, int]]:
    """`prog` (made with netns=its namespace) on the egress of a veth (Ethernet section)
    and of a tun (L3 section) there: (prog, fd of each program for test runs)."""
    ns = prog.netns
    assert ns is not None
    run(["ip", "netns", "del", ns], check=False)
    run(["ip", "netns", "add", ns])
    fds: list[int] = []
    try:
        run(["ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        run(["ip", "-n", ns, "tuntap", "add", "dev", "t0", "mode", "tun"])
        prog.attach("d0", "egress")
        prog.attach("t0", "egress")
        fds += [bpf_syscall.prog_fd_by_id(prog.prog_id(dev, "egress")) for dev in ("d0", "t0")]
        yield prog, fds[0], fds[1]
    finally:
        for fd in fds:
            os.close(fd)
        prog.close()
        run(["ip", "netns", "del", ns], check=False)


@pytest.fixture(scope="module")
def loaded(objects: Path, tmp_path_factory: pytest.TempPathFactory):
    with on_test_devices(bpf.Classifier(str(tmp_path_factory.mktemp("pin") / "bpffs"),
                                        objects / "voipqos-bpfel.o", netns=NS)) as x:
        yield x


@pytest.fixture
def clf(loaded):
    """The Ethernet program with default rules (voice 1:10, EF marking) and no flows."""
    c, fd, _ = loaded
    c.set_rules(VOICE, True, False, [])
    c.set_flows([])

    def go(frame: bytes) -> bpf_syscall.RunResult:
        return bpf_syscall.prog_test_run(fd, frame)
    go.classifier = c  # type: ignore[attr-defined]
    return go


def assert_voice(res: bpf_syscall.RunResult, sent: bytes, ecn: int = 0, l3: int = 14) -> None:
    assert res.retval == UNSPEC
    assert res.priority == VOICE
    assert tos_of(res.data, l3) == (46 << 2) | ecn
    if res.data[l3] >> 4 == 4:
        assert csum(res.data[l3:l3 + 20]) == 0, "IPv4 header checksum"
    # nothing but the DSCP (and IPv4 checksum) changed
    changed = [i for i, (a, b) in enumerate(zip(sent, res.data, strict=True)) if a != b]
    allowed = {l3, l3 + 1} | ({l3 + 10, l3 + 11} if res.data[l3] >> 4 == 4 else set())
    assert set(changed) <= allowed


def assert_other(res: bpf_syscall.RunResult, sent: bytes) -> None:
    assert res.retval == UNSPEC
    assert res.priority == 0
    assert res.data == sent


# --- objects -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "endian"), [("voipqos-bpfel.o", "little"),
                                              ("voipqos-bpfeb.o", "big")])
def test_objects_are_bpf_elf_with_both_sections(objects: Path, name: str, endian: str) -> None:
    header = run(["readelf", "-h", str(objects / name)]).stdout
    assert f"{endian} endian" in header and "Linux BPF" in header
    sections = run(["readelf", "-S", "-W", str(objects / name)]).stdout
    for sec in (" tc ", " tc_l3 ", " .maps ", " .BTF ", " license "):
        assert sec in sections


def test_both_sections_pass_the_verifier(loaded) -> None:
    c, _, _ = loaded
    names = [c._our_filter(dev, ["egress"])["options"]["bpf_name"] for dev in ("d0", "t0")]
    assert names == ["voipqos-bpfel.o:[tc]", "voipqos-bpfel.o:[tc_l3]"]


def test_big_endian_object_is_refused_cleanly_here(objects: Path, tmp_path: Path) -> None:
    c = bpf.Classifier(str(tmp_path / "pin"), objects / "voipqos-bpfeb.o", netns=NS)
    try:
        with pytest.raises(bpf.BpfError, match="tc filter replace"):
            c.attach("d1", "egress")
    finally:
        c.close()
    assert run(["tc", "-n", NS, "qdisc", "show", "dev", "d1"]).stdout.count("clsact") == 0


# --- verdicts ------------------------------------------------------------------------

@pytest.mark.parametrize("ecn", [0, 1, 2, 3])
def test_ipv4_flow_gets_voice_class_and_ef_keeping_ecn(clf, ecn: int) -> None:
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    frame = udp4(tos=ecn | (10 << 2))  # AF11 + ECN in
    assert_voice(clf(frame), frame, ecn)


def test_reversed_tuple_matches_too(clf) -> None:
    """WAN egress after SNAT sees the conntrack reply tuple reversed."""
    clf.classifier.set_flows([(UDP, B4, A4, 5004, 40000)])
    frame = udp4()
    assert_voice(clf(frame), frame)


def test_ipv6_flow_sets_traffic_class_keeping_flow_label(clf) -> None:
    clf.classifier.set_flows([(UDP, A6, B6, 40000, 5004)])
    frame = udp6(tclass=0x01)
    res = clf(frame)
    assert_voice(res, frame, ecn=1)
    assert struct.unpack_from("!I", res.data, 14)[0] & 0xFFFFF == 0x12345


def test_tcp_flow_matches(clf) -> None:
    clf.classifier.set_flows([(TCP, A4, B4, 40000, 5061)])
    frame = udp4(dport=5061, proto=TCP)
    assert_voice(clf(frame), frame)


@pytest.mark.parametrize("frame", [
    udp4(sport=40001), udp4(dport=5005), udp4(src="192.0.2.11"), udp4(proto=TCP), udp6(),
    eth(0x0806) + b"\0" * 28,  # ARP
], ids=["sport", "dport", "addr", "proto", "v6", "arp"])
def test_other_packets_are_untouched(clf, frame: bytes) -> None:
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    assert_other(clf(frame), frame)


def test_static_udp_port_ranges_match_either_port(clf) -> None:
    clf.classifier.set_rules(VOICE, True, False, [(3478, 3479), (10000, 20000)])
    for frame in (udp4(sport=10000, dport=443), udp4(sport=443, dport=20000),
                  udp4(sport=3479, dport=1)):
        assert_voice(clf(frame), frame)
    for frame in (udp4(sport=9999, dport=20001), udp4(sport=15000, proto=TCP)):
        assert_other(clf(frame), frame)


def test_trust_ef(clf) -> None:
    ef = udp4(tos=46 << 2)
    assert_other(clf(ef), ef)
    clf.classifier.set_rules(VOICE, True, True, [])
    res = clf(ef)
    assert res.priority == VOICE and res.data == ef  # already EF: bytes unchanged


def test_no_dscp_mark_sets_only_the_class(clf) -> None:
    clf.classifier.set_rules(VOICE, False, False, [])
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    frame = udp4()
    res = clf(frame)
    assert res.priority == VOICE and res.data == frame


def test_classid_zero_only_marks(clf) -> None:
    """The SQM backend: EF for cake's diffserv, skb->priority left alone."""
    clf.classifier.set_rules(0, True, False, [])
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    res = clf(udp4())
    assert res.priority == 0 and tos_of(res.data) == 46 << 2


@pytest.mark.parametrize("vlans", [(0x8100,), (0x88A8, 0x8100)], ids=["802.1q", "qinq"])
def test_vlan_tagged(clf, vlans: tuple[int, ...]) -> None:
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004), (UDP, A6, B6, 40000, 5004)])
    l3 = 14 + 4 * len(vlans)
    f4 = eth(0x0800, vlans) + ipv4(A4, B4, UDP, l4(UDP, 40000, 5004))
    assert_voice(clf(f4), f4, l3=l3)
    f6 = eth(0x86DD, vlans) + ipv6(A6, B6, UDP, l4(UDP, 40000, 5004))
    assert_voice(clf(f6), f6, l3=l3)


def test_three_vlan_tags_are_not_parsed(clf) -> None:
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    frame = eth(0x0800, (0x88A8, 0x8100, 0x8100)) + ipv4(A4, B4, UDP, l4(UDP, 40000, 5004))
    assert_other(clf(frame), frame)


@pytest.mark.parametrize("chain", [
    [(0, 6)], [(0, 6), (60, 14), (43, 22)], [(51, 10)], [(60, 6)] * 5,
], ids=["hbh", "hbh-dst-rt", "ah", "5-dstopts"])
def test_ipv6_extension_headers_are_skipped(clf, chain: list[tuple[int, int]]) -> None:
    clf.classifier.set_flows([(UDP, A6, B6, 40000, 5004)])
    body, nxt = l4(UDP, 40000, 5004), UDP
    for kind, size in reversed(chain):
        if kind == 51:  # AH: length in 4-byte units minus 2
            body = struct.pack("!BB", nxt, (size + 2) // 4 - 2) + b"\x02" * size + body
        else:
            body = ext(nxt, size) + body
        nxt = kind
    frame = eth(0x86DD) + ipv6(A6, B6, nxt, body)
    assert_voice(clf(frame), frame)


def test_too_many_ipv6_extension_headers_give_no_ports(clf) -> None:
    clf.classifier.set_flows([(UDP, A6, B6, 40000, 5004)])
    body, nxt = l4(UDP, 40000, 5004), UDP
    for _ in range(7):
        body, nxt = ext(nxt) + body, 60
    frame = eth(0x86DD) + ipv6(A6, B6, nxt, body)
    assert_other(clf(frame), frame)


def test_ipv6_fragments(clf) -> None:
    clf.classifier.set_flows([(UDP, A6, B6, 40000, 5004)])

    def frag(offset: int, more: int) -> bytes:
        hdr = struct.pack("!BBHI", UDP, 0, offset << 3 | more, 0xABCD)
        return eth(0x86DD) + ipv6(A6, B6, 44, hdr + l4(UDP, 40000, 5004))
    first = frag(0, 1)
    assert_voice(clf(first), first)
    later = frag(185, 0)  # bytes where ports would be look like the flow's: must not match
    assert_other(clf(later), later)


def test_ipv4_fragments(clf) -> None:
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    first = eth(0x0800) + ipv4(A4, B4, UDP, l4(UDP, 40000, 5004), frag=0x2000)  # MF
    assert_voice(clf(first), first)
    later = eth(0x0800) + ipv4(A4, B4, UDP, l4(UDP, 40000, 5004), frag=185)
    assert_other(clf(later), later)


def test_ipv4_options_are_skipped(clf) -> None:
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    body = l4(UDP, 40000, 5004)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x46, 0, 24 + len(body), 1, 0, 64, UDP, 0,
                      ipaddress.ip_address(A4).packed, ipaddress.ip_address(B4).packed)
    hdr += b"\x01\x01\x01\x00"  # NOP NOP NOP EOL
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    frame = eth(0x0800) + hdr + body
    res = clf(frame)
    assert res.priority == VOICE and csum(res.data[14:38]) == 0


# BPF_PROG_TEST_RUN refuses frames whose ethertype says IP but which are shorter than the
# fixed IP header; behind a VLAN tag it does not look, so cuts inside the header go there.
@pytest.mark.parametrize(("vlan", "cut"), [
    (True, 15), (True, 20), (True, 37), (False, 34), (False, 36), (False, 37),
])
def test_truncated_ipv4_is_other(clf, vlan: bool, cut: int) -> None:
    """Cut inside the IP header or the ports: no ports, no match, no fault."""
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    frame = (eth(0x0800, (0x8100,) if vlan else ()) + ipv4(A4, B4, UDP, l4(UDP, 40000, 5004)))
    frame = frame[:cut + 4 * vlan]
    assert_other(clf(frame), frame)


@pytest.mark.parametrize(("vlan", "cut"), [
    (True, 15), (True, 30), (True, 53), (False, 54), (False, 55), (False, 57),
])
def test_truncated_ipv6_is_other(clf, vlan: bool, cut: int) -> None:
    clf.classifier.set_flows([(UDP, A6, B6, 40000, 5004)])
    frame = (eth(0x86DD, (0x8100,) if vlan else ()) + ipv6(A6, B6, UDP, l4(UDP, 40000, 5004)))
    frame = frame[:cut + 4 * vlan]
    assert_other(clf(frame), frame)


def test_truncated_extension_header_is_other(clf) -> None:
    clf.classifier.set_flows([(UDP, A6, B6, 40000, 5004)])
    frame = eth(0x86DD) + ipv6(A6, B6, 0, ext(UDP) + l4(UDP, 40000, 5004))
    assert_other(clf(frame[:56]), frame[:56])


def test_bad_ip_version_or_header_length_is_other(clf) -> None:
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    frame = bytearray(udp4())
    frame[14] = 0x44  # IHL 4: invalid
    assert_other(clf(bytes(frame)), bytes(frame))
    frame[14] = 0x65  # version 6 under ethertype IPv4
    assert_other(clf(bytes(frame)), bytes(frame))


def test_counters_count_voice_and_other(clf) -> None:
    c = clf.classifier
    c.set_flows([(UDP, A4, B4, 40000, 5004)])
    before = c.counters()
    voice, other = udp4(), udp4(sport=1)
    for _ in range(3):
        clf(voice)
    clf(other)
    after = c.counters()
    assert after["voice"]["packets"] - before["voice"]["packets"] == 3
    assert after["voice"]["bytes"] - before["voice"]["bytes"] == 3 * len(voice)
    assert after["other"]["packets"] - before["other"]["packets"] == 1


def test_counters_count_gso_segments(clf, loaded) -> None:
    """An skb that is a GSO aggregate counts as the segments it goes out as."""
    c, fd, _ = loaded
    c.set_flows([(UDP, A4, B4, 40000, 5004)])
    before = c.counters()
    bpf_syscall.prog_test_run(fd, udp4(), gso_segs=7)
    bpf_syscall.prog_test_run(fd, udp4(sport=1, proto=TCP), gso_segs=44)
    after = c.counters()
    assert after["voice"]["packets"] - before["voice"]["packets"] == 7
    assert after["other"]["packets"] - before["other"]["packets"] == 44
    assert after["voice"]["bytes"] - before["voice"]["bytes"] == len(udp4())


def test_any_number_of_port_ranges(clf) -> None:
    """Ranges are a port bitmap: 100 ranges cost and match like one."""
    clf.classifier.set_rules(VOICE, True, False, [(10000 + 10 * i, 10001 + 10 * i)
                                                 for i in range(100)])
    for sport, voice in ((10990, True), (10991, True), (10992, False), (9999, False)):
        frame = udp4(sport=sport, dport=443)
        (assert_voice if voice else assert_other)(clf(frame), frame)


def test_flow_ports_without_the_flow_are_other(clf) -> None:
    """Both ports in the flows' port set, but not a flow (the set lets it through to the
    hash lookup, which says no)."""
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004), (UDP, A6, B6, 5004, 40000)])
    frame = udp4(src="192.0.2.99")
    assert_other(clf(frame), frame)
    assert_voice(clf(udp4()), udp4())


def test_removed_flow_no_longer_matches(clf) -> None:
    clf.classifier.set_flows([(UDP, A4, B4, 40000, 5004)])
    assert_voice(clf(udp4()), udp4())
    clf.classifier.set_flows([(UDP, A4, B4, 40001, 5004)])
    assert_other(clf(udp4()), udp4())


def test_l3_section_reads_ip_at_offset_zero(loaded) -> None:
    """tc_l3 (PPPoE/tun devices): the test run hands it an Ethernet frame, so a frame
    whose bytes from offset 0 form an IPv4 packet shows it parses there."""
    c, _, fd_l3 = loaded
    c.set_rules(VOICE, True, False, [])
    # test_run sets skb->protocol from bytes 12-13, here the first half of the source
    # address: 8.0.x.x reads as ETH_P_IP
    c.set_flows([(UDP, "8.0.2.10", B4, 40000, 5004)])
    packet = ipv4("8.0.2.10", B4, UDP, l4(UDP, 40000, 5004))
    res = bpf_syscall.prog_test_run(fd_l3, packet)
    assert res.priority == VOICE and res.data[1] == 46 << 2


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=120),
       st.sampled_from([(b"\x08\x00", 20), (b"\x86\xdd", 40), (b"\x81\x00", 1)]))
def test_any_bytes_pass_untouched_without_rules(loaded, junk: bytes,
                                                kind: tuple[bytes, int]) -> None:
    c, fd, _ = loaded
    c.set_rules(0, False, False, [])
    c.set_flows([])
    ethertype, least = kind
    frame = bytes(12) + ethertype + junk + bytes(max(0, least - len(junk)))
    assert_other(bpf_syscall.prog_test_run(fd, frame), frame)


def test_objects_are_rebuilt_from_source(objects: Path) -> None:
    """make is a no-op right after the fixture built them: the tested objects are current."""
    res = subprocess.run(["make", "-q", "-C", str(ROOT / "bpf"), f"OUT={objects}"])
    assert res.returncode == 0


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([UDP, TCP]),
       st.one_of(st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
                 st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6))),
       st.integers(1, 65534), st.integers(1, 65534), st.booleans())
def test_any_tuple_in_the_table_matches_both_ways(loaded, proto, addrs, sport, dport,
                                                  reverse: bool) -> None:
    c, fd, _ = loaded
    c.set_rules(VOICE, True, False, [])
    src, dst = (str(a) for a in addrs)
    c.set_flows([(proto, dst, src, dport, sport) if reverse else (proto, src, dst, sport, dport)])

    def frame(dp: int) -> bytes:
        if addrs[0].version == 4:
            return eth(0x0800) + ipv4(src, dst, proto, l4(proto, sport, dp))
        return eth(0x86DD) + ipv6(src, dst, proto, l4(proto, sport, dp))
    hit = frame(dport)
    assert_voice(bpf_syscall.prog_test_run(fd, hit), hit)
    miss = frame(dport + 1)  # neither the entry nor its reverse, whatever the addresses
    assert_other(bpf_syscall.prog_test_run(fd, miss), miss)


# --- call quality (RTP) --------------------------------------------------------------

FLOW = (UDP, A4, B4, 40000, 5004)


def rtp_frame(seq: int, ts: int, ssrc: int = 0x11223344, pt: int = 0, size: int = 160,
              sport: int = 40000, dport: int = 5004) -> bytes:
    rtp = struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + b"\xd5" * size
    return eth(0x0800) + ipv4(A4, B4, UDP, l4(UDP, sport, dport, rtp))


def run_at(fd: int, frame: bytes, ingress: bool = False) -> float:
    """Run one frame; the arrival time the program saw, within the syscall (seconds,
    CLOCK_MONOTONIC like bpf_ktime_get_ns)."""
    t0 = time.monotonic_ns()
    bpf_syscall.prog_test_run(fd, frame, ingress=ingress)
    return (t0 + time.monotonic_ns()) / 2e9


@pytest.fixture
def call(loaded):
    """A fresh table entry for FLOW (re-adding it resets its counters)."""
    c, fd, _ = loaded
    c.set_rules(VOICE, True, False, [])
    c.set_flows([])
    c.set_flows([FLOW])

    def directions() -> dict[str, quality.Direction]:
        return c.flow_quality()[FLOW]
    return fd, directions


def test_rtp_stream_is_counted_in_its_direction(call) -> None:
    fd, directions = call
    for i in range(20):
        run_at(fd, rtp_frame(100 + i, 160 * i))
    for i in range(5):
        run_at(fd, rtp_frame(7 + i, 160 * i, ssrc=0x55), ingress=True)
    out, back = directions()["egress"], directions()["ingress"]
    assert out.rtp and out.ssrc == 0x11223344 and out.payload_type == 0
    assert (out.packets, out.expected, out.received, out.lost) == (20, 20, 20, 0)
    assert out.clock_hz == 8000 and out.jitter_ms is not None
    assert out.bytes == 20 * len(rtp_frame(0, 0))
    assert back.rtp and (back.packets, back.expected, back.ssrc) == (5, 5, 0x55)


def test_reversed_tuple_entry_gets_both_directions(loaded) -> None:
    """With NAT both WAN directions match the conntrack reply entry."""
    c, fd, _ = loaded
    c.set_rules(VOICE, True, False, [])
    reply = (UDP, B4, A4, 5004, 40000)
    c.set_flows([reply])
    for i in range(6):
        run_at(fd, rtp_frame(i, 160 * i))                  # egress: the reply reversed
    got = c.flow_quality()
    assert set(got) == {reply}
    assert got[reply]["egress"].received == 6 and got[reply]["ingress"].packets == 0


def test_flow_leaving_the_table_resets_its_counters(call, loaded) -> None:
    fd, directions = call
    for i in range(8):
        run_at(fd, rtp_frame(i, 160 * i))
    assert directions()["egress"].received == 8
    c = loaded[0]
    c.set_flows([(UDP, A4, B4, 40001, 5004)])
    c.set_flows([FLOW])
    assert directions()["egress"].packets == 0 and not directions()["egress"].rtp


def test_not_rtp_is_counted_but_quality_unknown(call) -> None:
    fd, directions = call
    for _ in range(10):
        run_at(fd, udp4())                       # payload b"x" * 20: version 1
    for seq in range(10):                        # RTCP multiplexed on the port (PT 200)
        run_at(fd, rtp_frame(seq, 0, pt=72))
    d = directions()["egress"]
    assert d.packets == 20 and not d.rtp
    assert quality.call_quality([directions()]).summary() == "quality unknown (no RTP seen)"


def test_probation_needs_four_in_sequence(call) -> None:
    fd, directions = call
    for seq in (1, 2, 3, 9, 10, 11):             # no four in a row of one SSRC
        run_at(fd, rtp_frame(seq, 0))
    assert not directions()["egress"].rtp
    run_at(fd, rtp_frame(12, 0))
    assert directions()["egress"].received == 4


def test_bundled_stream_is_not_mixed_in(call) -> None:
    fd, directions = call
    for i in range(30):
        run_at(fd, rtp_frame(1000 + i, 160 * i))
        run_at(fd, rtp_frame(5000 + 3 * i, 90 * i, ssrc=0xB1DE0, pt=96))  # video, gaps
    d = directions()["egress"]
    assert d.ssrc == 0x11223344 and (d.expected, d.lost, d.other_ssrc) == (30, 0, 30)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["next", "skip", "skip3", "dup", "swap", "late"]),
                min_size=1, max_size=60),
       st.integers(0, 65535))
def test_sequence_accounting_matches_the_reference(loaded, steps: list[str],
                                                   start: int) -> None:
    """Loss, duplicates and reordering across the 16-bit wrap, as RtpReceiver counts."""
    c, fd, _ = loaded
    c.set_rules(VOICE, True, False, [])
    c.set_flows([])
    c.set_flows([FLOW])
    seqs = [start + i for i in range(4)]          # probation
    for step in steps:
        top = max(seqs[-1], seqs[-2] if len(seqs) > 1 else 0)
        if step == "next":
            seqs.append(top + 1)
        elif step == "skip":
            seqs.append(top + 2)
        elif step == "skip3":
            seqs.append(top + 4)
        elif step == "dup":
            seqs.append(seqs[-1])
        elif step == "swap":
            seqs += [top + 2, top + 1]
        else:                                     # an old one, 1-80 back
            seqs.append(top - 1 - (len(seqs) * 7) % 80)
    ref = quality.RtpReceiver(seqs[3] % 65536, 0, 0.0, None, run=4)
    for i, seq in enumerate(seqs):
        run_at(fd, rtp_frame(seq, 160 * i))
        if i >= 4:
            ref.packet(seq % 65536, 160 * i, 0.0)
    d = c.flow_quality()[FLOW]["egress"]
    assert (d.expected, d.received, d.lost, d.duplicates, d.reordered) == (
        ref.expected, ref.received, ref.lost, ref.duplicates, ref.reordered), seqs


def test_jitter_matches_the_rfc3550_reference(call) -> None:
    """Timestamps every 20 ms at 8 kHz, sent with uneven real spacing: the kernel's J
    equals the reference fed with the arrival times the program saw (to a few µs)."""
    fd, directions = call
    arrivals, ts = [], 0
    for i in range(60):
        if i >= 4:
            time.sleep((0.0, 0.004, 0.012, 0.001)[i % 4])
        ts += 160
        arrivals.append(run_at(fd, rtp_frame(500 + i, ts)))
    ref = quality.RtpReceiver(503, 160 * 4, arrivals[3], 8000, run=4)
    for i in range(4, 60):
        ref.packet(500 + i, 160 * (i + 1), arrivals[i])
    got = directions()["egress"].jitter_ms
    assert got is not None and ref.jitter_ms > 5
    assert abs(got - ref.jitter_ms) < 0.05, (got, ref.jitter_ms)


def test_dynamic_payload_type_clock_is_estimated(call) -> None:
    """Opus (PT 111) at 48 kHz: no jitter until 1 s of stream gave the clock rate."""
    fd, directions = call
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < 1.3:
        ts = int((time.monotonic() - t0) * 48000)
        run_at(fd, rtp_frame(i, ts, pt=111))
        i += 1
        time.sleep(0.02)
    d = directions()["egress"]
    assert d.payload_type == 111 and d.clock_hz == 48000
    assert d.jitter_ms is not None and d.jitter_ms < 5


def rtcp_frame(kind: int, about: int = 0, fraction: int = 0, cum_lost: int = 0,
               jitter: int = 0, lsr: int = 0, dlsr: int = 0, ntp: int = 0,
               blocks: int = 1) -> bytes:
    """An RTCP SR (200, NTP time `ntp`) or RR (201), with one report block about SSRC
    `about` or none."""
    block = struct.pack("!IB3sIIII", about, fraction, cum_lost.to_bytes(3, "big"), 70000,
                        jitter, lsr, dlsr) if blocks else b""
    info = struct.pack("!QIII", ntp, 3, 4, 5) if kind == 200 else b""
    body = struct.pack("!I", 0x5EED) + info + block
    pkt = struct.pack("!BBH", 0x80 | blocks, kind, len(body) // 4) + body
    return eth(0x0800) + ipv4(A4, B4, UDP, l4(UDP, 40000, 5004, pkt))


@pytest.mark.parametrize("kind", [200, 201], ids=["SR", "RR"])
def test_rtcp_report_block_is_kept_per_direction(call, kind: int) -> None:
    fd, directions = call
    run_at(fd, rtcp_frame(kind, 0x11223344, 26, 5, 40), ingress=True)
    run_at(fd, rtcp_frame(kind, 0x11223344, 13, 7, 80), ingress=True)
    d = directions()["ingress"]
    assert not d.rtp and d.packets == 2
    rep = d.carried_report
    assert rep is not None
    assert (rep.ssrc, rep.fraction_lost, rep.cumulative_lost, rep.jitter_ts, rep.reports) == (
        0x11223344, 13 / 256 * 100, 7, 80, 2)
    assert directions()["egress"].carried_report is None


def test_round_trip_from_an_sr_and_the_report_echoing_it(call) -> None:
    """The phone's SR (no report block) leaves; 150 ms later the far end's RR echoes its
    NTP middle bits with DLSR 100 ms: the router's round trip to the far side is 50 ms."""
    fd, directions = call
    ntp = 0x0123456789ABCDEF
    t_sr = run_at(fd, rtcp_frame(200, ntp=ntp, blocks=0))
    time.sleep(0.15)
    t_rr = run_at(fd, rtcp_frame(201, about=0x11223344, lsr=(ntp >> 16) & 0xFFFFFFFF,
                                 dlsr=int(0.1 * 65536)), ingress=True)
    q = quality.call_quality([directions()])
    want = (t_rr - t_sr) * 1e3 - int(0.1 * 65536) * 1e3 / 65536
    assert q.rtt_ms["internet"] == pytest.approx(want, abs=0.1)
    assert 45 < q.rtt_ms["internet"] < 80
