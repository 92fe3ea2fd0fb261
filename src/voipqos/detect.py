"""Call detection: a sequence of conntrack snapshots in, per-flow verdicts and calls out.
No I/O. The model and its measurements on real captures: docs/detection.md.

Each poll turns a UDP entry's counter deltas into a one-letter code for the interval
(voice-sized, weak voice, documented media port, video-call shape, one-way voice, bulk,
...). A flow is media when its last few codes look like a call: voice-sized both ways at
once (min_pps) or at a few pps for 2-3 intervals (WhatsApp sends ~8 pps, less in
silence), a video call's shape for 3 intervals, a one-way voice leg paired with its
return on another entry of the same LAN socket or far host (Telegram relays).
Documented media ports (media_ports) lower the bar. Media stays media through a few
seconds of silence once established; a first interval counts toward switching on but is
not classified yet; a new entry on a LAN socket inherits the socket's last call-shaped
interval (a call moving to another relay). A socket talking to many peers at once is a
game or P2P mesh, never a call. Media flows of one LAN socket or one LAN/far host pair
make one call; slow small flows between the same hosts (RTCP) join it, anything else (a
download from the same far host) does not. SIP is only a hint: WebRTC calls show none.
With the tc-BPF observer's header counters (`headers`, header_evidence.py) chained RTP
makes a flow media at once, whatever its rate (both ways, ours going out, or coming in at
voice size: not cloud gaming's video), and voice-sized traffic beside STUN checks both
ways (an ICE path) after 2 intervals; without them the verdicts are conntrack's alone.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from .config import Config, PortRange
from .conntrack import Entry, Key, Snapshot
from .header_evidence import HeaderCounts, HeaderKey

SIGNALLING, MEDIA, OTHER = "signalling", "media", "other"
UDP, TCP = 17, 6

# (ip proto number, src, dst, sport, dport): what the classifier's flow table holds
FiveTuple = tuple[int, str, str, int, int]


# Ports documented as call media; a flow with one of them needs less evidence (weaker
# voice rates count, video sizes count). Sources: STUN/TURN 3478 (RFC 8489, RFC 8656);
# Microsoft Teams media 3478-3481 and client ports 50000-50059 ("Microsoft 365 URLs and IP
# address ranges", "Prepare your organization's network for Teams"); Zoom 8801-8810
# ("Zoom network firewall or proxy server settings"); Google Meet 19302-19309 ("Prepare
# your network for Meet meetings and live streams"); FaceTime 16384-16387, 16393-16402
# (Apple "TCP and UDP ports used by Apple software products"). Telegram and WhatsApp
# document none: they are found by their rates (measured in docs/detection.md).
MEDIA_PORTS: tuple[PortRange, ...] = ((3478, 3481), (8801, 8810), (16384, 16387),
                                      (16393, 16402), (19302, 19309), (50000, 50059))


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
    media_ports: tuple[PortRange, ...] = MEDIA_PORTS

    @classmethod
    def from_config(cls, cfg: Config) -> DetectConfig:
        return cls(frozenset(cfg.sip_ports), cfg.rtp_ports, cfg.exclude_ports, cfg.min_pps,
                   cfg.max_pps, cfg.min_size, cfg.max_size, cfg.both_directions,
                   cfg.media_ports)


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


@dataclass(frozen=True, slots=True)
class Direction:
    """One direction's rate over the interval."""

    pps: float
    bps: float  # bytes per second

    @property
    def mean_size(self) -> float:
        return self.bps / self.pps if self.pps > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Flow:
    """A conntrack entry with rates, its verdict and the reasons for it."""

    entry: Entry
    verdict: str
    reasons: tuple[str, ...]
    out: Direction | None = None  # LAN host -> far host (orig direction if unknown)
    inb: Direction | None = None
    lan_side: str | None = None  # "orig" or "reply": which tuple the LAN host sent
    call: str | None = None
    pending: bool = False  # media for one interval only: counted, not yet classified
    rtp: bool = False  # media this interval by the observer's RTP headers

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


