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
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from typing import TypeVar

from .conntrack import TCP, UDP, Entry, Snapshot, Tuple
from .header_evidence import HeaderCounts, HeaderKey

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
                 timeout, _flags(status), state, mark, zone)


@lru_cache(maxsize=64)
def _flags(status: int) -> frozenset[str]:
    """The status bits /proc prints ([UNREPLIED], [ASSURED], [OFFLOAD], [HW_OFFLOAD])."""
    flags = set() if status & IPS_SEEN_REPLY else {"UNREPLIED"}
    if status & IPS_HW_OFFLOAD:
        flags.add("HW_OFFLOAD")
    elif status & IPS_OFFLOAD:
        flags.add("OFFLOAD")
    elif status & IPS_ASSURED:
        flags.add("ASSURED")
    return frozenset(flags)


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


# ---- the service's poll: cost that grows with the flows that can be calls ----------------

SYSCTL_DIR = "/proc/sys/net/netfilter"
FLOOR_PPS = 1.0  # below this in both directions for QUIET_POLLS, a flow stops being watched
QUIET_POLLS = 2
FRESH_SLACK_S = 3  # "had a packet in the last few seconds", read from the entry's timeout
# discovery work per poll (wall time, kernel included): a whole cycle when it took at most
# ONE_POLL_S (a new call is then found in the poll it starts), else the last cycle's work
# spread over CYCLE_POLLS polls, within [SLICE_MIN_S, SLICE_MAX_S]; past that the cycle
# gets longer
SLICE_MIN_S, ONE_POLL_S, SLICE_MAX_S, CYCLE_POLLS = 0.004, 0.010, 0.040, 3
MAX_WATCHED = 2000  # flows refreshed every poll; more active UDP flows than that: a warning
GET_CHUNK = 64  # lookups per sendmsg (their answers must fit the socket's buffer)
CYCLE_WARN_S = 10.0  # a discovery cycle slower than this is reported in the status
HINTS_PER_POLL = 32  # lookups of observer hints per poll (each ~ one watched flow's)
HINT_FORGET_S = 30.0  # a hint looked up is not looked up again for this long
TCP_PER_CYCLE = 2  # of the dumps for TCP on SIP ports (family x port x side), each a
# walk of the whole table, for a hint (SIP over TCP marks a call as SIP; media is found
# without it): spread over cycles so every cycle costs about the same


def _sysctl(name: str, default: int, base: str = SYSCTL_DIR) -> int:
    try:
        with open(f"{base}/{name}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def reply_hints(headers: Mapping[HeaderKey, HeaderCounts] | None,
                wan_addrs: Iterable[str]) -> list[Tuple]:
    """Reply tuples worth a direct lookup: the observer's flows (keyed far address, far
    port, near port) with RTP counted, once per IPv4 WAN address (behind NAT the reply
    goes to one of them). STUN-only flows are left out (many, rarely calls yet), and so
    is IPv6: without NAT the reply goes to the LAN host, which the key does not name;
    the discovery cycle finds those."""
    wan4 = sorted(a for a in wan_addrs if ":" not in a)
    return [Tuple(far, wan, far_port, near_port)
            for (far, far_port, near_port), c in (headers or {}).items()
            if (c.rtp_out or c.rtp_in) and ":" not in far for wan in wan4]


def lookup(reply: Tuple) -> bytes:
    """The body of a CT_GET for the IPv4 UDP entry with this reply tuple (ctnetlink
    finds an entry by either tuple)."""
    a, nest = _attr, NLA_F_NESTED
    return struct.pack("=BBH", socket.AF_INET, 0, 0) + a(CTA_TUPLE_REPLY | nest, a(
        CTA_TUPLE_IP | nest, a(1, socket.inet_aton(reply.src)) + a(2, socket.inet_aton(
            reply.dst))) + a(CTA_TUPLE_PROTO | nest, a(CTA_PROTO_NUM, bytes([UDP]))
                             + a(CTA_PROTO_SRC_PORT, _BE16.pack(reply.sport))
                             + a(CTA_PROTO_DST_PORT, _BE16.pack(reply.dport))))


