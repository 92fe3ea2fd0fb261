"""Detector: table tests over plain snapshots, plus properties (rates never negative)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from voipqos.conntrack import Entry, Snapshot, Tuple
from voipqos.detect import (
    MAX_TRACKED,
    MEDIA,
    OTHER,
    SIGNALLING,
    DetectConfig,
    Detector,
    Sides,
    detect,
)

CFG = DetectConfig()
LAN, FAR, WAN_ADDR, FAR2 = "192.168.1.20", "203.0.113.9", "198.51.100.1", "203.0.113.50"
# a router with NAT: its WAN address is known, its LAN is 192.168.1.0/24
ROUTER = Sides(frozenset({WAN_ADDR}), (ipaddress.ip_network("192.168.1.0/24"),))


def entry(src=LAN, dst=FAR, sport=40000, dport=20000, pkts=(0, 0), size=(200, 200),
          proto="udp", nat=True, flags=frozenset({"ASSURED"}), counters=True) -> Entry:
    """An entry whose orig direction is src->dst; with nat, the reply goes to the WAN
    address (source NAT, as the router's egress sees it)."""
    reply_dst = WAN_ADDR if nat else src
    op, rp = pkts
    return Entry(4, proto, Tuple(src, dst, sport, dport), Tuple(dst, reply_dst, dport, sport),
                 op if counters else None, op * size[0] if counters else None,
                 rp if counters else None, rp * size[1] if counters else None,
                 120, flags)


def snap(*entries: Entry, at: float = 0.0) -> Snapshot:
    return Snapshot({e.key: e for e in entries}, taken_at=at)


def step(before: list[Entry], after: list[Entry], dt: float = 1.0, cfg=CFG, sides=ROUTER):
    return detect(snap(*before), snap(*after, at=dt), cfg, sides)


def one(det):
    assert len(det.flows) == 1
    return det.flows[0]


def test_voice_flow_is_media_and_one_call():
    det = step([entry(pkts=(100, 100))], [entry(pkts=(150, 150))])
    f = one(det)
    assert f.verdict == MEDIA and f.lan_side == "orig"
    assert f.out.pps == 50 and f.out.mean_size == 200
    [call] = det.calls
    assert (call.lan_host, call.far_host, call.lan_known) == (LAN, FAR, True)
    # one interval counts toward switching on; the classifier gets it from the second
    assert call.tuples == frozenset() and f.pending
    [call] = run([[entry(pkts=(n, n))] for n in (100, 150, 200)])[-1].calls
    # the classifier gets both directions: orig (pre-NAT) and reply (post-NAT)
    assert (17, LAN, FAR, 40000, 20000) in call.tuples
    assert (17, FAR, WAN_ADDR, 20000, 40000) in call.tuples


def test_inbound_first_rtp_far_end_owns_the_entry():
    # the far end sent first to our WAN address (port forward / DNAT to the LAN host)
    e = Entry(4, "udp", Tuple(FAR, WAN_ADDR, 20000, 40000), Tuple(LAN, FAR, 40000, 20000),
              0, 0, 0, 0, 120)
    e2 = Entry(4, "udp", e.orig, e.reply, 50, 50 * 180, 50, 50 * 200, 120)
    det = step([e], [e2])
    f = one(det)
    assert f.verdict == MEDIA and f.lan_side == "reply"
    assert det.calls[0].lan_host == LAN and det.calls[0].far_host == FAR
    assert f.out.mean_size == 200  # out = the LAN host's direction = reply counters


def test_no_nat_lan_known_from_router_networks():
    det = step([entry(nat=False, src=FAR, dst=LAN)],
               [entry(nat=False, src=FAR, dst=LAN, pkts=(50, 50))])
    assert one(det).lan_side == "reply"
    assert det.calls[0].lan_host == LAN


def test_offline_snapshot_without_sides_still_separates_calls():
    a = [entry(nat=False), entry(nat=False, src="10.0.0.5", dst=FAR2, sport=5004)]
    b = [entry(nat=False, pkts=(50, 50)),
         entry(nat=False, src="10.0.0.5", dst=FAR2, sport=5004, pkts=(50, 50))]
    det = step(a, b, sides=Sides())
    assert len(det.calls) == 2
    assert not any(c.lan_known for c in det.calls)


def test_rtcp_joins_the_call_bulk_to_the_same_host_does_not():
    rtp = entry(pkts=(50, 50))
    rtcp = entry(sport=40001, dport=20001, pkts=(1, 1), size=(100, 100))
    bulk = entry(sport=40002, dport=20002, pkts=(520, 0), size=(1200, 80))
    det = step([], [rtp, rtcp, bulk])
    assert [f.verdict for f in det.flows] == [MEDIA, MEDIA, OTHER]
    assert "kept out of the voice class" in det.flows[2].reasons[-1]
    [call] = det.calls
    assert len(call.flows) == 2
    assert call.out.pps == 51


def test_webrtc_without_sip_is_found_and_sip_is_a_hint():
    det = step([], [entry(pkts=(50, 50))])
    assert det.calls[0].sip is False
    sip = entry(sport=5060, dport=5060, pkts=(1, 1), size=(600, 600))
    det = step([], [entry(pkts=(50, 50)), sip])
    assert {f.verdict for f in det.flows} == {MEDIA, SIGNALLING}
    assert det.calls[0].sip is True


def test_sip_over_tcp_is_signalling():
    det = step([], [entry(proto="tcp", dport=5061, pkts=(3, 3))])
    assert one(det).verdict == SIGNALLING
    assert one(det).reasons == ("SIP port 5061/tcp",)


def test_flood_bulk_dns_ntp_are_not_calls():
    cases = {
        "flood": entry(pkts=(5000, 5000), size=(100, 100)),
        "bulk video": entry(pkts=(800, 10), size=(1300, 80)),
        "dns": entry(dport=53, pkts=(50, 50), size=(80, 200)),
        "ntp": entry(dport=123, pkts=(50, 50), size=(76, 76)),
        "one way": entry(pkts=(50, 0)),
    }
    for name, e in cases.items():
        det = step([], [e])
        assert one(det).verdict == OTHER, name
        assert det.calls == (), name
    assert "above 130" in step([], [cases["flood"]]).flows[0].reasons[0]
    assert step([], [cases["dns"]]).flows[0].reasons == ("port 53 excluded",)


def test_one_direction_allowed_when_configured():
    cfg = DetectConfig(both_directions=False)
    assert one(step([], [entry(pkts=(50, 0))], cfg=cfg)).verdict == MEDIA


def test_ended_call_with_lingering_entry_is_not_active():
    e = entry(pkts=(5000, 5000))
    det = step([e], [e])  # counters stopped growing
    assert one(det).verdict == OTHER
    assert "below" in one(det).reasons[0]


def test_rtp_ports_restrict_media():
    cfg = DetectConfig(rtp_ports=((10000, 10100),))
    assert one(step([], [entry(pkts=(50, 50))], cfg=cfg)).verdict == OTHER
    assert one(step([], [entry(dport=10050, pkts=(50, 50))], cfg=cfg)).verdict == MEDIA


def test_first_snapshot_and_missing_counters_give_reasons():
    det = detect(None, snap(entry(pkts=(50, 50))), CFG, ROUTER)
    assert one(det).reasons == ("no rate yet (first snapshot)",)
    det = step([], [entry(counters=False)])
    assert "nf_conntrack_acct" in one(det).reasons[0]


def test_replaced_entry_counts_from_zero():
    det = step([entry(pkts=(900, 900))], [entry(pkts=(50, 50))])
    f = one(det)
    assert f.out.pps == 50 and f.verdict == MEDIA


def test_offloaded_flow_is_flagged():
    det = step([], [entry(pkts=(50, 50), flags=frozenset({"ASSURED", "OFFLOAD"}))])
    assert any("offloaded" in r for r in one(det).reasons)


def test_ipv6_call():
    a, b = "fd77::2", "2001:db8:77::2"
    e = Entry(6, "udp", Tuple(a, b, 4000, 5000), Tuple(b, a, 5000, 4000), 50, 50 * 220,
              50, 50 * 220, 120)
    det = detect(snap(), snap(e, at=1.0), CFG,
                 Sides(lan_nets=(ipaddress.ip_network("fd77::/64"),)))
    assert det.calls[0].lan_host == a


counts = st.integers(min_value=0, max_value=2**40)


@given(st.tuples(counts, counts, counts, counts), st.tuples(counts, counts, counts, counts),
       st.floats(min_value=0.01, max_value=60))
def test_rates_never_negative(before, after, dt):
    mk = lambda c: Entry(4, "udp", Tuple(LAN, FAR, 1, 2), Tuple(FAR, WAN_ADDR, 2, 1),  # noqa: E731
                         c[0], c[1], c[2], c[3], 30)
    det = step([mk(before)], [mk(after)], dt=dt)
    f = one(det)
    assert f.out.pps >= 0 and f.inb.pps >= 0 and f.out.bps >= 0 and f.inb.bps >= 0


def run(seq: list[list[Entry]], cfg=CFG, sides=ROUTER):
    """Feed cumulative entries, one list per second, to one Detector; all detections."""
    d = Detector(cfg)
    return [d.update(snap(*es, at=float(t)), sides) for t, es in enumerate(seq)]


def grow(per_s: list[tuple[int, int]], **kw) -> list[Entry]:
    """One entry per second whose counters grow by per_s[t] packets (out, in)."""
    out, total = [], [0, 0]
    for op, rp in per_s:
        total = [total[0] + op, total[1] + rp]
        out.append(entry(pkts=tuple(total), **kw))
    return out


def test_whatsapp_rate_is_a_call_after_two_intervals_and_held_through_silence():
    # ~8 pps each way (measured on WhatsApp), then DTX at 2 pps, then nothing
    es = grow([(0, 0), (8, 8), (8, 9), (8, 8), (2, 2), (2, 1), (0, 0), (0, 0)])
    dets = run([[e] for e in es])
    assert [len(d.calls) for d in dets] == [0, 0, 1, 1, 1, 1, 0, 0]
    assert "steady rate for 2 intervals" in dets[2].flows[0].reasons[0]
    assert dets[4].flows[0].reasons[0].startswith("held")


def test_a_single_burst_is_not_held():
    # a VPN handshake: one voice-sized interval, then slower unsteady traffic
    es = grow([(0, 0), (18, 17), (3, 2), (2, 1), (0, 0)], size=(100, 150))
    assert [len(d.calls) for d in run([[e] for e in es])] == [0, 1, 0, 0, 0]


def test_game_shape_is_never_a_call():
    # uplink voice-like, downlink game state 550 B: the measured game shape
    es = grow([(60, 60)] * 10, size=(200, 550))
    assert all(not d.calls for d in run([[e] for e in es]))


def test_one_way_legs_of_one_socket_pair_into_one_call():
    up = grow([(0, 0)] + [(17, 0)] * 3, dst=FAR, dport=529)
    down = grow([(0, 0)] + [(0, 17)] * 3, dst=FAR2, dport=533)
    dets = run([[a, b] for a, b in zip(up, down, strict=True)])
    assert [f.verdict for f in dets[1].flows] == [MEDIA, MEDIA]
    assert len(dets[1].calls) == 1 and len(dets[1].calls[0].flows) == 2


def test_video_call_shape_both_cameras():
    es = grow([(0, 0)] + [(120, 110)] * 4, size=(900, 950))
    assert [len(d.calls) for d in run([[e] for e in es])] == [0, 0, 0, 1, 1]


def test_history_is_bounded_on_a_huge_table():
    # 30k UDP entries all voice-like: history is kept for at most MAX_TRACKED of them
    def table(n: int) -> list[Entry]:
        return [entry(src=f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", pkts=(n, n))
                for i in range(30_000)]
    d = Detector(CFG)
    d.update(snap(*table(0)), ROUTER)
    d.update(snap(*table(50), at=1.0), ROUTER)
    assert len(d.tracks) <= MAX_TRACKED


def test_a_long_monologue_keeps_the_call():
    # established at 8 pps both ways, then one side talks for 30 s while the other sends
    # DTX silence frames at 2 pps: still the call, long after HOLD
    es = grow([(0, 0)] + [(8, 8)] * 3 + [(8, 2)] * 30 + [(0, 0)])
    calls = [len(d.calls) for d in run([[e] for e in es])]
    assert calls[3:34] == [1] * 31 and calls[-1] == 0


def test_streaming_or_tunnelled_download_with_voice_sized_acks_is_not_a_call():
    # 200 pps x 1250 B down, acks 60 pps x 140 B up (TCP in WireGuard): never media
    es = grow([(60, 200)] * 8, size=(140, 1250))
    assert all(not d.calls for d in run([[e] for e in es]))


def test_a_socket_probing_several_peers_has_not_settled_on_a_call():
    # one LAN socket, three peers at 5-7 pps each way (matchmaking, ICE probing): weak
    # evidence does not count; once one peer remains, its first interval counts toward
    # switching on (pending) and the next one at a steady rate makes it a call
    peers = [FAR, FAR2, "203.0.113.77"]
    seq, totals = [], {p: 0 for p in peers}
    for t in range(6):
        active = peers if t < 3 else peers[:1]
        for p in active:
            totals[p] += 6 if t else 0
        seq.append([entry(dst=p, pkts=(totals[p], totals[p])) for p in peers])
    dets = run(seq)
    assert [len(d.calls) for d in dets] == [0, 0, 0, 1, 1, 1]
    assert dets[3].flows[0].pending and not dets[4].flows[0].pending
    busy = run(seq)[2].flows[0]
    assert busy.verdict == OTHER


def test_a_config_from_before_media_ports_loads_with_the_documented_ports(tmp_path):
    from voipqos import config
    from voipqos.detect import MEDIA_PORTS

    old = tmp_path / "voipqos"
    old.write_text("config voipqos 'main'\n\toption min_pps '12'\n\toption both_directions '1'\n")
    assert DetectConfig.from_config(config.load(str(old))).media_ports == MEDIA_PORTS


def test_one_way_legs_pair_offline_without_sides():
    up = grow([(0, 0)] + [(17, 0)] * 3, dst=FAR, dport=529, nat=False)
    down = grow([(0, 0)] + [(0, 17)] * 3, dst=FAR2, dport=533, nat=False)
    det = run([[a, b] for a, b in zip(up, down, strict=True)], sides=Sides())[-1]
    assert [f.verdict for f in det.flows] == [MEDIA, MEDIA] and len(det.calls) == 1
    assert det.flows[0].reasons[0].startswith("paired one-way legs")


def test_weak_voice_on_a_documented_media_port_counts_from_its_first_interval():
    # WhatsApp through its TURN relay on 3478 at ~8 pps: the first interval counts toward
    # switching on (pending: nothing in the voice class yet), the second confirms it; the
    # same rates on an undocumented port need two steady intervals first
    turn = grow([(0, 0), (8, 8), (8, 9), (8, 8)], dport=3478)
    dets = run([[e] for e in turn])
    assert [len(d.calls) for d in dets] == [0, 1, 1, 1]
    assert dets[1].flows[0].pending and dets[1].calls[0].tuples == frozenset()
    assert not dets[2].flows[0].pending and dets[2].calls[0].tuples
    plain = grow([(0, 0), (8, 8), (8, 9), (8, 8)])
    assert [len(d.calls) for d in run([[e] for e in plain])] == [0, 0, 1, 1]


def test_a_lone_weak_interval_on_a_media_port_never_reaches_the_voice_class():
    # a STUN/ICE burst on 3478 for one second, then keepalives: one pending poll only
    es = grow([(0, 0), (6, 6), (1, 1), (1, 1), (0, 0)], dport=3478)
    dets = run([[e] for e in es])
    assert [len(d.calls) for d in dets] == [0, 1, 0, 0, 0]
    assert all(not d.tuples for d in dets)


def test_first_weak_interval_after_probing_relays_counts_toward_switching_on():
    # Telegram: one LAN socket races 3 relays at ~5 pps each way, then settles on one at
    # a voice rate: that first settled interval counts (pending); without the race the
    # same interval waits for a second one
    relays = [FAR, FAR2, "203.0.113.77"]
    race = [[(0, 0)] * 3, [(5, 5)] * 3, [(9, 9), (1, 1), (1, 1)], [(9, 9), (1, 1), (1, 1)]]
    totals = {r: [0, 0] for r in relays}
    seq = []
    for per in race:
        for r, (o, i) in zip(relays, per, strict=True):
            totals[r] = [totals[r][0] + o, totals[r][1] + i]
        seq.append([entry(dst=r, dport=530, pkts=tuple(totals[r])) for r in relays])
    dets = run(seq)
    assert [len(d.calls) for d in dets] == [0, 0, 1, 1]
    assert dets[2].flows[0].pending and not dets[3].flows[0].pending
    alone = grow([(0, 0), (0, 0), (9, 9), (9, 9)], dport=530)
    assert [len(d.calls) for d in run([[e] for e in alone])] == [0, 0, 0, 1]


def test_one_side_sending_comfort_noise_keeps_an_established_call():
    # a gateway call: voice both ways, then one side sends only comfort-noise/keepalive
    # frames (7 pps x 41 B) while the other talks (50 pps x 200 B): still the call,
    # beyond HOLD; the same shape never established is not a call
    sizes = [(200, 200)] * 4 + [(41, 200)] * 12
    rates = [(0, 0)] + [(50, 50)] * 3 + [(7, 50)] * 12
    seq, tot = [], [0, 0, 0, 0]
    for (op, ip), (os_, is_) in zip(rates, sizes, strict=True):
        tot = [tot[0] + op, tot[1] + ip, tot[2] + op * os_, tot[3] + ip * is_]
        e = entry(pkts=(tot[0], tot[1]))
        seq.append([replace(e, orig_bytes=tot[2], reply_bytes=tot[3])])
    assert [len(d.calls) for d in run(seq)][2:] == [1] * 14
    cold = grow([(0, 0)] + [(7, 50)] * 8, size=(41, 200))
    assert all(not d.calls for d in run([[e] for e in cold]))


def test_one_way_voice_counts_toward_switching_on_from_its_second_steady_interval():
    # an IVR or muted-side leg at 33 pps x 280 B, nothing back: pending on the second
    # steady interval, media (classified) on the third
    es = grow([(0, 0)] + [(33, 0)] * 4, size=(280, 0))
    dets = run([[e] for e in es])
    assert [len(d.calls) for d in dets] == [0, 0, 1, 1, 1]
    assert dets[2].flows[0].pending and not dets[2].tuples and dets[3].tuples


def test_a_companion_of_a_call_not_confirmed_yet_stays_out_of_the_voice_class():
    # first interval of voice on a documented port (pending) with a slow small flow to the
    # same far host: the companion waits with the call
    media = grow([(0, 0), (8, 8), (8, 8)], dport=3478)
    rtcp = grow([(0, 0), (2, 0), (2, 0)], sport=40001, dport=443, size=(52, 52))
    dets = run([[m, c] for m, c in zip(media, rtcp, strict=True)])
    assert [f.pending for f in dets[1].flows] == [True, True] and not dets[1].tuples
    assert [f.verdict for f in dets[2].flows] == [MEDIA, MEDIA] and len(dets[2].tuples) == 4


def test_weak_voice_after_the_sockets_relay_leg_on_a_documented_port_is_media():
    # WhatsApp: the call starts on the TURN relay (3478) and moves to another relay port
    # on the same LAN socket; the new leg's rate is still settling (4 -> 9 pps)
    turn = grow([(0, 0), (8, 9), (0, 0)], dport=3478)
    relay = grow([(0, 0), (4, 5), (9, 8)], dst=FAR2, dport=32704)
    dets = run([[a, b] for a, b in zip(turn, relay, strict=True)])
    assert [len(d.calls) for d in dets] == [0, 1, 1]
    assert dets[2].flows[1].verdict == MEDIA
    assert "after a documented media port" in dets[2].flows[1].reasons[0]