@dataclass(frozen=True, slots=True)
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
    rtp: bool = False  # one of its flows carried RTP headers this interval: a sure call


@dataclass(frozen=True, slots=True)
class Detection:
    flows: tuple[Flow, ...]
    calls: tuple[Call, ...]
    interval: float | None

    @property
    def tuples(self) -> frozenset[FiveTuple]:
        return frozenset().union(*(c.tuples for c in self.calls))

    @property
    def sure(self) -> bool:
        """A call's media carried RTP headers this interval (the observer saw them):
        `Hysteresis.step(..., sure=True)` switches on without waiting for more polls."""
        return any(c.rtp for c in self.calls)


@lru_cache(maxsize=16)
def _port_set(ranges: tuple[PortRange, ...]) -> bytes:
    """A 64 KiB membership table of port ranges: one index per lookup, for every UDP
    entry of a table of tens of thousands."""
    table = bytearray(65536)
    for lo, hi in ranges:
        table[lo:hi + 1] = b"\x01" * (hi - lo + 1)
    return bytes(table)


def _in_ranges(port: int, ranges: tuple[PortRange, ...]) -> bool:
    return _port_set(ranges)[port] == 1


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


def _band(name: str, d: Direction, cfg: DetectConfig, min_pps: float) -> str | None:
    """None if the direction looks like voice at >= min_pps, else why not."""
    if d.pps < min_pps:
        return f"{name} {d.pps:.1f} pps below {min_pps:g}"
    if d.pps > cfg.max_pps:
        return f"{name} {d.pps:.0f} pps above {cfg.max_pps:g}"
    if d.mean_size < cfg.min_size:
        return f"{name} mean {d.mean_size:.0f} B below {cfg.min_size}"
    if d.mean_size > cfg.max_size:
        return f"{name} mean {d.mean_size:.0f} B above {cfg.max_size}"
    return None


def _voice(d: Direction, cfg: DetectConfig, min_pps: float) -> bool:
    """`_band(...) is None` without building the reason: run for every UDP entry."""
    return min_pps <= d.pps <= cfg.max_pps and cfg.min_size <= d.mean_size <= cfg.max_size


def _misses(out: Direction, inb: Direction, cfg: DetectConfig) -> tuple[str, ...]:
    """Why the interval is not voice-sized, direction by direction."""
    found = tuple(m for m in (_band("out", out, cfg, cfg.min_pps),
                              _band("in", inb, cfg, cfg.min_pps)) if m)
    return found or (_describe(out, inb),)


def _describe(out: Direction, inb: Direction) -> str:
    return (f"out {out.pps:.0f} pps {out.mean_size:.0f} B, "
            f"in {inb.pps:.0f} pps {inb.mean_size:.0f} B")