def _keyed(view: memoryview, start: int, end: int) -> tuple[tuple[int, bytes], Entry | None]:
    """A whole message decoded, with the key a watched flow is looked up by (family, its
    original tuple as the kernel encodes it). Raises what decode() raises."""
    e = decode(view, start, end)
    orig = attr_spans(view, start + 4, end)[CTA_TUPLE_ORIG]
    return (view[start], bytes(view[orig[0] - 4:orig[1]])), e


def _keyed_or_none(_: int, view: memoryview, start: int, end: int
                   ) -> tuple[tuple[int, bytes], Entry | None] | None:
    """_keyed for a hint's answer: one undecodable entry is as good as none."""
    try:
        return _keyed(view, start, end)
    except (Malformed, KeyError, IndexError, struct.error):
        return None


def _slice(work: float) -> float:
    """Discovery time per poll for a cycle that takes `work` seconds in all."""
    return min(SLICE_MAX_S, max(SLICE_MIN_S, work if work <= ONE_POLL_S
                                else work / CYCLE_POLLS))


class _Watched:
    """A flow refreshed every poll: how to ask for it, its last entry and when."""

    __slots__ = ("at", "entry", "family", "quiet")

    def __init__(self, family: int, e: Entry, at: float) -> None:
        self.family, self.entry, self.at, self.quiet = family, e, at, 0


_T = TypeVar("_T")
# (CTA_STATUS, CTA_TIMEOUT, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY) payload offsets
_Layout = tuple[int, int, int, int]
_COUNTED = (CTA_STATUS, CTA_TIMEOUT, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY)


