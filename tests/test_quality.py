"""Call quality arithmetic without a kernel: the RFC 3550 reference, loss/jitter from
the kernel's counters, where the trouble is, and the simplified E-model."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipqos import quality
from voipqos.quality import Direction, RtpReceiver


def rtp_dir(**kw: int) -> dict[str, int]:
    """An unpacked struct rtp_dir (all fields of voipqos.h), zero unless given."""
    base = dict.fromkeys(
        ("packets", "bytes", "last_ns", "first_ns", "seen", "jitter16_ns", "ssrc", "cycles",
         "base_seq", "received", "expected_prior", "received_prior", "duplicates",
         "reordered", "other_ssrc", "restarts", "last_ts", "first_ts", "clock_hz",
         "max_seq", "bad_seq", "state", "probation", "pt"), 0)
    base["rtcp"] = dict.fromkeys(("sr_ns", "block_ns", "sr_ntp_mid", "srs", "reports", "ssrc",
                                  "cum_lost", "ext_max_seq", "jitter", "lsr", "dlsr",
                                  "fraction_lost"), 0)
    return {**base, **kw}


# --- the reference ---------------------------------------------------------------------

@given(st.integers(0, 65535), st.integers(1, 300))
def test_in_order_across_the_wrap_loses_nothing(start: int, n: int) -> None:
    r = RtpReceiver(start, 0, 0.0, 8000)
    for i in range(1, n):
        r.packet((start + i) % 65536, 160 * i, 0.02 * i)
    assert (r.expected, r.received, r.lost) == (n, n, 0)
    assert r.jitter_ms == pytest.approx(0, abs=1e-9)


@given(st.integers(0, 65535), st.sets(st.integers(1, 198), max_size=60))
def test_dropped_packets_are_lost(start: int, dropped: set[int]) -> None:
    r = RtpReceiver(start, 0, 0.0, None)
    for i in range(1, 200):
        if i not in dropped:
            r.packet((start + i) % 65536, 0, 0.0)
    assert r.expected == 200 and r.lost == len(dropped)


@given(st.integers(0, 65535), st.randoms(use_true_random=False))
def test_reordering_within_the_window_is_not_loss(start: int, rnd: random.Random) -> None:
    seqs = list(range(1, 120))
    for i in range(0, len(seqs) - 3, 4):      # shuffle each group of four
        group = seqs[i:i + 4]
        rnd.shuffle(group)
        seqs[i:i + 4] = group
    r = RtpReceiver(start, 0, 0.0, None)
    for s in seqs:
        r.packet((start + s) % 65536, 0, 0.0)
    assert r.lost == 0 and r.received == 120
    assert r.reordered == sum(1 for i, s in enumerate(seqs) if s < max(seqs[:i + 1]))


def test_duplicates_are_told_from_late_packets() -> None:
    r = RtpReceiver(100, 0, 0.0, None)
    for s in (101, 103, 101, 102, 102, 104, 100):
        r.packet(s, 0, 0.0)
    assert (r.received, r.duplicates, r.reordered, r.lost) == (5, 3, 1, 0)


def test_probation_run_counts_as_received() -> None:
    r = RtpReceiver(9, 0, 0.0, None, run=4)   # 6, 7, 8, 9 arrived during probation
    r.packet(11, 0, 0.0)
    assert (r.expected, r.received, r.lost) == (6, 5, 1)


@given(st.lists(st.floats(0, 0.1), min_size=2, max_size=80), st.sampled_from([8000, 48000]))
def test_jitter_is_rfc3550_in_timestamp_units(gaps: list[float], hz: int) -> None:
    """A.8 computes J in RTP timestamp units; the reference's ms are the same J."""
    step = hz // 50
    r = RtpReceiver(0, 0, 0.0, hz)
    arrival, j_ts, prev_transit = 0.0, 0.0, 0.0
    for i, gap in enumerate(gaps, start=1):
        arrival += gap
        r.packet(i, step * i, arrival)
        transit = arrival * hz - step * i
        j_ts += (abs(transit - prev_transit) - j_ts) / 16   # packet 0: transit 0
        prev_transit = transit
    assert r.jitter_ms == pytest.approx(j_ts / hz * 1e3, rel=1e-9, abs=1e-9)