# What one interval of a flow looked like (the per-flow history holds these codes only)
STRONG, WEAK, VIDEO, ONE_WAY, ALIVE, QUIET, BULK = "S", "W", "V", "O", "A", "-", "X"
TALK = "T"  # one side voice-sized at >= WEAK_PPS, the other a trickle or tiny frames (DTX,
# muted, comfort noise, keepalives)
PRIOR = "P"  # on a documented media port: weak voice or video sizes, both ways
RTP = "R"  # the observer saw RTP streams chain (header_evidence): both ways, or ours up
ICE = "I"  # voice-sized both ways beside STUN checks both ways lately (an ICE media path)
CALL_SHAPED = (RTP, STRONG, WEAK, PRIOR, ICE, VIDEO)
RANK = {RTP: 5, STRONG: 4, PRIOR: 3, ICE: 3, WEAK: 2, VIDEO: 1, "-": 0}
KEEP = frozenset((*CALL_SHAPED, ONE_WAY, TALK))
PENDING = "1 interval so far: counts toward switching on, not in the voice class yet"
WEAK_FIRST = "weak voice, first interval: a call if the next one keeps the rate"
ONE_WAY_SECOND = "one-way voice, 2 intervals at a steady rate: a call if the next keeps it"
HISTORY = 3  # intervals of codes kept per flow
PROBED_RECENT = 2.0  # s: a socket's probing still explains its first weak interval
HOLD = 6.0  # seconds a media flow stays media through silence (DTX, muted, a lost poll)
MAX_TRACKED = 4096  # flows with history; beyond it new candidates wait for a free slot
WEAK_PPS = 4.0  # the slowest voice packetisation (Opus 120 ms = 8.3 pps) half silent (DTX)
ALIVE_PPS = 0.5
VIDEO_MIN_PPS = 25.0  # a video leg: frames split into many packets
DUPLEX_MIN_SIZE = 500  # both directions this large: two cameras, not bulk + acks
# (one big direction with a small return is not enough: a QUIC or tunnelled download's
# acks look like voice; it found no call the rules above miss on the corpus)
VIDEO_MAX_PPS = 600.0  # above this, a flow is bulk (a 4 Mbit/s 720p stream is ~400 pps)
MEDIA_MAX_SIZE = 1400  # media packets stay under the path MTU (SRTP/DTLS, no fragments)
RTCP_MAX_PPS = 5.0


@dataclass(slots=True)
class _Track:
    codes: str = ""  # the last HISTORY interval codes, newest last
    media_at: float | None = None  # last time the flow showed media evidence
    rates: tuple[float, float] = (0.0, 0.0)  # the previous interval's pps out, in
    runs: int = 0  # intervals in a row with media evidence (held needs >= 2: established)


def _steady(before: tuple[float, float], out: Direction, inb: Direction) -> bool:
    """Both directions kept their packet rate (a codec's frame clock does; a handshake or
    a burst of probes does not): within 30 % plus 1.5 packets of counting jitter at the
    interval edges (WhatsApp: 6-10 pps from one second to the next)."""
    return all(abs(a - b) <= 0.3 * max(a, b) + 1.5
               for a, b in zip(before, (out.pps, inb.pps), strict=True))


def _code(out: Direction, inb: Direction, cfg: DetectConfig, prior: bool) -> str:
    """One interval of one flow, as a code; cheap: called for every UDP entry."""
    hi, lo = (out, inb) if out.pps >= inb.pps else (inb, out)
    if hi.pps > VIDEO_MAX_PPS or (hi.pps > cfg.max_pps and hi.mean_size <= cfg.max_size):
        return BULK
    if hi.pps < ALIVE_PPS:
        return QUIET
    if lo.pps < ALIVE_PPS:
        return ONE_WAY if _voice(hi, cfg, cfg.min_pps) else ALIVE
    if _voice(out, cfg, cfg.min_pps) and _voice(inb, cfg, cfg.min_pps):
        return STRONG
    if _voice(out, cfg, WEAK_PPS) and _voice(inb, cfg, WEAK_PPS):
        return PRIOR if prior else WEAK
    if prior and lo.pps >= WEAK_PPS and hi.mean_size <= MEDIA_MAX_SIZE:
        return PRIOR  # documented media port, both ways: audio or video of a call
    silent = lo.pps < WEAK_PPS and lo.mean_size <= cfg.max_size  # a trickle, DTX
    tiny = lo.mean_size < cfg.min_size <= hi.mean_size and lo.pps <= hi.pps  # comfort noise
    if _voice(hi, cfg, WEAK_PPS) and (silent or tiny):
        return TALK
    if lo.pps >= VIDEO_MIN_PPS and min(out.mean_size, inb.mean_size) >= DUPLEX_MIN_SIZE:
        return VIDEO
    return ALIVE