class Tracker:
    """The connection table as detection needs it, at a cost that grows with the flows
    that can still be calls, not with the table.

    Two parts per poll: (1) every watched flow (UDP with a packet rate at least
    FLOOR_PPS in some direction, TCP on a SIP port) is looked up by its tuple, batched,
    and becomes an Entry; (2) a slice of a discovery cycle: ctnetlink dumps filtered in
    the kernel to UDP and to TCP on the SIP ports, resumed across polls. A UDP entry
    whose timeout shows a packet in the last FRESH_SLACK_S seconds (the kernel resets it
    to nf_conntrack_udp_timeout[_stream] on every packet) starts being watched. The
    slice adapts: a cheap cycle (<= ONE_POLL_S) runs whole every poll, a dearer one is
    spread over about CYCLE_POLLS polls, up to SLICE_MAX_S per poll; a table bigger than
    that only makes the cycle longer, so a new call is found later: `cycle_s` and the
    Snapshot's `note` say so. Unwatched flows cost nothing
    between cycles and no memory. Needs CAP_NET_ADMIN in the router's network namespace.

    Between the two, `hints` (reply tuples, see reply_hints: flows the observer saw RTP
    in) not watched yet are looked up directly, HINTS_PER_POLL at most, each at most
    once per HINT_FORGET_S: a new call is then watched in the poll after its first
    packets however long the cycle is.
    """

    def __init__(self, sip_ports: Iterable[int] = (5060, 5061),
                 sysctl_dir: str = SYSCTL_DIR) -> None:
        self.ports = frozenset(sip_ports)
        self.slice_s = SLICE_MIN_S
        self._work = 0.0  # discovery time spent in the current cycle
        self.sysctl_dir = sysctl_dir
        self.watched: dict[tuple[int, bytes], _Watched] = {}
        self.cycle_s: float | None = None  # duration of the last complete discovery cycle
        self.overflow = 0  # active flows not watched in the last cycle (MAX_WATCHED)
        self._get = self._socket()
        self._dump: socket.socket | None = None
        self._queue: list[bytes] = []
        self._cycle_start = 0.0
        self._seq = self._cycles = 0
        self._layouts: dict[int, tuple[int, int]] = {}
        self._buf = bytearray(RECV_SIZE)
        self._timeouts = (30, 120)
        self._hinted: dict[Tuple, float] = {}  # hint -> when it was looked up

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(2.0)
        return sock

    def close(self) -> None:
        self._get.close()
        if self._dump is not None:
            self._dump.close()

    def poll(self, taken_at: float, hints: Iterable[Tuple] = ()) -> Snapshot:
        snap = Snapshot(taken_at=taken_at)
        try:
            self._refresh(snap, taken_at)
            self._look_up(snap, hints, taken_at)
            self._discover(snap, taken_at)
        except OSError:
            if self._dump is not None:  # its state is unknown: the cycle goes on afresh
                self._dump.close()
                self._dump = None
            raise
        snap.lines = snap.parsed + snap.skipped + snap.malformed
        if self.cycle_s is not None and self.cycle_s > CYCLE_WARN_S:
            snap.note = (f"connection table too large to scan every poll: new calls are "
                         f"found within {self.cycle_s:.0f} s")
        if self.overflow:
            snap.note = (f"{self.overflow} active UDP flows beyond the {MAX_WATCHED} "
                         "watched: some calls may be missed")
        return snap

    # -- (1) the watched flows --
    def _refresh(self, snap: Snapshot, now: float) -> None:
        items = list(self.watched.items())
        for i in range(0, len(items), GET_CHUNK):
            chunk = items[i:i + GET_CHUNK]
            answers = self._get_all(
                [struct.pack("=BBH", w.family, 0, 0) + tup
                 + (_attr(CTA_ZONE, _BE16.pack(w.entry.zone)) if w.entry.zone else b"")
                 for (_, tup), w in chunk],
                lambda j, view, start, end, c=chunk: self._update(c[j][1].entry, view,
                                                                  start, end))
            for (key, w), e in zip(chunk, answers, strict=True):
                if e is None:  # gone (ENOENT) or undecodable
                    del self.watched[key]
                    continue
                self._keep(snap, key, w, e, now)

    def _look_up(self, snap: Snapshot, hints: Iterable[Tuple], now: float) -> None:
        """The hinted flows not watched yet, as if discovered now; a hint the kernel has
        no entry for (ENOENT: no NAT to that WAN address, a stale map entry) is silent."""
        hints = list(hints)
        if not hints:
            return
        self._hinted = {t: at for t, at in self._hinted.items() if now - at < HINT_FORGET_S}
        known = {e.reply for e in snap.entries.values()}
        todo = [t for t in dict.fromkeys(hints) if t not in known and t not in self._hinted
                ][:HINTS_PER_POLL]
        self._hinted.update(dict.fromkeys(todo, now))
        for found in self._get_all([lookup(t) for t in todo], _keyed_or_none):
            key, e = found or (None, None)
            if key is not None and e is not None:
                self._watch(snap, key, e, now)

    def _get_all(self, bodies: list[bytes],
                 answer: Callable[[int, memoryview, int, int], _T | None]) -> list[_T | None]:
        """One CT_GET per body, in one sendmsg; `answer(index, buffer, start, end)` of
        each reply in order (None: the kernel had no such entry)."""
        if not bodies:
            return []
        first = self._seq + 1
        self._seq += len(bodies)
        self._get.send(b"".join(
            _HDR.pack(_HDR.size + len(body), CT_GET, NLM_F_REQUEST, first + j, 0) + body
            for j, body in enumerate(bodies)))
        count = len(bodies)
        out: dict[int, _T | None] = {}
        buf, view = self._buf, memoryview(self._buf)
        while len(out) < count:
            n = self._get.recv_into(buf)
            off = 0
            while off + _HDR.size <= n:
                length, kind, _, seq, _ = _HDR.unpack_from(buf, off)
                if length < _HDR.size:
                    raise OSError(errno.EBADMSG, "netlink message shorter than its header")
                if first <= seq < first + count:
                    out[seq] = None if kind == NLMSG_ERROR else answer(
                        seq - first, view, off + _HDR.size, off + length)
                off += (length + 3) & ~3
        return [out[first + j] for j in range(count)]

    def _update(self, last: Entry, view: memoryview, start: int, end: int) -> Entry | None:
        """The watched entry with this answer's status, timeout and counters: its tuples
        do not change, so only those are read (at remembered offsets), else decoded."""
        at = self._layout(view, start, end)
        if at is None or at[2] < 0 or at[3] < 0 or last.proto == "tcp":  # TCP: its state
            try:
                return decode(view, start, end)
            except (Malformed, KeyError, IndexError, struct.error):
                return None
        status, timeout = _BE32.unpack_from(view, at[0])[0], _BE32.unpack_from(view, at[1])[0]
        return Entry(last.family, last.proto, last.orig, last.reply,
                     _BE64.unpack_from(view, at[2] + 4)[0], _BE64.unpack_from(view, at[2] + 16)[0],
                     _BE64.unpack_from(view, at[3] + 4)[0], _BE64.unpack_from(view, at[3] + 16)[0],
                     0 if status & IPS_OFFLOAD else timeout, _flags(status), last.state,
                     last.mark, last.zone)

    def _keep(self, snap: Snapshot, key: tuple[int, bytes], w: _Watched, e: Entry,
              now: float) -> None:
        snap.entries[e.key] = e
        snap.parsed += 1
        last, dt = w.entry, now - w.at
        if e.proto == "udp" and dt > 0 and e.orig_packets is not None:
            rate = max(e.orig_packets - (last.orig_packets or 0),
                       (e.reply_packets or 0) - (last.reply_packets or 0)) / dt
            w.quiet = w.quiet + 1 if rate < FLOOR_PPS else 0
            if w.quiet >= QUIET_POLLS:
                del self.watched[key]  # rediscovered by its timeout when it wakes up
        w.entry, w.at = e, now

    # -- (2) the discovery cycle --
    def _requests(self) -> list[bytes]:
        """One cycle's dumps: UDP per family, then the next TCP_PER_CYCLE SIP dumps."""
        self._cycles += 1
        families = (socket.AF_INET, socket.AF_INET6)
        tcp = [request(f, TCP, (side, p)) for f in families for p in sorted(self.ports)
               for side in (CTA_PROTO_DST_PORT, CTA_PROTO_SRC_PORT)]
        first = (self._cycles - 1) * TCP_PER_CYCLE % max(1, len(tcp))
        return [request(f, UDP) for f in families] + tcp[first:first + TCP_PER_CYCLE]

    def _discover(self, snap: Snapshot, now: float) -> None:
        began = time.perf_counter()
        # a cycle running long (the table grew): spread what it took so far wider
        self.slice_s = max(self.slice_s, _slice(self._work))
        deadline = began + self.slice_s
        buf, view = self._buf, memoryview(self._buf)
        restarted = False
        while time.perf_counter() < deadline:
            if self._dump is None:
                if not self._queue:
                    if restarted:
                        break  # one cycle per poll at most: a small table costs little
                    restarted = True
                    if self._cycle_start:
                        self.cycle_s = now - self._cycle_start
                        self.slice_s = _slice(self._work)
                    self._cycle_start, self._work = now, 0.0
                    self._queue = self._requests()
                    self._timeouts = (_sysctl("nf_conntrack_udp_timeout", 30, self.sysctl_dir),
                                      _sysctl("nf_conntrack_udp_timeout_stream", 120,
                                              self.sysctl_dir))
                    self.overflow = 0
                self._dump = self._socket()
                self._seq += 1
                self._dump.send(_HDR.pack(_HDR.size + len(self._queue[0]), CT_GET,
                                          NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0)
                                + self._queue[0])
            n = self._dump.recv_into(buf)
            off = 0
            while off + _HDR.size <= n:
                length, kind, _, _, _ = _HDR.unpack_from(buf, off)
                if length < _HDR.size or kind in (NLMSG_DONE, NLMSG_ERROR):
                    self._end_dump(buf, off, kind)
                    break
                self._found(snap, view, off + _HDR.size, off + length, now)
                off += (length + 3) & ~3
        self._work += time.perf_counter() - began

    def _end_dump(self, buf: bytearray, off: int, kind: int) -> None:
        assert self._dump is not None
        self._dump.close()
        self._dump = None
        request_body = self._queue.pop(0)
        if kind == NLMSG_ERROR:
            err = -struct.unpack_from("=i", buf, off + _HDR.size)[0]
            if err in (errno.EINVAL, errno.EOPNOTSUPP) and request_body[4:]:
                # a kernel without CTA_FILTER (< 5.8): one unfiltered dump per family
                self._queue = [request(f) for f in (socket.AF_INET, socket.AF_INET6)]
            elif err:
                raise OSError(err, os.strerror(err))

    def _found(self, snap: Snapshot, view: memoryview, start: int, end: int,
               now: float) -> None:
        """One dumped entry: watched from now on if it can be a call (cheap test first)."""
        at = self._layout(view, start, end, counters=False)
        if at is None:
            snap.malformed += 1
            return
        status = _BE32.unpack_from(view, at[0])[0]
        timeout = _BE32.unpack_from(view, at[1])[0] if at[1] >= 0 else 0
        # the kernel sets a UDP entry's timeout to one of these on every packet; above
        # both: a TCP state's or a custom policy's (decoded and checked below)
        ceiling = self._timeouts[1] if status & IPS_ASSURED else self._timeouts[0]
        if timeout < ceiling - FRESH_SLACK_S and not status & IPS_OFFLOAD:
            snap.skipped += 1
            return
        try:
            key, e = _keyed(view, start, end)
        except (Malformed, KeyError, IndexError, struct.error):
            snap.malformed += 1
            return
        if e is None or not _wanted(e, self.ports):
            snap.skipped += 1
            return
        self._watch(snap, key, e, now)

    def _watch(self, snap: Snapshot, key: tuple[int, bytes], e: Entry, now: float) -> None:
        """A flow that can be a call: watched from now on, and in this poll's Snapshot."""
        if key in self.watched:
            return  # looked up already this poll
        if len(self.watched) >= MAX_WATCHED:
            self.overflow += 1
            return
        self.watched[key] = _Watched(key[0], e, now)
        snap.entries[e.key] = e
        snap.parsed += 1

    def _layout(self, view: memoryview, start: int, end: int, counters: bool = True
                ) -> _Layout | None:
        """Absolute payload offsets of status, timeout and the two counters (-1: absent)
        in one message, from offsets remembered per message length (entries of one family
        and kind share a layout) and checked against the attribute types each time (the
        counters' only when asked for)."""
        rel = self._layouts.get(end - start)
        if rel is None or not self._fits(view, start, rel if counters else rel[:2]):
            try:
                a = attr_spans(view, start + 4, end)
            except Malformed:
                return None
            if CTA_STATUS not in a:
                return None
            rel = (a[CTA_STATUS][0] - start, *(a[k][0] - start if k in a else -1
                                                for k in _COUNTED[1:]))
            if not self._fits(view, start, rel[:2]):
                return None
            if not self._fits(view, start, rel):  # padded counters (some architectures):
                rel = (*rel[:2], -1, -1)  # decode() reads those
            self._layouts[end - start] = rel
        return rel[0] + start, *(o if o < 0 else start + o for o in rel[1:])

    @staticmethod
    def _fits(view: memoryview, start: int, rel: tuple[int, ...]) -> bool:
        for o, kind in zip(rel, _COUNTED, strict=False):
            if o < 0:
                continue
            if _ATTR.unpack_from(view, start + o - 4)[1] & NLA_TYPE_MASK != kind:
                return False
            if kind in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY) and not (
                    _ATTR.unpack_from(view, start + o) == (12, 1)
                    and _ATTR.unpack_from(view, start + o + 12) == (12, 2)):
                return False  # packets then bytes, unpadded
        return True
