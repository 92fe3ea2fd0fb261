"""Detector with the tc-BPF observer's header counters (RTP chains, STUN messages): table
tests over plain values and properties; the corpus numbers are in test_detect_corpus.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from test_detect import CFG, FAR, LAN, ROUTER, WAN_ADDR, entry, snap
from voipqos.conntrack import Entry, Tuple
from voipqos.detect import MEDIA, PENDING, Detector
from voipqos.header_evidence import HeaderCounts
from voipqos.hysteresis import Hysteresis, HysteresisConfig

KEY = (FAR, 20000, 40000)  # how the observer keys entry(): far address, far port, our port


def feed(per_s: list[tuple[int, int]], heads: list[HeaderCounts] | None, size=(200, 200),
         **kw):
    """One flow: per second its packets (out, in) and the observer's counts in that
    second (None: no observer). Cumulative counters go to the Detector, as the daemon
    reads them; all detections."""
    d = Detector(CFG)
    pk, hc = [0, 0], HeaderCounts()
    key = (FAR, kw.get("dport", 20000), 40000)
    dets = []
    for t, (o, i) in enumerate([(0, 0), *per_s]):
        pk = [pk[0] + o, pk[1] + i]
        if heads is not None and t:
            h = heads[t - 1]
            hc = HeaderCounts(hc.rtp_out + h.rtp_out, hc.rtp_in + h.rtp_in,
                              hc.stun_out + h.stun_out, hc.stun_in + h.stun_in)
        dets.append(d.update(snap(entry(pkts=tuple(pk), size=size, **kw), at=float(t)),
                             ROUTER, headers=None if heads is None else {key: hc}))
    return dets[1:]


def rtp(o: int, i: int) -> HeaderCounts:
    return HeaderCounts(rtp_out=o, rtp_in=i)


def test_rtp_both_ways_at_dtx_rates_is_a_call_at_once():
    # WhatsApp in silence: 3 packets a second each way, every one chaining
    dets = feed([(3, 3)] * 3, [rtp(3, 3)] * 3, size=(90, 90))
    f = dets[0].flows[0]
    assert f.verdict == MEDIA and not f.pending and f.rtp and dets[0].sure
    assert f.reasons[0] == "RTP headers both ways: 3 out / 3 in this interval"
    assert (17, LAN, FAR, 40000, 20000) in dets[0].calls[0].tuples  # classified at once
    # the same flow without the observer: below every rate rule
    assert not any(d.calls for d in feed([(3, 3)] * 3, None, size=(90, 90)))


def test_a_stray_chained_packet_in_a_game_is_nothing():
    # measured: one chained "RTP" packet in an interval of Epic Games' voice-sized flow
    dets = feed([(4, 3)] * 3, [rtp(1, 0), rtp(0, 0), rtp(1, 0)], size=(80, 81))
    assert not any(d.calls for d in dets)


def test_our_rtp_going_out_with_a_return_is_a_call_even_at_video_sizes():
    # Snapchat's video call on UDP 443: 40 pps x 900 B of RTP up, 9 pps x 80 B back
    dets = feed([(40, 9)] * 3, [rtp(38, 0)] * 3, size=(900, 80), dport=443)
    assert all(d.calls and d.sure for d in dets)
    assert dets[0].flows[0].reasons[0] == "RTP headers out: 38 this interval, return flowing"


def test_rtp_streaming_in_at_video_sizes_is_not_a_call():
    # cloud gaming (GeForce NOW): RTP video down, a trickle of input/feedback up
    dets = feed([(6, 30)] * 5, [rtp(0, 28)] * 5, size=(120, 900))
    assert not any(d.calls for d in dets)
    assert dets[-1].flows[0].reasons[-2:] == (
        "headers this interval: RTP 0 out / 28 in, STUN 0 out / 0 in",
        "RTP coming in only, at video sizes: a stream (cloud gaming, TV), not a call")


def test_rtp_coming_in_at_voice_size_with_a_return_is_a_call():
    # our side muted: only the far side's voice is RTP, RTCP and keepalives go back
    dets = feed([(2, 20)] * 2, [rtp(0, 20)] * 2, size=(80, 160))
    assert dets[0].calls and dets[0].flows[0].reasons[0].startswith("RTP headers in: 20")


def test_rtp_never_makes_bulk_a_call():
    dets = feed([(700, 700)] * 3, [rtp(700, 700)] * 3, size=(1200, 1200))
    assert not any(d.calls for d in dets)


def test_voice_beside_stun_checks_both_ways_is_an_ice_media_path():
    # Signal's thinned relay path: STUN checks both ways, 2-4 media packets a second
    per_s = [(8, 8), (4, 3), (3, 3), (2, 2)]
    stun = [HeaderCounts(stun_out=o, stun_in=i) for o, i in ((6, 6), (2, 2), (1, 1), (0, 0))]
    dets = feed(per_s, stun, size=(90, 90))
    assert dets[0].calls and dets[0].flows[0].pending and PENDING in dets[0].flows[0].reasons
    assert [d.flows[0].verdict for d in dets[1:]] == [MEDIA] * 3
    assert "ICE path" in dets[1].flows[0].reasons[0] and not dets[2].flows[0].pending
    # without the observer the same flow is never a call
    assert not any(d.calls for d in feed(per_s, None, size=(90, 90)))


def test_stun_alone_is_no_call():
    # a call rung and rejected: relay probes, every packet a STUN message
    per_s = [(2, 2)] * 5
    dets = feed(per_s, [HeaderCounts(stun_out=2, stun_in=2)] * 5, size=(154, 72), dport=3478)
    assert not any(d.calls for d in dets)


def test_the_first_read_and_a_reset_observer_give_no_burst_of_evidence():
    d = Detector(CFG)
    e = [entry(pkts=(n, n), size=(90, 90)) for n in (100, 103, 106, 109)]
    big, small = HeaderCounts(5000, 5000), HeaderCounts(1, 1)
    # first read: counts from before the detector started are not one interval's
    assert not d.update(snap(e[0], at=0.0), ROUTER, headers={KEY: big}).calls
    assert not d.update(snap(e[1], at=1.0), ROUTER, headers={KEY: big}).calls
    # the observer reloaded: its counters start again, not 2**32 - 4999 packets
    assert not d.update(snap(e[2], at=2.0), ROUTER, headers={KEY: small}).calls
    assert d.update(snap(e[3], at=3.0), ROUTER, headers={KEY: HeaderCounts(4, 4)}).sure


def test_a_port_forwarded_flow_is_keyed_as_its_packets_arrive():
    # the far end sent first to our WAN address: the arriving packets' tuple is orig's
    def fwd(n: int) -> Entry:
        return Entry(4, "udp", Tuple(FAR, WAN_ADDR, 20000, 40000),
                     Tuple(LAN, FAR, 40000, 20000), n, n * 90, n, n * 90, 120)
    d = Detector(CFG)
    key = (FAR, 20000, 40000)
    d.update(snap(fwd(0), at=0.0), ROUTER, headers={key: HeaderCounts()})
    assert d.update(snap(fwd(3), at=1.0), ROUTER, headers={key: rtp(3, 3)}).sure


counts = st.tuples(st.integers(0, 60), st.integers(0, 60))


@settings(max_examples=60, deadline=None)
@given(st.lists(counts, min_size=1, max_size=8), st.sampled_from([(90, 90), (200, 550),
                                                                  (900, 80), (160, 160)]))
def test_an_observer_that_counts_nothing_changes_nothing(per_s, size):
    """The observer on but seeing no RTP/STUN (a game, a tunnel): verdicts and reasons
    exactly as without it, so the corpus numbers without headers hold with them."""
    zero = feed(per_s, [HeaderCounts()] * len(per_s), size=size)
    none = feed(per_s, None, size=size)
    assert [(d.flows, d.calls) for d in zero] == [(d.flows, d.calls) for d in none]


def test_a_sure_call_switches_on_at_once_and_only_with_a_call():
    h = Hysteresis(HysteresisConfig(on_polls=2, off_hold=15, min_on=30), 0.0)
    assert not h.step(1, 0, sure=True) and not h.active
    assert h.step(2, 1, sure=True) and h.active
    assert h.reason == "call confirmed by RTP headers"


def test_a_bulk_flow_to_the_far_host_of_an_rtp_call_stays_out_of_the_voice_class():
    d = Detector(CFG)
    call = [entry(pkts=(n, n), size=(160, 160)) for n in (0, 20, 40)]
    bulk = [entry(sport=40001, dport=443, pkts=(n, 30 * n), size=(80, 1200)) for n in (0, 20, 40)]
    key = (FAR, 20000, 40000)
    dets = [d.update(snap(c, b, at=float(t)), ROUTER, headers={key: rtp(18 * t, 18 * t)})
            for t, (c, b) in enumerate(zip(call, bulk, strict=True))]
    [call_flow] = [f for f in dets[-1].flows if f.entry.orig.sport == 40000]
    [bulk_flow] = [f for f in dets[-1].flows if f.entry.orig.sport == 40001]
    assert call_flow.verdict == MEDIA and bulk_flow.verdict != MEDIA
    assert "kept out of the voice class" in bulk_flow.reasons[-1]
    assert all(t[3] != 40001 and t[4] != 40001 for t in dets[-1].tuples)


@settings(max_examples=80, deadline=None)
@given(st.integers(601, 3000), st.integers(0, 3000), st.integers(0, 3000))
def test_no_header_count_makes_bulk_media(pps, rtp_out, rtp_in):
    """Above VIDEO_MAX_PPS a flow is bulk whatever its headers say."""
    dets = feed([(pps, pps)] * 2, [HeaderCounts(rtp_out, rtp_in, 5, 5)] * 2, size=(1000, 1000))
    assert not any(d.calls for d in dets)