RTP_MIN = 2  # chained RTP packets a direction needs in an interval (a game's bytes chain
# by chance once in a while: 1 in the corpus' Epic Games capture)
ICE_RECENT = 10.0  # s a flow's STUN checks both ways mark it an ICE path (WebRTC repeats
# them every few seconds on the path in use: consent freshness, RFC 7675)


def _header_code(code: str, h: HeaderCounts, out: Direction, inb: Direction, dt: float,
                 cfg: DetectConfig, ice: bool) -> tuple[str, str | None]:
    """The interval's code with the observer's header counts `h` (deltas) and whether
    the flow checked STUN both ways lately; and the rule that changed it, if one did.
    RTP needs its own stream going out (our side talks or films) or both ways: a stream
    coming in alone is a call only at voice sizes (cloud gaming's video is RTP too)."""
    if code == BULK:
        return code, None
    few = max(RTP_MIN, WEAK_PPS * dt)
    if h.rtp_out >= RTP_MIN and h.rtp_in >= RTP_MIN:
        return RTP, f"RTP headers both ways: {h.rtp_out} out / {h.rtp_in} in this interval"
    if h.rtp_out >= few and (inb.pps >= ALIVE_PPS or _voice(out, cfg, WEAK_PPS)):
        return RTP, (f"RTP headers out: {h.rtp_out} this interval, "
                     + ("return flowing" if inb.pps >= ALIVE_PPS else "voice-sized"))
    if h.rtp_in >= few and out.pps >= ALIVE_PPS and _voice(inb, cfg, WEAK_PPS):
        return RTP, f"RTP headers in: {h.rtp_in} this interval at voice size, return flowing"
    if ice and code in (ALIVE, WEAK, TALK) and min(out.pps, inb.pps) * dt >= max(
            h.stun_out, h.stun_in) + 1 and max(out.mean_size, inb.mean_size) <= cfg.max_size:
        return ICE, None  # media packets both ways beside the checks, voice-sized
    return code, None


RESET = 1 << 31  # a "delta" this large is a counter that went back (observer reloaded)


def _since(now: HeaderCounts, before: HeaderCounts | None) -> HeaderCounts:
    """Packets counted since the last read; counters that went back (the observer was
    reloaded, its map entry evicted and re-added) count from zero, never as billions."""
    d = now.since(before)
    return now if max(d.rtp_out, d.rtp_in, d.stun_out, d.stun_in) >= RESET else d


def _header_notes(h: HeaderCounts | None, inb: Direction, cfg: DetectConfig
                  ) -> tuple[str, ...]:
    """What the observer counted, for the reasons (nothing when it counted nothing)."""
    if h is None or not (h.rtp_out or h.rtp_in or h.stun_out or h.stun_in):
        return ()
    seen = (f"headers this interval: RTP {h.rtp_out} out / {h.rtp_in} in, "
            f"STUN {h.stun_out} out / {h.stun_in} in",)
    if h.rtp_in >= RTP_MIN and h.rtp_out < RTP_MIN and inb.mean_size > cfg.max_size:
        return (*seen, "RTP coming in only, at video sizes: a stream (cloud gaming, TV), "
                "not a call")
    return seen


def _evidence(codes: str, cfg: DetectConfig, steady: bool, socket_before: str) -> str | None:
    """Why the flow's recent intervals make it call media now, or None; socket_before:
    the best code of the LAN socket's flows in the previous interval."""
    now = codes[-1:]
    if now == ICE and codes[-2:-1] in CALL_SHAPED:
        return "voice-sized both ways on an ICE path (STUN checks both ways) for 2 intervals"
    if now == STRONG:
        return "voice-sized both ways"
    if now == WEAK and PRIOR in (codes[-2:-1], socket_before):
        # the same flow, or the socket's relay leg on a documented port (WhatsApp starts
        # on its TURN relay at 3478 and moves to a direct/relay path on another port)
        return f"voice-sized both ways at >= {WEAK_PPS:g} pps after a documented media port"
    if now == WEAK and codes[-2:-1] == WEAK and steady:
        return f"voice-sized both ways at >= {WEAK_PPS:g} pps, steady rate for 2 intervals"
    if now == PRIOR and codes[-2:-1] in (STRONG, WEAK, PRIOR, VIDEO):
        return "call-shaped both ways on a documented media port for 2 intervals"
    if now == VIDEO and codes.endswith(VIDEO * 3):
        return "video both ways (two cameras) for 3 intervals"
    if now == ONE_WAY and (not cfg.both_directions or codes.endswith(ONE_WAY * 3)):
        return "one-way voice stream" + ("" if not cfg.both_directions else " for 3 intervals")
    return None


