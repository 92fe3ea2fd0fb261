"""The detector on real captures of real apps (tests/data/captures, see docs/detection.md):
the committed conntrack snapshot sequences replayed through Detector + Hysteresis exactly
as the daemon polls them. Pure replay, no kernel: fast enough for every CI run."""

from __future__ import annotations

import pytest

from voipqos.lab.replay_corpus import load_manifest
from voipqos.lab.replay_eval import evaluate

# calls whose captures hold enough media to judge (the others are cut to a few seconds
# or a few packets per flow by their source; their numbers are in docs/detection.md)
CALLS_MET = ["whatsapp-turn", "whatsapp-login-call", "telegram-voice", "zoom-meeting",
             "kakaotalk", "sip-t38-fax"]


@pytest.fixture(scope="module")
def scores():
    return {s.name: s for s in evaluate()}


def test_every_capture_has_its_replay(scores):
    assert {c["name"] for c in load_manifest()} == set(scores)


@pytest.mark.parametrize("name", CALLS_MET)
def test_call_found_fast_and_kept_on(scores, name):
    s = scores[name]
    # the targets are 3 s and 90 %; these floors are what holds today (see
    # docs/detection.md for the gap), so a change that loses ground fails
    assert s.found and s.delay is not None and s.delay <= 5, s.row()
    assert s.on_share >= 0.85, s.row()


def test_no_false_call_on_games_tunnels_quic_downloads(scores):
    quiet = [s for s in scores.values() if s.kind != "call"]
    assert quiet
    assert [s.row() for s in quiet if s.switch_ons or s.noise] == []


def test_every_whatsapp_call_found(scores):
    for name in ("whatsapp-voice", "whatsapp-video", "whatsapp-login-call", "whatsapp-turn"):
        assert scores[name].found, name
