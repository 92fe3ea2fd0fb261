"""The replay tool's pure parts: reading captures (pcap, pcapng; Ethernet, VLAN, SLL,
IPv6), mapping a capture onto the lab (addresses, ports, gaps, sizes), its files."""

from __future__ import annotations

import gzip
import ipaddress
import struct

from voipqos.lab.replay import (
    media_seconds,
    plan,
    read_plan,
    read_snapshots,
    write_plan,
    write_snapshots,
)
from voipqos.lab.replay_pcap import Datagram, read_udp


def udp4(src: str, dst: str, sport: int, dport: int, payload: int, data: bytes = b"") -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + payload, 0, 0, 64, 17, 0,
                     ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return ip + struct.pack("!HHHH", sport, dport, 8 + payload, 0) + data.ljust(payload, b"\0")


def udp6(src: str, dst: str, sport: int, dport: int, payload: int) -> bytes:
    ip = struct.pack("!IHBB16s16s", 6 << 28, 8 + payload, 17, 64,
                     ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return ip + struct.pack("!HHHH", sport, dport, 8 + payload, 0) + bytes(payload)


def ether(ip: bytes, vlan: bool = False) -> bytes:
    etype = 0x86DD if ip[0] >> 4 == 6 else 0x0800
    tag = struct.pack("!HH", 0x8100, 7) if vlan else b""
    return bytes(12) + tag + struct.pack("!H", etype) + ip


def pcap(frames: list[tuple[float, bytes]], linktype: int = 1) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for ts, f in frames:
        out += struct.pack("<IIII", int(ts), round(ts % 1 * 1e6), len(f), len(f)) + f
    return out


def pcapng(frames: list[tuple[float, bytes]]) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        n = 12 + len(body)
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    # interface: Ethernet, if_tsresol 9 (nanoseconds)
    idb = block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HHB3x", 9, 1, 9)
                + struct.pack("<HH", 0, 0))
    out = shb + idb
    for ts, f in frames:
        t = round(ts * 1e9)
        out += block(6, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(f), len(f)) + f)
    return out


def test_pcap_and_pcapng_give_the_same_datagrams(tmp_path):
    frames = [(100.0, ether(udp4("192.168.1.5", "203.0.113.7", 4000, 3478, 160))),
              (100.02, ether(udp4("203.0.113.7", "192.168.1.5", 3478, 4000, 120), vlan=True)),
              (100.5, ether(udp6("fd00::5", "2001:db8::9", 5000, 443, 1200))),
              (101.0, ether(b"\x45" + bytes(30)))]  # not UDP: skipped
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcapng"
    a.write_bytes(pcap(frames))
    b.write_bytes(pcapng(frames))
    da, skipped = read_udp(a)
    db, _ = read_udp(b)
    assert skipped == 1
    z = bytes(12)
    assert da == [Datagram(100.0, "192.168.1.5", "203.0.113.7", 4000, 3478, 188, 4, z),
                  Datagram(100.02, "203.0.113.7", "192.168.1.5", 3478, 4000, 148, 4, z),
                  Datagram(100.5, "fd00::5", "2001:db8::9", 5000, 443, 1248, 6, z)]
    assert [(d.src, d.ip_len) for d in db] == [(d.src, d.ip_len) for d in da]
    assert all(abs(x.ts - y.ts) < 1e-6 for x, y in zip(da, db, strict=True))


def test_head_is_the_payload_start_never_the_frame_padding(tmp_path):
    rtp = bytes.fromhex("80 00 1234 00000001 deadbeef") + b"voice"
    f = tmp_path / "h.pcap"
    # an Ethernet frame pads a short packet to 60 bytes: the padding is not payload
    f.write_bytes(pcap([(0.0, ether(udp4("10.0.0.2", "198.51.100.9", 1, 2, 17, rtp))),
                        (0.1, ether(udp4("10.0.0.2", "198.51.100.9", 1, 2, 3)) + b"\xff" * 20)]))
    [d, e], _ = read_udp(f)
    assert (d.head, e.head) == (rtp[:12], bytes(3))


def test_linux_cooked_capture(tmp_path):
    f = tmp_path / "sll.pcap"
    f.write_bytes(pcap([(1.0, bytes(16) + udp4("10.0.0.2", "198.51.100.9", 1, 2, 10))], 113))
    [d], _ = read_udp(f)
    assert (d.src, d.dport, d.ip_len) == ("10.0.0.2", 2, 38)