class Detector:
    """Detection state across polls: the daemon and `voipqos analyze` feed it the same
    snapshots in the same order, so offline analysis replays what the service decided.

    A flow is judged on its last few intervals, not one: strong voice evidence counts at
    once (detection within two polls), weaker evidence must last, and a flow once media
    stays media through a few seconds of silence. History is a few one-letter codes per
    flow, kept only for flows that may be calls and capped at MAX_TRACKED.
    """

    def __init__(self, cfg: DetectConfig) -> None:
        self.cfg = cfg
        self.prev: Snapshot | None = None
        self.tracks: dict[Key, _Track] = {}
        # LAN sockets whose flows were call-shaped last interval: (code, pps out, pps in)
        self.sockets: dict[tuple[str, int], tuple[str, tuple[float, float]]] = {}
        # LAN sockets that probed several peers at once lately (ICE, relay races): when
        # did they last
        self.probed: dict[tuple[str, int], float] = {}
        self.headers: Mapping[HeaderKey, HeaderCounts] | None = None  # the last poll's
        self.ice: dict[Key, float] = {}  # flows with STUN checks both ways: when last

    def update(self, snap: Snapshot, sides: Sides = Sides(), interval: float | None = None,
               headers: Mapping[HeaderKey, HeaderCounts] | None = None) -> Detection:
        """Account one snapshot (taken after the previous one) and decide on it.

        `headers`: the tc-BPF observer's cumulative RTP/STUN counters read with the
        snapshot (None: no observer; then the verdicts are conntrack's alone)."""
        prev = self.prev
        if interval is None and prev is not None:
            interval = snap.taken_at - prev.taken_at
        seen = None
        if headers is not None and self.headers is not None:  # deltas need a previous read
            seen = {k: _since(c, self.headers.get(k)) for k, c in headers.items()}
        det = self._decide(prev, snap, sides, interval, seen)
        self.prev, self.headers = snap, headers
        return det

    def _decide(self, prev: Snapshot | None, cur: Snapshot, sides: Sides,
                dt: float | None,
                seen: Mapping[HeaderKey, HeaderCounts] | None = None) -> Detection:
        cfg = self.cfg
        before = prev.entries if prev is not None else {}
        now = cur.taken_at
        flows: list[Flow] = []
        legs: dict[tuple, list[int]] = {}  # pairing keys of one-way legs -> flow indexes
        tracks: dict[Key, _Track] = {}
        sockets: dict[tuple[str, int], tuple[str, tuple[float, float]]] = {}
        rated = [classify(e, before.get(k), dt, cfg, sides) for k, e in cur.entries.items()]
        busy = _fan_out(rated, cfg.min_pps, both=False)
        probing = _fan_out(rated, WEAK_PPS, both=True)
        self.probed = {s: at for s, at in self.probed.items() if now - at <= PROBED_RECENT}
        self.probed.update((s, now) for s in probing)
        self.ice = {k: at for k, at in self.ice.items() if now - at <= ICE_RECENT}
        for f in rated:
            e, key = f.entry, f.entry.key
            if f.out is None or f.verdict != OTHER:
                flows.append(f)
                continue
            if _socket(f) in busy:
                self.tracks.pop(key, None)
                flows.append(Flow(e, OTHER, (f"one LAN socket busy with {busy[_socket(f)]} "
                                             "peers at once: a game or P2P mesh, not a call",
                                             _describe(f.out, f.inb)), f.out, f.inb, f.lan_side))
                continue
            prior = _in_ranges(e.orig.sport, cfg.media_ports) or \
                _in_ranges(e.orig.dport, cfg.media_ports)
            code = _code(f.out, f.inb, cfg, prior)
            h = seen.get(_far_key(f)) if seen is not None else None
            rule = None
            if h is not None:
                if h.stun_out and h.stun_in and (key in self.ice or
                                                 len(self.ice) < MAX_TRACKED):
                    self.ice[key] = now
                code, rule = _header_code(code, h, f.out, f.inb, dt or 1.0, cfg,
                                          key in self.ice)
            if code in (WEAK, PRIOR, ICE) and _socket(f) in probing:
                code = ALIVE  # weak evidence while the socket probes several peers
            t = self.tracks.get(key)
            if t is None and code in (QUIET, ALIVE, BULK):
                # classify's verdict and reasons stand: no history needed
                notes = _header_notes(h, f.inb, cfg)
                flows.append(Flow(e, OTHER, (*f.reasons, *notes), f.out, f.inb, f.lan_side)
                             if notes else f)
                continue
            if t is None:
                if len(tracks) >= MAX_TRACKED:  # bounded: a huge table cannot grow it
                    flows.append(f)
                    continue
                # a call moving to a new relay or candidate keeps its LAN socket: the new
                # entry starts from the socket's last call-shaped interval
                code0, rates0 = self.sockets.get(_socket(f), ("", (0.0, 0.0)))
                t = _Track(code0, rates=rates0)
            t.codes = (t.codes + code)[-HISTORY:]
            steady = _steady(t.rates, f.out, f.inb)
            why = rule or _evidence(t.codes, cfg, steady,
                                    self.sockets.get(_socket(f), ("",))[0])
            t.rates = (f.out.pps, f.inb.pps)
            if code == BULK:
                t.media_at, t.runs = None, 0
            elif why:
                t.media_at, t.runs = now, t.runs + 1
            elif t.runs >= 2 and code in (TALK, ONE_WAY) and t.media_at is not None:
                # an established call where one side talks and the other is silent (DTX,
                # muted, listening to a monologue) stays a call for as long as that lasts
                t.media_at = now
                why = "call continues: one side talking, the other silent (DTX/muted)"
            elif t.media_at is not None and now - t.media_at <= HOLD and code != QUIET \
                    and t.runs >= 2:
                why = f"held: media {now - t.media_at:.0f} s ago, still flowing (silence/DTX)"
            elif t.media_at is not None and (now - t.media_at > HOLD
                                             or (t.runs < 2 and code != ONE_WAY)):
                t.media_at, t.runs = None, 0  # a one-way leg waits for its pairing below
            if t.media_at is not None or any(c in KEEP for c in t.codes):
                tracks[key] = t  # history only while the flow can still become a call
            if code in CALL_SHAPED and RANK[code] >= RANK[sockets.get(_socket(f), ("-",))[0]]:
                sockets[_socket(f)] = (code, (f.out.pps, f.inb.pps))
            detail = (_describe(f.out, f.inb), *_header_notes(h, f.inb, cfg), *_notes(e))
            if code == ONE_WAY:  # a half of a call on two entries? decided below
                for k in (("socket", *_socket(f)), ("hosts", *f.hosts)):
                    legs.setdefault(k, []).append(len(flows) * 2 + (f.out.pps >= f.inb.pps))
            if why:
                # confirmed by a second interval: media before, or call-shaped at this rate
                pending = t.runs == 1 and code != RTP and not (
                    t.codes[-2:-1] in (*CALL_SHAPED, ONE_WAY) and steady)
                f = Flow(e, MEDIA, (why, *detail, *(["documented media port"] if prior else []),
                                    *([PENDING] if pending else [])),
                         f.out, f.inb, f.lan_side, pending=pending, rtp=code == RTP)
            elif t.codes[-2:-1] not in CALL_SHAPED and (code in (PRIOR, ICE) or (
                    code == WEAK and _socket(f) in self.probed and _socket(f) not in probing)):
                f = Flow(e, MEDIA, (WEAK_FIRST, *detail, PENDING), f.out, f.inb, f.lan_side,
                         pending=True)
            elif code == ONE_WAY and t.codes.endswith(ONE_WAY * 2) and steady:
                f = Flow(e, MEDIA, (ONE_WAY_SECOND, *detail, PENDING), f.out, f.inb,
                         f.lan_side, pending=True)
            elif code == ONE_WAY:
                f = Flow(e, OTHER, ("one-way voice leg, no return leg yet", *detail),
                         f.out, f.inb, f.lan_side)
            else:
                f = Flow(e, OTHER, (*_misses(f.out, f.inb, cfg),
                                    f"not call-shaped over {len(t.codes)} interval(s)",
                                    *detail[1:]), f.out, f.inb, f.lan_side)
            flows.append(f)
        self.tracks, self.sockets = tracks, sockets
        # one-way legs of one LAN socket or one far host, both directions present: a call
        # whose halves are separate entries (Telegram relays, asymmetric RTP ports)
        paired = {i >> 1 for group in legs.values() if {i & 1 for i in group} == {0, 1}
                  for i in group}
        for i in sorted(paired):
            f = flows[i]
            tr = self.tracks.get(f.entry.key)
            pending = f.verdict != MEDIA and (tr is None or tr.codes[-2:-1] != ONE_WAY)
            if f.verdict != MEDIA and tr is not None:
                tr.media_at, tr.runs = now, tr.runs + 1
            flows[i] = Flow(f.entry, MEDIA, (
                "paired one-way legs: out and in on separate entries",
                _describe(f.out, f.inb), *_notes(f.entry), *([PENDING] if pending else [])),
                f.out, f.inb, f.lan_side, pending=pending)
        return _group(flows, dt, cfg)


