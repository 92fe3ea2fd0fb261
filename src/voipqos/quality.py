"""Call quality from the classifier's per-direction RTP counters: loss, jitter, where
the trouble is, and a MOS estimate. Pure: no kernel, no clock.

The kernel side (bpf/voipqos.c, `struct rtp_dir` in bpf/voipqos.h) does RFC 3550's
sequence accounting (A.1) and interarrival jitter (A.8) on every call packet at the WAN
device. `RtpReceiver` here is the same arithmetic written plainly, the reference the
kernel is tested against and what a lab script uses on captured packets.

Direction at the WAN device says where a problem lies: gaps in packets *leaving*
through the WAN were lost before the router (the phone, Wi-Fi, the LAN); gaps in
packets *arriving* from the WAN were lost on the internet side (the far end, the
provider, the modem). What the router cannot see is in docs/quality.md: loss after the
router, packets the endpoints' jitter buffers drop, one-way delay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

DIRECTIONS = ("egress", "ingress")   # struct flow_state.dir[]: DIR_EGRESS, DIR_INGRESS
WHERE = {"egress": "on the Wi-Fi/LAN side", "ingress": "on the internet side"}
SEQ_MOD = 1 << 16
MAX_DROPOUT, MAX_MISORDER = 3000, 100   # RTP_MAX_DROPOUT, RTP_MAX_MISORDER (RFC 3550 A.1)
LOSS_WORTH_SAYING = 1.0   # percent
JITTER_WORTH_SAYING = 30.0   # ms: about what a default jitter buffer absorbs


@dataclass(frozen=True)
class Report:
    """The first report block of the last RTCP SR/RR seen going one way: what the
    endpoint that sent it says about the stream it receives (plain RTP only: SRTCP
    encrypts it)."""

    ssrc: int                 # the stream reported on
    fraction_lost: float      # percent, over the interval since its previous report
    cumulative_lost: int
    jitter_ts: int            # RTP timestamp units of the reported stream
    reports: int
    lsr: int = 0              # middle 32 bits of the NTP time of the SR it last received
    dlsr: int = 0             # delay since that SR, 1/65536 s
    at_ns: int = 0            # when the router saw it (CLOCK_MONOTONIC)

    def jitter_ms(self, clock_hz: int | None) -> float | None:
        return self.jitter_ts * 1e3 / clock_hz if clock_hz else None


@dataclass(frozen=True)
class SenderReport:
    """The last RTCP SR seen going one way: its NTP time (middle 32 bits), which the
    peer's next report echoes as LSR, and when the router saw it."""

    ntp_mid: int
    at_ns: int


def report(c: dict[str, int]) -> Report | None:
    """The report block of an unpacked `struct rtcp_report`, None if none was seen."""
    if not c["reports"]:
        return None
    lost = c["cum_lost"] - (1 << 24) if c["cum_lost"] & 0x800000 else c["cum_lost"]
    return Report(c["ssrc"], 100.0 * c["fraction_lost"] / 256, lost, c["jitter"],
                  c["reports"], c["lsr"], c["dlsr"], c["block_ns"])


def sender_report(c: dict[str, int]) -> SenderReport | None:
    return SenderReport(c["sr_ntp_mid"], c["sr_ns"]) if c["srs"] else None


def round_trip_ms(sr: SenderReport | None, rep: Report | None) -> float | None:
    """RFC 3550 6.4.1's round trip, measured at the router: from the SR passing it to
    the report that echoes it coming back, less the time the endpoint held it. That is
    the router's round trip to the endpoint the SR went to."""
    if sr is None or rep is None or not rep.lsr or rep.lsr != sr.ntp_mid:
        return None
    rtt = (rep.at_ns - sr.at_ns) / 1e6 - rep.dlsr * 1e3 / 65536
    return rtt if rtt >= 0 else None


@dataclass(frozen=True)
class Direction:
    """One direction of one call flow, as the classifier counted it."""

    packets: int
    bytes: int
    rtp: bool                    # an RTP stream was recognised (V=2, one SSRC, seq + 1)
    ssrc: int | None = None
    payload_type: int | None = None
    clock_hz: int | None = None  # from the static payload type, or estimated; None unknown
    expected: int = 0
    received: int = 0
    duplicates: int = 0
    reordered: int = 0
    other_ssrc: int = 0          # packets of other streams on the flow (bundled video)
    restarts: int = 0            # SSRC changes and sequence jumps
    jitter_ms: float | None = None
    carried_report: Report | None = None   # an RTCP report block travelling this way
    carried_sr: SenderReport | None = None  # an RTCP SR travelling this way

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

    @property
    def loss_percent(self) -> float | None:
        return 100.0 * self.lost / self.expected if self.expected else None

    def as_dict(self) -> dict:
        d = asdict(self)
        del d["carried_report"], d["carried_sr"]
        d["lost"], d["loss_percent"] = self.lost, self.loss_percent
        return d


