"""Read the UDP datagrams of a packet capture (pcap or pcapng), no dependencies.

The replay only needs, per UDP datagram: when, between which endpoints, how long the IP
packet was (what conntrack counts) and the first 12 bytes of its payload (the RTP/STUN
header the tc-BPF observer reads; no payload content beyond it). Link types: Ethernet
(with VLAN tags), Linux cooked (SLL, SLL2), raw IP and BSD loopback; anything else is
skipped and counted.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..header_evidence import HEAD_LEN


@dataclass(frozen=True, slots=True)
class Datagram:
    ts: float
    src: str
    dst: str
    sport: int
    dport: int
    ip_len: int  # the IP packet's length as captured in its header (v4 total, v6 40+payload)
    version: int
    head: bytes = b""  # the UDP payload's first HEAD_LEN bytes (fewer if shorter)


class CaptureError(ValueError):
    pass


def _ip(data: bytes, off: int) -> Datagram | None:
    """A UDP datagram from the IP header at off, else None (other protocols, fragments)."""
    if len(data) < off + 20:
        return None
    ver = data[off] >> 4
    if ver == 4:
        ihl = (data[off] & 15) * 4
        total = struct.unpack_from("!H", data, off + 2)[0]
        frag = struct.unpack_from("!H", data, off + 6)[0]
        if data[off + 9] != 17 or frag & 0x1FFF:
            return None
        src = ipaddress.IPv4Address(data[off + 12:off + 16]).compressed
        dst = ipaddress.IPv4Address(data[off + 16:off + 20]).compressed
        udp = off + ihl
    elif ver == 6 and len(data) >= off + 40:
        total = 40 + struct.unpack_from("!H", data, off + 4)[0]
        if data[off + 6] != 17:  # extension headers are rare on UDP media: skipped
            return None
        src = ipaddress.IPv6Address(data[off + 8:off + 24]).compressed
        dst = ipaddress.IPv6Address(data[off + 24:off + 40]).compressed
        udp = off + 40
    else:
        return None
    if len(data) < udp + 4:
        return None
    sport, dport = struct.unpack_from("!HH", data, udp)
    head = data[udp + 8:min(udp + 8 + HEAD_LEN, off + total)]  # not the frame's padding
    return Datagram(0.0, src, dst, sport, dport, total, ver, head)


def _link_offset(linktype: int, data: bytes) -> int | None:
    if linktype == 1:  # Ethernet
        off, etype = 14, struct.unpack_from("!H", data, 12)[0] if len(data) >= 14 else 0
        while etype in (0x8100, 0x88A8) and len(data) >= off + 4:
            etype = struct.unpack_from("!H", data, off + 2)[0]
            off += 4
        return off if etype in (0x0800, 0x86DD) else None
    if linktype == 113:  # Linux SLL
        return 16
    if linktype == 276:  # Linux SLL2
        return 20
    if linktype in (101, 228, 229, 12, 14):  # raw IP
        return 0
    if linktype in (0, 108):  # BSD loopback / OpenBSD loop
        return 4
    return None


def _records(raw: bytes) -> Iterator[tuple[int, float, bytes]]:
    """(linktype, timestamp, frame) of every packet."""
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4",
                 b"\xa1\xb2\x3c\x4d"):
        e = "<" if magic[0] in (0xD4, 0x4D) else ">"
        nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        linktype = struct.unpack_from(e + "I", raw, 20)[0] & 0xFFFF
        off = 24
        while off + 16 <= len(raw):
            sec, frac, incl, _ = struct.unpack_from(e + "IIII", raw, off)
            off += 16
            yield linktype, sec + frac / (1e9 if nano else 1e6), raw[off:off + incl]
            off += incl
        return
    if magic == b"\x0a\x0d\x0d\x0a":
        yield from _pcapng(raw)
        return
    raise CaptureError("not a pcap or pcapng file")


def _pcapng(raw: bytes) -> Iterator[tuple[int, float, bytes]]:
    off, e = 0, "<"
    links: list[tuple[int, float]] = []  # per interface: linktype, seconds per tick
    while off + 12 <= len(raw):
        btype = struct.unpack_from(e + "I", raw, off)[0]
        if btype == 0x0A0D0D0A:
            e = "<" if raw[off + 8:off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            links = []
        blen = struct.unpack_from(e + "I", raw, off + 4)[0]
        if blen < 12:
            raise CaptureError(f"bad pcapng block length at {off}")
        body = raw[off + 8:off + blen - 4]
        if btype == 1:  # interface description: link type, options for ts resolution
            linktype = struct.unpack_from(e + "H", body, 0)[0]
            tick = 1e-6
            o = 8
            while o + 4 <= len(body):
                code, olen = struct.unpack_from(e + "HH", body, o)
                if code == 0:
                    break
                if code == 9 and olen >= 1:
                    v = body[o + 4]
                    tick = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
                o += 4 + (olen + 3) // 4 * 4
            links.append((linktype, tick))
        elif btype == 6 and len(body) >= 20:  # enhanced packet
            iface, hi, lo, incl = struct.unpack_from(e + "IIII", body, 0)
            linktype, tick = links[iface] if iface < len(links) else (1, 1e-6)
            yield linktype, ((hi << 32) | lo) * tick, body[20:20 + incl]
        elif btype == 3 and len(body) >= 4:  # simple packet: no timestamp
            linktype, _ = links[0] if links else (1, 1e-6)
            yield linktype, 0.0, body[4:]
        off += blen


def read_udp(path: str | Path) -> tuple[list[Datagram], int]:
    """The capture's UDP datagrams in capture order, and how many frames were skipped."""
    out: list[Datagram] = []
    skipped = 0
    for linktype, ts, frame in _records(Path(path).read_bytes()):
        off = _link_offset(linktype, frame)
        d = _ip(frame, off) if off is not None else None
        if d is None:
            skipped += 1
            continue
        out.append(Datagram(ts, d.src, d.dst, d.sport, d.dport, d.ip_len, d.version, d.head))
    return out, skipped
