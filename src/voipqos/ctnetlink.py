"""A lean ctnetlink dump: the same Snapshot as conntrack.read_proc, straight from netlink.

Why: /proc/net/nf_conntrack makes the kernel format every entry as text, TCP included,
and Python skip it again; here the kernel filters (CTA_FILTER, Linux >= 5.8) and sends
only UDP entries plus TCP entries on the SIP ports, as binary attributes decoded with
struct. Kernels that refuse the filter get one unfiltered dump, filtered in Python.
pyroute2's generic NFCTSocket is not used: it decodes every attribute of every entry.

Runs in the network namespace it is called from (the router's); needs CAP_NET_ADMIN.
stdlib only: socket, struct, ipaddress, errno, os.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from functools import lru_cache

from .conntrack import Entry, Snapshot, Tuple

NETLINK_NETFILTER = 12
CT_GET = (1 << 8) | 1  # NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED, NLA_TYPE_MASK = 0x8000, 0x3FFF
# enum ctattr_type / ctattr_tuple / ctattr_ip / ctattr_l4proto / ctattr_counters
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TIMEOUT, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 7, 8, 9, 10
CTA_ZONE, CTA_FILTER = 18, 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO, CTA_TUPLE_ZONE = 1, 2, 3
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_FILTER_ORIG_FLAGS = 1
# CTA_FILTER_FLAG(): bit positions of ctattr_filter
FILTER_PROTO_NUM, FILTER_SRC_PORT, FILTER_DST_PORT = 1 << 3, 1 << 4, 1 << 5
# status bits (enum ip_conntrack_status)
IPS_SEEN_REPLY, IPS_ASSURED, IPS_OFFLOAD, IPS_HW_OFFLOAD = 1 << 1, 1 << 2, 1 << 14, 1 << 15
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
UDP, TCP = 17, 6
_HDR = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_BE16, _BE32, _BE64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")
RECV_SIZE = 1 << 16  # the kernel fills at most 32 KiB per dump message batch


class Malformed(ValueError):
    pass


def _attr(kind: int, payload: bytes) -> bytes:
    data = _ATTR.pack(4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def request(family: int = socket.AF_UNSPEC, proto: int | None = None,
            port: tuple[int, int] | None = None) -> bytes:
    """The body of a CT_GET dump request (AF_UNSPEC: both families); with `proto`,
    filtered in the kernel to that protocol and, optionally, (CTA_PROTO_SRC_PORT or
    CTA_PROTO_DST_PORT, port) of the original tuple. The kernel takes a filter only with
    a family."""
    head = struct.pack("=BBH", family, 0, 0)
    if proto is None:
        return head
    l4 = _attr(CTA_PROTO_NUM, bytes([proto]))
    flags = FILTER_PROTO_NUM
    if port is not None:
        which, number = port
        l4 += _attr(which, _BE16.pack(number))
        flags |= FILTER_SRC_PORT if which == CTA_PROTO_SRC_PORT else FILTER_DST_PORT
    return head + (_attr(CTA_TUPLE_ORIG | NLA_F_NESTED,
                         _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, l4))
                   + _attr(CTA_FILTER | NLA_F_NESTED,
                           _attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", flags))))


def attr_spans(buf: memoryview, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (payload start, payload end) for one nesting level."""
    out = {}
    while start + 4 <= end:
        length, kind = _ATTR.unpack_from(buf, start)
        if length < 4 or start + length > end:
            raise Malformed(f"attribute {kind} of length {length}")
        out[kind & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return out


@lru_cache(maxsize=8192)
def _ip(raw: bytes) -> str:
    # compressed text like conntrack.parse gives, so keys match across sources
    return str(ipaddress.ip_address(raw))


def _tuple(buf: memoryview, span: tuple[int, int]) -> tuple[int, Tuple | None, int]:
    """(l4 proto number, Tuple or None if not UDP/TCP, tuple zone id or 0)."""
    t = attr_spans(buf, *span)
    l4 = attr_spans(buf, *t[CTA_TUPLE_PROTO])
    num = buf[l4[CTA_PROTO_NUM][0]]
    if num not in (UDP, TCP):
        return num, None, 0
    ip = attr_spans(buf, *t[CTA_TUPLE_IP])
    src, dst = (ip[1], ip[2]) if 1 in ip else (ip[3], ip[4])
    zone = _BE16.unpack_from(buf, t[CTA_TUPLE_ZONE][0])[0] if CTA_TUPLE_ZONE in t else 0
    return (num,
            Tuple(_ip(bytes(buf[src[0]:src[1]])), _ip(bytes(buf[dst[0]:dst[1]])),
                  _BE16.unpack_from(buf, l4[CTA_PROTO_SRC_PORT][0])[0],
                  _BE16.unpack_from(buf, l4[CTA_PROTO_DST_PORT][0])[0]),
            zone)


def _counters(buf: memoryview, a: dict, kind: int) -> tuple[int | None, int | None]:
    if kind not in a:
        return None, None  # accounting was off when the entry was created
    c = attr_spans(buf, *a[kind])
    return _BE64.unpack_from(buf, c[1][0])[0], _BE64.unpack_from(buf, c[2][0])[0]


def decode(buf: memoryview, start: int, end: int) -> Entry | None:
    """One IPCTNL_MSG_CT_NEW message body (after the nlmsghdr) as an Entry; None for
    protocols other than UDP and TCP. Raises Malformed, KeyError, IndexError or
    struct.error on a message without what an entry must have."""
    family = {socket.AF_INET: 4, socket.AF_INET6: 6}[buf[start]]
    a = attr_spans(buf, start + 4, end)
    num, orig, ozone = _tuple(buf, a[CTA_TUPLE_ORIG])
    if orig is None:
        return None
    _, reply, rzone = _tuple(buf, a[CTA_TUPLE_REPLY])
    if reply is None:
        raise Malformed("reply tuple of another protocol")
    status = _BE32.unpack_from(buf, a[CTA_STATUS][0])[0]
    flags = set() if status & IPS_SEEN_REPLY else {"UNREPLIED"}
    if status & IPS_HW_OFFLOAD:
        flags.add("HW_OFFLOAD")
    elif status & IPS_OFFLOAD:
        flags.add("OFFLOAD")
    elif status & IPS_ASSURED:
        flags.add("ASSURED")
    state = ""
    if num == TCP and CTA_PROTOINFO in a:
        tcp = attr_spans(buf, *attr_spans(buf, *a[CTA_PROTOINFO])[1])
        state = TCP_STATES[buf[tcp[1][0]]]
    # /proc omits the timeout of offloaded entries; match it
    timeout = 0 if status & IPS_OFFLOAD or CTA_TIMEOUT not in a else (
        _BE32.unpack_from(buf, a[CTA_TIMEOUT][0])[0])
    zone = _BE16.unpack_from(buf, a[CTA_ZONE][0])[0] if CTA_ZONE in a else ozone or rzone
    mark = _BE32.unpack_from(buf, a[CTA_MARK][0])[0] if CTA_MARK in a else 0
    return Entry(family, {UDP: "udp", TCP: "tcp"}[num], orig, reply,
                 *_counters(buf, a, CTA_COUNTERS_ORIG), *_counters(buf, a, CTA_COUNTERS_REPLY),
                 timeout, frozenset(flags), state, mark, zone)


def dump_messages(sock: socket.socket, kind: int, seq: int, body: bytes
                  ) -> Iterator[tuple[memoryview, int, int]]:
    """Send one netlink dump request of `kind` with `body`; yield (buffer, body start,
    body end) per answer message (NLMSG_ERROR raises OSError)."""
    sock.send(_HDR.pack(_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
              + body)
    buf = bytearray(RECV_SIZE)
    view = memoryview(buf)
    while True:
        n = sock.recv_into(buf)
        off = 0
        while off + _HDR.size <= n:
            length, kind, _, _, _ = _HDR.unpack_from(buf, off)
            if length < _HDR.size:
                raise OSError(errno.EBADMSG, "netlink message shorter than its header")
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                err = -struct.unpack_from("=i", buf, off + _HDR.size)[0]
                if err:
                    raise OSError(err, os.strerror(err))
            else:
                yield view, off + _HDR.size, off + length
            off += (length + 3) & ~3


def _wanted(e: Entry, sip_ports: frozenset[int]) -> bool:
    return e.proto == "udp" or bool(sip_ports & {e.orig.sport, e.orig.dport,
                                                e.reply.sport, e.reply.dport})


def read_netlink(sip_ports: Iterable[int] = (5060, 5061), taken_at: float = 0.0,
                 kernel_filter: bool = True) -> Snapshot:
    """Dump UDP entries and TCP entries on SIP ports into a Snapshot (like read_proc).

    With kernel_filter, one UDP dump plus two TCP dumps per SIP port (original source
    or destination port); a kernel that refuses CTA_FILTER (EINVAL/EOPNOTSUPP, < 5.8)
    gets one unfiltered dump instead. Entries are checked again in Python either way,
    so a kernel that ignores the filter is still right, only slower. `lines` counts
    messages received; a message that fails to decode is counted as malformed.
    """
    ports = frozenset(sip_ports)
    wanted = [(UDP, None)] + [(TCP, (side, p)) for p in sorted(ports)
                              for side in (CTA_PROTO_DST_PORT, CTA_PROTO_SRC_PORT)]
    requests = [request(family, proto, port)
                for family in (socket.AF_INET, socket.AF_INET6) for proto, port in wanted]
    snap = Snapshot(taken_at=taken_at)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        if kernel_filter:
            try:
                _collect(sock, requests, ports, snap)
                return snap
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
            snap = Snapshot(taken_at=taken_at)
        _collect(sock, [request()], ports, snap)
    return snap


def _collect(sock: socket.socket, requests: list[bytes], ports: frozenset[int],
             snap: Snapshot) -> None:
    entries = snap.entries
    for seq, req in enumerate(requests, 1):
        for buf, start, end in dump_messages(sock, CT_GET, seq, req):
            snap.lines += 1
            try:
                e = decode(buf, start, end)
            except (Malformed, KeyError, IndexError, struct.error):
                snap.malformed += 1
                continue
            if e is None or not _wanted(e, ports):
                snap.skipped += 1
                continue
            entries[e.key] = e
            snap.parsed += 1