# --- the kernel's counters ----------------------------------------------------------------

def test_direction_from_counters() -> None:
    d = quality.direction(rtp_dir(packets=110, bytes=22000, received=97, cycles=2 * 65536,
                                  base_seq=65536 + 65530, max_seq=93, duplicates=2,
                                  clock_hz=8000, jitter16_ns=16 * 2_500_000, ssrc=7, pt=0))
    assert d.rtp and d.expected == 100 and d.lost == 3 and d.loss_percent == 3.0
    assert d.jitter_ms == 2.5 and d.payload_type == 0


def test_earlier_runs_add_up() -> None:
    d = quality.direction(rtp_dir(expected_prior=50, received_prior=49, received=0,
                                  restarts=1, max_seq=7, base_seq=3))
    assert d.rtp and (d.expected, d.received, d.lost) == (50, 49, 1)


def test_no_rtp_and_unknown_clock() -> None:
    assert not quality.direction(rtp_dir(packets=9)).rtp
    d = quality.direction(rtp_dir(received=10, cycles=65536, base_seq=65536, max_seq=9,
                                  jitter16_ns=99))
    assert d.rtp and d.jitter_ms is None


def test_busiest_entry_holds_the_direction() -> None:
    quiet, busy = Direction(0, 0, False), Direction(500, 1, True, expected=500, received=500)
    orig, reply = {"egress": quiet, "ingress": busy}, {"egress": busy, "ingress": quiet}
    q = quality.call_quality([orig, reply])
    assert q.egress is busy and q.ingress is busy


# --- words and MOS --------------------------------------------------------------------------

def lossy(expected: int, received: int, jitter: float | None = 1.0) -> Direction:
    return Direction(received, 0, True, payload_type=0, expected=expected, received=received,
                     jitter_ms=jitter, clock_hz=8000)


def test_where_the_trouble_is() -> None:
    q = quality.CallQuality(egress=lossy(100, 97), ingress=lossy(100, 100, jitter=45.0))
    assert q.summary() == ("losing 3 % on the Wi-Fi/LAN side; "
                           "jitter 45 ms on the internet side")
    assert quality.CallQuality(lossy(100, 100), lossy(100, 100)).summary() == "good"


def test_unknown_quality_is_not_zeros() -> None:
    q = quality.CallQuality(Direction(50, 1, False), None)
    doc = q.as_dict()
    assert doc["known"] is False and doc["summary"].startswith("quality unknown")
    assert doc["egress"]["mos"] is None and doc["ingress"] is None


def test_e_model_reference_points() -> None:
    # no loss, 40 ms: R = 93.2 - 0.96
    assert quality.r_factor(0, 40) == pytest.approx(92.24)
    # G.711 with PLC, 1 % random loss: Ie,eff = 95 * 1 / 26.1
    assert quality.r_factor(1, 0) == pytest.approx(93.2 - 95 / 26.1)
    # beyond 177.3 ms the delay term steepens
    assert quality.r_factor(0, 277.3) == pytest.approx(93.2 - 0.024 * 277.3 - 11.0)
    assert quality.mos(93.2) == pytest.approx(4.41, abs=0.01)
    assert quality.mos(50) == pytest.approx(2.58, abs=0.01)
    assert (quality.mos(-5), quality.mos(120)) == (1.0, 4.5)