FAN_OUT = 3  # far peers one LAN socket exchanges >= min_pps with at once: not a 1:1 call


def _far_key(f: Flow) -> HeaderKey:
    """How the observer keys the flow: a packet arriving at the WAN device (far address,
    far port, the router's port): the reply tuple's source side of an outbound entry, the
    original's of a port-forwarded one."""
    t = f.entry.orig if f.lan_side == "reply" else f.entry.reply
    return (t.src, t.sport, t.dport)


def _socket(f: Flow) -> tuple[str, int]:
    """The LAN host's end of a flow (orig source when the side is unknown)."""
    if f.lan_side == "reply":
        return (f.entry.reply.src, f.entry.reply.sport)
    return (f.entry.orig.src, f.entry.orig.sport)


def _fan_out(flows: list[Flow], pps: float, both: bool) -> dict[tuple[str, int], int]:
    """LAN sockets exchanging >= pps (in one direction, or both) with FAN_OUT or more far
    hosts in this interval. A call's socket talks to one peer (ICE settles on one pair;
    the others get a few STUN checks); a game or BitTorrent mesh talks to many, and a
    socket still probing several candidates has not settled on a call yet."""
    peers: dict[tuple[str, int], set[str]] = {}
    for f in flows:
        if f.out is not None and (min if both else max)(f.out.pps, f.inb.pps) >= pps:
            peers.setdefault(_socket(f), set()).add(f.hosts[1])
    return {s: len(p) for s, p in peers.items() if len(p) >= FAN_OUT}