def direction(counters: dict[str, int]) -> Direction:
    """A `Direction` from an unpacked `struct rtp_dir` (field names of voipqos.h)."""
    c = counters
    received = c["received_prior"] + c["received"]
    rtcp, sr = report(c["rtcp"]), sender_report(c["rtcp"])
    if not received:
        return Direction(c["packets"], c["bytes"], rtp=False, carried_report=rtcp,
                         carried_sr=sr)
    current = c["cycles"] + c["max_seq"] - c["base_seq"] + 1 if c["received"] else 0
    return Direction(
        c["packets"], c["bytes"], rtp=True, ssrc=c["ssrc"], payload_type=c["pt"],
        clock_hz=c["clock_hz"] or None, expected=c["expected_prior"] + current,
        received=received, duplicates=c["duplicates"], reordered=c["reordered"],
        other_ssrc=c["other_ssrc"], restarts=c["restarts"],
        jitter_ms=c["jitter16_ns"] / 16 / 1e6 if c["clock_hz"] else None, carried_report=rtcp,
        carried_sr=sr)


def busiest(candidates: Iterable[Direction | None]) -> Direction | None:
    """Of the same direction in several table entries (a call's orig and reply tuples:
    with NAT both WAN directions hit the reply entry, without NAT each its own), the
    one that saw the call's packets."""
    return max((d for d in candidates if d is not None), key=lambda d: d.packets, default=None)


# --- MOS: ITU-T G.107 E-model, simplified (docs/quality.md) ---------------------------

# (Ie, Bpl) per payload type, ITU-T G.113 Appendix I; G.711 with PLC for the rest
CODEC_IMPAIRMENT = {0: (0.0, 25.1), 8: (0.0, 25.1), 18: (11.0, 19.0), 9: (0.0, 25.1)}
DEFAULT_IMPAIRMENT = (0.0, 25.1)
PACKET_MS = 20.0   # packetisation assumed (the router does not read ptime)


def r_factor(loss_percent: float, delay_ms: float, ie: float = 0.0, bpl: float = 25.1) -> float:
    """R = 93.2 - Id - Ie,eff with Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3) and
    Ie,eff = Ie + (95 - Ie) Ppl / (Ppl + Bpl) (random loss, BurstR = 1)."""
    d = delay_ms
    id_ = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    ie_eff = ie + (95.0 - ie) * loss_percent / (loss_percent + bpl)
    return 93.2 - id_ - ie_eff


def mos(r: float) -> float:
    """G.107 Annex B: R to MOS-CQE (the polynomial dips just under 1 for small R)."""
    if r >= 100:
        return 4.5
    return max(1.0, 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)) if r > 0 else 1.0


def visible_delay_ms(d: Direction, beyond_ms: float = 0.0) -> float:
    """The part of mouth-to-ear delay the router can reason about: one packet, a jitter
    buffer of twice the jitter (at least one packet), plus `beyond_ms` if known."""
    jitter = d.jitter_ms or 0.0
    return PACKET_MS + max(2 * jitter, PACKET_MS) + beyond_ms


def mos_estimate(d: Direction | None, beyond_ms: float = 0.0) -> float | None:
    """MOS for the listener of this direction's stream; None when no RTP was seen.
    An upper bound: loss and delay the router cannot see are not in it."""
    if d is None or not d.rtp or d.loss_percent is None:
        return None
    ie, bpl = CODEC_IMPAIRMENT.get(d.payload_type or -1, DEFAULT_IMPAIRMENT)
    return round(mos(r_factor(d.loss_percent, visible_delay_ms(d, beyond_ms), ie, bpl)), 2)


# --- words ----------------------------------------------------------------------------

def trouble(name: str, d: Direction | None) -> str | None:
    """One sentence for a direction worth mentioning, else None."""
    if d is None or not d.rtp:
        return None
    parts = []
    if (d.loss_percent or 0.0) >= LOSS_WORTH_SAYING:
        parts.append(f"losing {d.loss_percent:.0f} %")
    if d.jitter_ms is not None and d.jitter_ms >= JITTER_WORTH_SAYING:
        parts.append(f"jitter {d.jitter_ms:.0f} ms")
    return f"{' and '.join(parts)} {WHERE[name]}" if parts else None


