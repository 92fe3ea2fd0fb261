"""The detector on real captures of real apps (tests/data/captures, see docs/detection.md):
the committed conntrack snapshot sequences replayed through Detector + Hysteresis exactly
as the daemon polls them, without the packet-header observer and with the counts it would
have read (from the committed plans' 12-byte heads). Pure replay, no kernel: fast enough
for every CI run."""

from __future__ import annotations

import pytest

from voipqos.lab.replay_corpus import CORPUS, load_manifest
from voipqos.lab.replay_eval import evaluate

# calls whose captures hold enough media to judge (the others are cut to a few seconds
# or a few packets per flow by their source; their numbers are in docs/detection.md)
CALLS_MET = ["whatsapp-turn", "whatsapp-login-call", "telegram-voice", "zoom-meeting",
             "kakaotalk", "sip-t38-fax"]
# the profile on within 3 s of a call's first media second; 4 s where that second is
# not the call's media as the router sees it (WhatsApp TURN: its ICE checks; the SIP
# gateway capture: 2 s of far-end media the NAT router drops before the LAN side sends)
MAX_DELAY = {"whatsapp-turn": 4, "sip-t38-fax": 4}


@pytest.fixture(scope="module")
def scores():
    return {s.name: s for s in evaluate()}


@pytest.fixture(scope="module")
def shifted():
    """The same corpus replayed with every packet 0.5 s later: another phase of the poll
    against the traffic, as another replay or a real router would see it."""
    return {s.name: s for s in evaluate(CORPUS / "shift-0.5")}


@pytest.fixture(scope="module")
def headers():
    """With the tc-BPF observer's RTP/STUN counters, at both phases."""
    return {d: {s.name: s for s in evaluate(CORPUS / d, headers=True)}
            for d in (".", "shift-0.5")}


def test_every_capture_has_its_replay(scores, shifted):
    assert {c["name"] for c in load_manifest()} == set(scores) == set(shifted)


@pytest.mark.parametrize("name", CALLS_MET)
def test_call_found_fast_and_kept_on(scores, name):
    s = scores[name]
    # the targets are 3 s and 90 %; these floors are what holds today (see
    # docs/detection.md), so a change that loses ground fails
    assert s.found and s.delay is not None and s.delay <= MAX_DELAY.get(name, 3), s.row()
    assert s.on_share >= 0.90, s.row()


def test_corpus_totals_never_lose_ground(scores):
    calls = [s for s in scores.values() if s.kind == "call"]
    assert sum(s.found_calls for s in calls) >= 14
    assert sum(s.active_on for s in calls) >= 272  # of 347 active call seconds
    for name in ("whatsapp-voice", "whatsapp-login-call", "sip-rtp-g711"):
        assert scores[name].delay is not None and scores[name].delay <= 3, name


@pytest.mark.parametrize("phase", ["scores", "shifted"])
def test_no_false_call_on_games_tunnels_quic_downloads(phase, request):
    every = request.getfixturevalue(phase).values()
    quiet = [s for s in every if s.kind != "call"]
    assert quiet
    assert [s.row() for s in quiet if s.switch_ons] == []
    assert [s.row() for s in every if s.noise] == []  # nothing else rides with a call


@pytest.mark.parametrize("phase", ["scores", "shifted"])
def test_every_whatsapp_call_found(phase, request):
    scores = request.getfixturevalue(phase)
    for name in ("whatsapp-voice", "whatsapp-video", "whatsapp-login-call", "whatsapp-turn"):
        assert scores[name].found, name


@pytest.mark.parametrize("phase", [".", "shift-0.5"])
def test_headers_no_false_call_nothing_else_in_the_voice_class(headers, phase):
    every = headers[phase].values()
    # cloud gaming's RTP video stream and the rejected call's STUN probes included
    assert [s.row() for s in every if s.kind != "call" and s.switch_ons] == []
    assert [s.row() for s in every if s.noise] == []


@pytest.mark.parametrize("phase", [".", "shift-0.5"])
def test_headers_never_lose_a_call_a_second_or_speed(headers, phase, request):
    without = request.getfixturevalue("scores" if phase == "." else "shifted")
    for name, s in headers[phase].items():
        w = without[name]
        assert s.found_calls >= w.found_calls and s.active_on >= w.active_on, s.row()
        assert w.delay is None or (s.delay is not None and s.delay <= w.delay), s.row()


# (calls found, active seconds on) with headers at each phase: today's floors
HEADER_FLOORS = {".": (19, 308), "shift-0.5": (18, 310)}


@pytest.mark.parametrize("phase", [".", "shift-0.5"])
def test_headers_corpus_floors(headers, phase):
    calls = [s for s in headers[phase].values() if s.kind == "call"]
    found, on = HEADER_FLOORS[phase]
    assert sum(s.found_calls for s in calls) >= found
    assert sum(s.active_on for s in calls) >= on
    by = headers[phase]
    # RTP both ways or our own RTP stream: on at the first poll that sees it
    for name in ("kakaotalk", "google-meet", "sip-rtp-g711", "whatsapp-video"):
        assert by[name].delay == 1 and by[name].on_share == 1.0, by[name].row()
    for name in (*CALLS_MET, "whatsapp-voice", "snapchat-video", "sip-rtp-g711"):
        assert by[name].found and by[name].on_share >= 0.90, by[name].row()
        # shifted, Telegram (no RTP: its own protocol) keeps its 4 s from the relay race
        slack = phase != "." and name == "telegram-voice"
        assert by[name].delay <= MAX_DELAY.get(name, 3) + slack, by[name].row()


def test_shifted_phase_never_loses_ground(shifted):
    calls = [s for s in shifted.values() if s.kind == "call"]
    assert sum(s.found_calls for s in calls) >= 16
    assert sum(s.active_on for s in calls) >= 283  # of 346 active call seconds
    for name in CALLS_MET:
        assert shifted[name].found and shifted[name].on_share >= 0.89, shifted[name].row()
