"""Call detection: two conntrack snapshots in, per-flow verdicts and calls out. No I/O.

A call is media between one LAN host and one far host: at least one UDP flow whose
packet rate and mean packet size sit in the configured voice band (in both directions
unless configured otherwise). Other UDP flows between the same two hosts (RTCP, video)
join the call. SIP is only a hint: WebRTC-style calls show no SIP at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from .config import Config, PortRange
from .conntrack import Entry, Key, Snapshot

SIGNALLING, MEDIA, OTHER = "signalling", "media", "other"
UDP, TCP = 17, 6

# (ip proto number, src, dst, sport, dport): what the classifier's flow table holds
FiveTuple = tuple[int, str, str, int, int]


@dataclass(frozen=True)
class DetectConfig:
    sip_ports: frozenset[int] = frozenset({5060, 5061})
    rtp_ports: tuple[PortRange, ...] = ()
    exclude_ports: tuple[PortRange, ...] = ((53, 53), (67, 68), (123, 123), (137, 138),
                                            (1900, 1900), (5353, 5353))
    min_pps: float = 12.0
    max_pps: float = 130.0
    min_size: int = 60
    max_size: int = 400
    both_directions: bool = True

    @classmethod
    def from_config(cls, cfg: Config) -> DetectConfig:
        return cls(frozenset(cfg.sip_ports), cfg.rtp_ports, cfg.exclude_ports, cfg.min_pps,
                   cfg.max_pps, cfg.min_size, cfg.max_size, cfg.both_directions)


@dataclass(frozen=True)
class Sides:
    """What the router knows about itself: its WAN addresses and its LAN networks.

    Empty for an offline snapshot: then calls are still separated by host pair, only
    which end is "ours" stays unknown.
    """

    wan_addrs: frozenset[str] = frozenset()
    lan_nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def is_lan(self, addr: str) -> bool:
        return bool(self.lan_nets) and _in_nets(addr, self.lan_nets)


@lru_cache(maxsize=8192)
def _in_nets(addr: str, nets: tuple) -> bool:
    ip = ipaddress.ip_address(addr)
    return any(ip.version == n.version and ip in n for n in nets)


@dataclass(frozen=True)
class Direction:
    """One direction's rate over the interval."""

    pps: float
    bps: float  # bytes per second

    @property
    def mean_size(self) -> float:
        return self.bps / self.pps if self.pps > 0 else 0.0


@dataclass(frozen=True)
class Flow:
    """A conntrack entry with rates, its verdict and the reasons for it."""

    entry: Entry
    verdict: str
    reasons: tuple[str, ...]
    out: Direction | None = None  # LAN host -> far host (orig direction if unknown)
    inb: Direction | None = None
    lan_side: str | None = None  # "orig" or "reply": which tuple the LAN host sent
    call: str | None = None

    @property
    def hosts(self) -> tuple[str, str]:
        """(LAN host, far host); sorted when the side is unknown, so a pair is one call
        whichever end sent first."""
        o = self.entry.orig
        if self.lan_side == "orig":
            return (o.src, o.dst)
        if self.lan_side == "reply":
            return (self.entry.reply.src, o.src)
        a, b = sorted((o.src, o.dst))
        return (a, b)

    def tuples(self) -> tuple[FiveTuple, FiveTuple]:
        """Both directions as the kernel sees them (orig pre-NAT, reply post-NAT)."""
        e = self.entry
        proto = UDP if e.proto == "udp" else TCP
        o, r = e.orig, e.reply
        return ((proto, o.src, o.dst, o.sport, o.dport), (proto, r.src, r.dst, r.sport, r.dport))


@dataclass(frozen=True)
class Call:
    id: str
    lan_host: str
    far_host: str
    flows: tuple[Key, ...]
    out: Direction
    inb: Direction
    sip: bool
    lan_known: bool
    tuples: frozenset[FiveTuple] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Detection:
    flows: tuple[Flow, ...]
    calls: tuple[Call, ...]
    interval: float | None

    @property
    def tuples(self) -> frozenset[FiveTuple]:
        return frozenset().union(*(c.tuples for c in self.calls))


def _in_ranges(port: int, ranges: Iterable[PortRange]) -> bool:
    return any(lo <= port <= hi for lo, hi in ranges)


def lan_side(e: Entry, sides: Sides) -> str | None:
    """Which tuple the LAN host sent: known from NAT, else from the LAN networks."""
    o, r = e.orig, e.reply
    if r.dst in sides.wan_addrs and r.dst != o.src:
        return "orig"  # source NAT: an outbound flow, the LAN host sent first
    if o.dst in sides.wan_addrs and r.src != o.dst:
        return "reply"  # destination NAT / port forward: the far end sent first
    if o.src in sides.wan_addrs:
        return "orig"  # the router itself is the endpoint
    if o.dst in sides.wan_addrs:
        return "reply"
    src_lan, dst_lan = sides.is_lan(o.src), sides.is_lan(o.dst)
    if src_lan and not dst_lan:
        return "orig"
    if dst_lan and not src_lan:
        return "reply"
    return None


def _delta(now: int | None, before: int | None) -> int | None:
    if now is None:
        return None
    if before is None or now < before:  # new entry, or replaced/wrapped: count from zero
        return now
    return now - before


def _directions(e: Entry, prev: Entry | None, dt: float) -> tuple[Direction, Direction] | None:
    """Orig and reply rates over dt, None when the kernel keeps no counters."""
    p = prev if prev is not None and prev.orig_packets is not None else None
    vals = [
        _delta(getattr(e, f), getattr(p, f) if p else None)
        for f in ("orig_packets", "orig_bytes", "reply_packets", "reply_bytes")
    ]
    if any(v is None for v in vals):
        return None
    op, ob, rp, rb = (v / dt for v in vals)  # type: ignore[operator]
    return Direction(op, ob), Direction(rp, rb)