@dataclass(frozen=True)
class CallQuality:
    egress: Direction | None
    ingress: Direction | None
    # what the receiving endpoint reports (RTCP) about each direction's stream
    reports: dict[str, Report] = field(default_factory=dict)
    # the router's round trip to each side, from RTCP SR/report pairs: "internet", "lan"
    rtt_ms: dict[str, float] = field(default_factory=dict)

    @property
    def beyond_ms(self) -> float:
        """One-way network delay the RTCP round trips show (half of each side's)."""
        return sum(self.rtt_ms.values()) / 2

    @property
    def known(self) -> bool:
        return any(d is not None and d.rtp for d in (self.egress, self.ingress))

    def summary(self) -> str:
        if not self.known:
            return "quality unknown (no RTP seen)"
        said = [t for t in (trouble(n, getattr(self, n)) for n in DIRECTIONS) if t]
        far = self.reports.get("egress")
        if far is not None and far.fraction_lost >= LOSS_WORTH_SAYING:
            said.append(f"the far end reports {far.fraction_lost:.0f} % lost")
        return "; ".join(said) if said else "good"

    def as_dict(self) -> dict:
        """For status documents and events: per direction, the MOS of whoever hears it
        ("egress" is what the far end hears, as far as the router can tell)."""
        out: dict = {"known": self.known, "summary": self.summary(), "rtt_ms": self.rtt_ms}
        for name in DIRECTIONS:
            d = getattr(self, name)
            out[name] = None if d is None else {**d.as_dict(),
                                                "mos": mos_estimate(d, self.beyond_ms)}
            rep = self.reports.get(name)
            if out[name] is not None and rep is not None:
                out[name]["endpoint_report"] = {
                    "loss_percent_last": rep.fraction_lost, "cumulative_lost": rep.cumulative_lost,
                    "jitter_ms": rep.jitter_ms(d.clock_hz), "reports": rep.reports}
        return out


def call_quality(entries: Iterable[dict[str, Direction]]) -> CallQuality:
    """A call's quality from the table entries of its tuples (Classifier.flow_quality),
    its RTCP flows included: a report block travelling one way is about the stream
    going the other way, matched by SSRC."""
    entries = list(entries)
    egress, ingress = (busiest(e.get(n) for e in entries) for n in DIRECTIONS)
    reports = {}
    for name, d, back in (("egress", egress, "ingress"), ("ingress", ingress, "egress")):
        for e in entries:
            carrier = e.get(back)
            rep = carrier.carried_report if carrier is not None else None
            if d is not None and d.rtp and rep is not None and rep.ssrc == d.ssrc:
                reports[name] = rep
    # an SR leaving through the WAN comes back echoed from the internet side, one
    # arriving from it is echoed by the LAN side
    rtt = {}
    for side, sr_way, rep_way in (("internet", "egress", "ingress"), ("lan", "ingress", "egress")):
        srs = [d.carried_sr for e in entries if (d := e.get(sr_way)) is not None]
        reps = [d.carried_report for e in entries if (d := e.get(rep_way)) is not None]
        found = [x for sr in srs for rep in reps if (x := round_trip_ms(sr, rep)) is not None]
        if found:
            rtt[side] = round(min(found), 2)
    return CallQuality(egress, ingress, reports, rtt)


# --- the reference: RFC 3550 A.1 and A.8, written plainly -----------------------------

class RtpReceiver:
    """One SSRC's sequence accounting and jitter, as the kernel does it after probation:
    distinct sequence numbers received (a 64-packet window tells duplicates from late
    ones), expected from the highest extended sequence number, jitter in ms from arrival
    times in seconds and the RTP clock."""

    def __init__(self, seq: int, ts: int, arrival: float, clock_hz: int | None,
                 run: int = 1) -> None:
        """Start at packet seq, the last of `run` in sequence (the kernel's probation)."""
        self.clock_hz = clock_hz
        self.cycles, self.base, self.max_seq = SEQ_MOD, SEQ_MOD + seq - (run - 1), seq
        self.seen = set(range(self.base, self.base + run))
        self.received, self.duplicates, self.reordered = run, 0, 0
        self.jitter = 0.0   # in seconds
        self._last = (arrival, ts)

    @property
    def expected(self) -> int:
        return self.cycles + self.max_seq - self.base + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1e3

    def packet(self, seq: int, ts: int, arrival: float) -> None:
        delta = (seq - self.max_seq) % SEQ_MOD
        ext = self.cycles + seq
        if delta == 0:
            self.duplicates += 1
            return
        if delta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += SEQ_MOD
            self.max_seq = seq
            ext = self.cycles + seq
        elif delta > SEQ_MOD - MAX_MISORDER:
            back = SEQ_MOD - delta
            ext = self.cycles + self.max_seq - back
            if back < 64 and ext in self.seen:
                self.duplicates += 1
                return
            self.reordered += 1
        else:
            return   # a jump: the kernel waits for confirmation; the reference ignores it
        self.seen.add(ext)
        self.received += 1
        self._jitter(ts, arrival)

    def _jitter(self, ts: int, arrival: float) -> None:
        last_arrival, last_ts = self._last
        self._last = (arrival, ts)
        if not self.clock_hz:
            return
        dts = (ts - last_ts + (1 << 31)) % (1 << 32) - (1 << 31)
        d = (arrival - last_arrival) - dts / self.clock_hz
        self.jitter += (abs(d) - self.jitter) / 16