def test_plan_maps_far_hosts_keeps_ports_sizes_and_neighbourhoods():
    lan = "192.168.1.5"
    ds = [Datagram(10.0, lan, "203.0.113.7", 4000, 3478, 188, 4),
          Datagram(10.5, "203.0.113.7", lan, 3478, 4000, 148, 4),
          Datagram(11.0, lan, "203.0.113.9", 4000, 40000, 188, 4),  # same /24: nearby
          Datagram(100.0, lan, "198.51.100.1", 4001, 53, 60, 4),  # 89 s gap: cut to 10
          Datagram(100.1, lan, "224.0.0.251", 5353, 5353, 100, 4),  # multicast: skipped
          Datagram(100.2, "fd00::5", "2001:db8::9", 5000, 443, 1248, 6)]  # another host
    p = plan(ds, lan)
    assert p.skipped == 2
    a, b, c = (p.far_map[x] for x in ("203.0.113.7", "203.0.113.9", "198.51.100.1"))
    assert a.rsplit(".", 1)[0] == b.rsplit(".", 1)[0] != c.rsplit(".", 1)[0]
    assert a.endswith(".7") and b.endswith(".9")
    assert p.sends == [(0.0, True, 4000, (a, 3478), 160), (0.5, False, 4000, (a, 3478), 120),
                       (1.0, True, 4000, (b, 40000), 160), (11.0, True, 4001, (c, 53), 32)]
    assert media_seconds(p, ["4000-203.0.113.7:3478"]) == {0: 2}


def test_ipv6_capture_keeps_the_counted_length_over_ipv4():
    p = plan([Datagram(0.0, "fd00::5", "2001:db8::9", 5000, 443, 1248, 6)], "fd00::5")
    # replayed over IPv4: 1248 - 28 bytes of payload, so conntrack counts 1248 again
    assert p.sends[0][4] == 1220


def test_plan_and_snapshot_files_round_trip(tmp_path):
    p = plan([Datagram(0.0, "10.0.0.2", "203.0.113.7", 1, 2, 100, 4, b"\x80" * 12),
              Datagram(0.25, "203.0.113.7", "10.0.0.2", 2, 1, 30, 4, b"")], "10.0.0.2")
    write_plan(tmp_path / "x.plan.gz", p)
    q = read_plan(tmp_path / "x.plan.gz")
    assert (q.lan_host, q.far_map, q.sends, q.skipped) == (p.lan_host, p.far_map, p.sends, 0)
    assert q.heads == [b"\x80" * 12, b""]
    # a plan written before heads were kept still loads: no heads, zeros are sent
    old = "lan 10.0.0.2\nskipped 0\nduration 0\nfar 1.2.3.4 100.64.0.4\n" \
          "0.000000 out 1 100.64.0.4 2 72\n"
    (tmp_path / "old.plan.gz").write_bytes(gzip.compress(old.encode()))
    o = read_plan(tmp_path / "old.plan.gz")
    assert (o.sends, o.heads, o.head(0)) == ([(0.0, True, 1, ("100.64.0.4", 2), 72)], [], b"")
    snaps = [(0.0, []), (1.0, ["line a", "line b"])]
    write_snapshots(tmp_path / "x.ct", snaps)
    assert read_snapshots(tmp_path / "x.ct") == snaps


def test_own_corpus_files_are_found_before_the_committed_ones(tmp_path):
    """`replay_corpus --corpus MYDIR` / `replay_eval --dir MYDIR[/shift-0.5]`: a user's
    manifest and plans are taken from their directory (or its parent for a shifted
    replay), the committed corpus only for what is not there."""
    from voipqos.lab.replay_corpus import CORPUS, corpus_file, load_manifest

    shifted = tmp_path / "shift-0.5"
    shifted.mkdir()
    (tmp_path / "corpus.json").write_text('{"captures": [{"name": "mine"}]}')
    assert corpus_file(shifted, "corpus.json") == tmp_path / "corpus.json"
    assert load_manifest(corpus_file(shifted, "corpus.json").parent) == [{"name": "mine"}]
    (shifted / "mine.plan.gz").write_bytes(b"")
    assert corpus_file(shifted, "mine.plan.gz") == shifted / "mine.plan.gz"
    assert corpus_file(shifted, "kakaotalk.plan.gz") == CORPUS / "kakaotalk.plan.gz"