def _band(name: str, d: Direction, cfg: DetectConfig) -> str | None:
    """None if the direction looks like voice, else why not."""
    if d.pps < cfg.min_pps:
        return f"{name} {d.pps:.1f} pps below {cfg.min_pps:g}"
    if d.pps > cfg.max_pps:
        return f"{name} {d.pps:.0f} pps above {cfg.max_pps:g}"
    if d.mean_size < cfg.min_size:
        return f"{name} mean {d.mean_size:.0f} B below {cfg.min_size}"
    if d.mean_size > cfg.max_size:
        return f"{name} mean {d.mean_size:.0f} B above {cfg.max_size}"
    return None


def classify(e: Entry, prev: Entry | None, dt: float | None, cfg: DetectConfig,
             sides: Sides) -> Flow:
    """The verdict for one entry on its own (call grouping comes after)."""
    side = lan_side(e, sides)
    o = e.orig
    ports = (o.sport, o.dport)
    sip = [p for p in reversed(ports) if p in cfg.sip_ports]
    if sip:
        return Flow(e, SIGNALLING, (f"SIP port {sip[0]}/{e.proto}",), lan_side=side)
    if e.proto != "udp":
        return Flow(e, OTHER, ("not UDP",), lan_side=side)
    excluded = [p for p in ports if _in_ranges(p, cfg.exclude_ports)]
    if excluded:
        return Flow(e, OTHER, (f"port {excluded[0]} excluded",), lan_side=side)
    if cfg.rtp_ports and not any(_in_ranges(p, cfg.rtp_ports) for p in ports):
        return Flow(e, OTHER, ("ports outside rtp_ports",), lan_side=side)
    if dt is None or dt <= 0:
        return Flow(e, OTHER, ("no rate yet (first snapshot)",), lan_side=side)
    dirs = _directions(e, prev, dt)
    if dirs is None:
        return Flow(e, OTHER, ("no counters: nf_conntrack_acct is off",), lan_side=side)
    out, inb = dirs if side != "reply" else dirs[::-1]
    notes = ["offloaded: counters may be frozen"] if e.offloaded else []
    misses = [m for m in (_band("out", out, cfg), _band("in", inb, cfg)) if m]
    voice = len(misses) == 0 if cfg.both_directions else len(misses) < 2
    if voice:
        reasons = [f"{n} {d.pps:.0f} pps, mean {d.mean_size:.0f} B"
                   for n, d in (("out", out), ("in", inb)) if _band(n, d, cfg) is None]
        return Flow(e, MEDIA, (*reasons, *notes), out, inb, side)
    return Flow(e, OTHER, (*misses, *notes), out, inb, side)


def detect(prev: Snapshot | None, cur: Snapshot, cfg: DetectConfig,
           sides: Sides = Sides(), interval: float | None = None) -> Detection:
    """Verdicts for every parsed entry of `cur` and the calls they make up.

    The interval is `cur.taken_at - prev.taken_at` unless given (offline analysis).
    """
    if interval is None and prev is not None:
        interval = cur.taken_at - prev.taken_at
    before = prev.entries if prev is not None else {}
    flows = [classify(e, before.get(k), interval, cfg, sides) for k, e in cur.entries.items()]

    pairs = {f.hosts for f in flows if f.verdict == MEDIA}
    sip_hosts = {h for f in flows if f.verdict == SIGNALLING for h in f.hosts}
    grouped: dict[tuple[str, str], list[Flow]] = {p: [] for p in pairs}
    result: list[Flow] = []
    for f in flows:
        pair = f.hosts
        if pair in grouped:
            if f.verdict == OTHER and f.entry.proto == "udp" and f.out is not None:
                f = Flow(f.entry, MEDIA, ("same hosts as call media (RTCP/video)",
                                          *f.reasons), f.out, f.inb, f.lan_side)
            if f.verdict == MEDIA:
                f = Flow(f.entry, f.verdict, f.reasons, f.out, f.inb, f.lan_side,
                         call=f"{pair[0]}>{pair[1]}")
                grouped[pair].append(f)
        result.append(f)

    calls = []
    for (lan, far), members in sorted(grouped.items()):
        out = Direction(sum(f.out.pps for f in members), sum(f.out.bps for f in members))
        inb = Direction(sum(f.inb.pps for f in members), sum(f.inb.bps for f in members))
        calls.append(Call(
            id=f"{lan}>{far}", lan_host=lan, far_host=far,
            flows=tuple(f.entry.key for f in members), out=out, inb=inb,
            sip=lan in sip_hosts, lan_known=all(f.lan_side for f in members),
            tuples=frozenset(t for f in members for t in f.tuples()),
        ))
    return Detection(tuple(result), tuple(calls), interval)


class Detector:
    """Detection state across polls: the daemon and `voipqos analyze` feed it the same
    snapshots in the same order, so offline analysis replays what the service decided."""

    def __init__(self, cfg: DetectConfig) -> None:
        self.cfg = cfg
        self.prev: Snapshot | None = None

    def update(self, snap: Snapshot, sides: Sides = Sides(),
               interval: float | None = None) -> Detection:
        """Account one snapshot (taken after the previous one) and decide on it."""
        det = detect(self.prev, snap, self.cfg, sides, interval)
        self.prev = snap
        return det