@given(st.integers(0, 1000), st.integers(0, 1000), st.floats(0, 200), st.floats(0, 200))
def test_mos_falls_with_loss_and_jitter(lost_a: int, lost_b: int, j_a: float,
                                        j_b: float) -> None:
    a = quality.mos_estimate(lossy(1000, 1000 - min(lost_a, lost_b), min(j_a, j_b)))
    b = quality.mos_estimate(lossy(1000, 1000 - max(lost_a, lost_b), max(j_a, j_b)))
    assert a is not None and b is not None and 1.0 <= b <= a <= 4.5


def test_mos_of_a_clean_g711_call() -> None:
    assert quality.mos_estimate(lossy(1000, 1000, 2.0)) == pytest.approx(4.4, abs=0.05)
    assert quality.mos_estimate(lossy(1000, 900, 2.0)) < 3.5


def test_rtcp_report_block_is_decoded() -> None:
    block = {**rtp_dir()["rtcp"], "reports": 3, "ssrc": 7, "cum_lost": 0xFFFFFE,
             "ext_max_seq": 70000, "jitter": 80, "fraction_lost": 64, "lsr": 5, "dlsr": 6,
             "block_ns": 9}
    rep = quality.report(block)
    assert rep == quality.Report(7, 25.0, -2, 80, 3, 5, 6, 9)
    assert quality.sender_report(block) is None
    assert quality.sender_report({**block, "srs": 1, "sr_ntp_mid": 5, "sr_ns": 4}) == \
        quality.SenderReport(5, 4)
    assert rep.jitter_ms(8000) == 10.0 and rep.jitter_ms(None) is None
    assert quality.report({**block, "reports": 0}) is None


def test_far_end_report_is_matched_to_the_stream_by_ssrc() -> None:
    up = Direction(500, 1, True, ssrc=7, payload_type=0, clock_hz=8000, expected=500,
                   received=500, jitter_ms=1.0)
    rtcp_in = Direction(5, 1, False, carried_report=quality.Report(7, 13 / 256 * 100, 30, 160, 5))
    other = Direction(5, 1, False, carried_report=quality.Report(99, 50.0, 1, 1, 1))
    q = quality.call_quality([{"egress": up, "ingress": Direction(0, 0, False)},
                              {"egress": Direction(0, 0, False), "ingress": rtcp_in},
                              {"egress": Direction(0, 0, False), "ingress": other}])
    assert q.reports == {"egress": rtcp_in.carried_report}
    assert q.summary() == "the far end reports 5 % lost"
    rep = q.as_dict()["egress"]["endpoint_report"]
    assert rep == {"loss_percent_last": 13 / 256 * 100, "cumulative_lost": 30,
                   "jitter_ms": 20.0, "reports": 5}


def test_round_trips_from_sender_reports_and_their_echoes() -> None:
    """The phone's SR leaves at 1.000 s; the far end's RR echoing it (LSR) arrives at
    1.300 s after holding it 0.25 s (DLSR 16384/65536): 50 ms to the internet side."""
    ms = 1_000_000
    none = Direction(0, 0, False)
    sr_out = quality.SenderReport(0xABCD1234, 1000 * ms)
    rr_in = quality.Report(7, 0.0, 0, 0, 1, lsr=0xABCD1234, dlsr=16384, at_ns=1300 * ms)
    assert quality.round_trip_ms(sr_out, rr_in) == pytest.approx(50.0)
    assert quality.round_trip_ms(sr_out, quality.Report(7, 0.0, 0, 0, 1, lsr=1)) is None
    q = quality.call_quality([
        {"egress": Direction(1, 1, False, carried_sr=sr_out), "ingress": none},
        {"egress": none, "ingress": Direction(1, 1, False, carried_report=rr_in)}])
    assert q.rtt_ms == {"internet": 50.0} and q.beyond_ms == 25.0


def test_round_trip_lowers_the_mos() -> None:
    d = lossy(1000, 1000)
    near = quality.CallQuality(d, d).as_dict()["egress"]["mos"]
    far = quality.CallQuality(d, d, rtt_ms={"internet": 400.0}).as_dict()["egress"]["mos"]
    assert far < near