def _companion(f: Flow, cfg: DetectConfig) -> bool:
    """RTCP and similar control flows of a call: UDP, slow and small."""
    return (f.entry.proto == "udp" and f.out is not None and f.inb is not None
            and f.out.pps + f.inb.pps > 0 and f.out.pps <= RTCP_MAX_PPS
            and f.inb.pps <= RTCP_MAX_PPS
            and max(f.out.mean_size, f.inb.mean_size) <= cfg.max_size)


def _group(flows: list[Flow], interval: float | None, cfg: DetectConfig) -> Detection:
    """Media flows into calls: one call per LAN host and far host, merged when one LAN
    socket talks to several far hosts (a relay for each direction, TURN and direct)."""
    parent: dict[tuple, tuple] = {}

    def find(x: tuple) -> tuple:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    media = [f for f in flows if f.verdict == MEDIA]
    for f in media:
        a, b = find(("h", *f.hosts)), find(("p", *_socket(f)))
        if a != b:
            parent[b] = a
    pairs: dict[tuple[str, str], bool] = {}  # host pair -> all its media still pending
    for f in media:
        pairs[f.hosts] = pairs.get(f.hosts, True) and f.pending
    sip_hosts = {h for f in flows if f.verdict == SIGNALLING for h in f.hosts}
    members: dict[tuple, list[Flow]] = {}
    result: list[Flow] = []
    for f in flows:
        if f.verdict == OTHER and f.hosts in pairs and f.out is not None:
            if _companion(f, cfg):
                pending = pairs[f.hosts]  # a call not confirmed yet: nor its companions
                f = Flow(f.entry, MEDIA, ("RTCP-like companion of call media", *f.reasons,
                                          *([PENDING] if pending else [])),
                         f.out, f.inb, f.lan_side, pending=pending)
            else:
                f = Flow(f.entry, OTHER, (*f.reasons, "same hosts as a call, not call-shaped: "
                                          "kept out of the voice class"),
                         f.out, f.inb, f.lan_side)
        if f.verdict == MEDIA:
            root = find(("h", *f.hosts))
            lan, far = root[1], root[2]
            f = Flow(f.entry, f.verdict, f.reasons, f.out, f.inb, f.lan_side,
                     call=f"{lan}>{far}", pending=f.pending, rtp=f.rtp)
            members.setdefault(root, []).append(f)
        result.append(f)
    calls = []
    for (_, lan, far), group in sorted(members.items()):
        out = Direction(sum(f.out.pps for f in group), sum(f.out.bps for f in group))
        inb = Direction(sum(f.inb.pps for f in group), sum(f.inb.bps for f in group))
        calls.append(Call(
            id=f"{lan}>{far}", lan_host=lan, far_host=far,
            flows=tuple(f.entry.key for f in group), out=out, inb=inb,
            sip=lan in sip_hosts, lan_known=all(f.lan_side for f in group),
            tuples=frozenset(t for f in group if not f.pending for t in f.tuples()),
            rtp=any(f.rtp for f in group)))
    return Detection(tuple(result), tuple(calls), interval)


def classify(e: Entry, prev: Entry | None, dt: float | None, cfg: DetectConfig,
             sides: Sides) -> Flow:
    """One entry's rates and the verdicts that need no history (SIP, excluded ports, no
    counters); everything else comes back OTHER with its rates and why one interval is
    not voice-sized, for the Detector to judge over the flow's history."""
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
    return Flow(e, OTHER, (*_misses(out, inb, cfg), *_notes(e)), out, inb, side)


def _notes(e: Entry) -> tuple[str, ...]:
    return ("offloaded: counters may be frozen",) if e.offloaded else ()


def detect(prev: Snapshot | None, cur: Snapshot, cfg: DetectConfig,
           sides: Sides = Sides(), interval: float | None = None) -> Detection:
    """Verdicts for `cur` with `prev` as the only history (a fresh Detector)."""
    d = Detector(cfg)
    if prev is not None:
        d.update(prev, sides)
    return d.update(cur, sides, interval)
