"""What the tc-BPF observer counts from UDP packet headers, as pure reference code.

Rates from conntrack cannot tell a call from a game or a tunnel that sends the same
packet sizes; the first 12 bytes of a call's packets can. RTP keeps its header in clear
text in SRTP too (RFC 3711 encrypts only the payload): version 2 in the first two bits,
a sequence number that goes up by one per packet and a fixed SSRC per stream (RFC 3550
5.1). STUN/TURN messages carry the magic cookie 0x2112A442 at bytes 4-7 (RFC 8489 6).
Games, WireGuard, OpenVPN, QUIC (first bits 01 or 11, RFC 9000 17) and uTP show neither.

This module is the specification of `voipqos_observe` in bpf/voipqos.c: the kernel test
feeds both the same packets and compares the counters. Per flow (keyed as the packet is
seen arriving at the WAN device: far address, far port, near port) and per direction the
observer keeps two SSRC slots (audio and video bundled on one 5-tuple) and counts
- `rtp`: packets that continue a stream: version 2, not RTCP, an SSRC in a slot and a
  sequence number 1..RTP_CHAIN_GAP after that slot's last one (a thinned or lossy stream
  still chains; random bytes match a 32-bit SSRC and a close sequence almost never);
- `stun`: STUN/TURN messages (first two bits 00 and the magic cookie).
Counters are cumulative and wrap at 2**32 like the kernel's; the detector takes deltas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RTP_CHAIN_GAP = 64  # sequence numbers a chained packet may skip forward (loss, thinning)
STUN_COOKIE = b"\x21\x12\xa4\x42"
RTCP_TYPES = range(72, 77)  # RTCP SR..APP (200-204) seen as RTP's marker bit + 7-bit PT
HEAD_LEN = 12  # bytes of UDP payload the observer reads: the fixed RTP header
COUNTER_MOD = 1 << 32
DNS_PORT = 53  # the observer skips it (worth_tracking)

OUT, IN = 0, 1  # leaving through the WAN device / arriving through it

# (far address, far port, near port): the conntrack reply tuple's src, sport and dport,
# which is what a packet arriving at the WAN device carries with or without NAT
HeaderKey = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class HeaderCounts:
    """Cumulative per-flow counters, as the daemon reads them from the kernel map."""

    rtp_out: int = 0
    rtp_in: int = 0
    stun_out: int = 0
    stun_in: int = 0

    def since(self, before: HeaderCounts | None) -> HeaderCounts:
        """Packets counted since `before` (None: since the flow was first seen)."""
        if before is None:
            return self
        return HeaderCounts(*((a - b) % COUNTER_MOD for a, b in zip(
            (self.rtp_out, self.rtp_in, self.stun_out, self.stun_in),
            (before.rtp_out, before.rtp_in, before.stun_out, before.stun_in), strict=True)))


def is_stun(head: bytes) -> bool:
    return len(head) >= 8 and head[0] & 0xC0 == 0 and head[4:8] == STUN_COOKIE


def rtp_fields(head: bytes) -> tuple[int, int] | None:
    """(SSRC, sequence number) of a packet that may be RTP, else None."""
    if len(head) < HEAD_LEN or head[0] >> 6 != 2 or head[1] & 0x7F in RTCP_TYPES:
        return None
    return int.from_bytes(head[8:12], "big"), int.from_bytes(head[2:4], "big")


@dataclass(slots=True)
class _Direction:
    ssrc: list[int | None] = field(default_factory=lambda: [None, None])
    seq: list[int] = field(default_factory=lambda: [0, 0])
    last: int = 0  # the slot that matched or was filled most recently
    rtp: int = 0
    stun: int = 0

    def packet(self, head: bytes) -> None:
        if is_stun(head):
            self.stun = (self.stun + 1) % COUNTER_MOD
            return
        fields = rtp_fields(head)
        if fields is None:
            return
        ssrc, seq = fields
        for i in (0, 1):
            if self.ssrc[i] == ssrc:
                if 1 <= (seq - self.seq[i]) % 65536 <= RTP_CHAIN_GAP:
                    self.rtp = (self.rtp + 1) % COUNTER_MOD
                self.seq[i], self.last = seq, i
                return
        i = 1 - self.last  # a new SSRC takes the slot that was not used last
        self.ssrc[i], self.seq[i], self.last = ssrc, seq, i


@dataclass(slots=True)
class FlowHeaders:
    """The observer's state for one flow: both directions."""

    dirs: tuple[_Direction, _Direction] = field(
        default_factory=lambda: (_Direction(), _Direction()))

    def packet(self, direction: int, head: bytes) -> None:
        self.dirs[direction].packet(head[:HEAD_LEN])

    def counts(self) -> HeaderCounts:
        o, i = self.dirs
        return HeaderCounts(o.rtp, i.rtp, o.stun, i.stun)


def worth_tracking(head: bytes, ports: tuple[int, ...] = ()) -> bool:
    """Whether a packet makes the observer add its flow to the map: only packets that
    could be RTP or STUN do, so QUIC, tunnels and games never take a map entry. DNS never
    does (`ports`: the datagram's UDP ports): a quarter of its random query IDs start
    with RTP's version bits, and the router's own resolver sends every query from a new
    port, which would fill the map with flows that are never calls."""
    return DNS_PORT not in ports and (is_stun(head) or rtp_fields(head) is not None)
