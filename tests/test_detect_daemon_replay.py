"""Real captures through the whole chain: the committed plans of a WhatsApp video call
(TURN relay, RTP both ways), Snapchat's video call (RTP on UDP 443) and a console game's
peer-to-peer session (voice-sized both ways, no RTP) replayed in real time through the
lab router with NAT, while the real daemon runs there with its defaults: conntrack over
ctnetlink, the observer on the WAN device, HTB and the tc-BPF classifier.

The calls switch the profile on "confirmed by RTP headers" within 3 s of their start
(as the scoring counts it) and their packets go through the voice class; the game never switches it
on. This is the corpus scoring (replay_eval --headers) checked against the real thing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from line_faults import status, wait_for, write_config
from voipqos.lab import netns
from voipqos.lab.replay import read_plan, replay
from voipqos.lab.replay_corpus import CORPUS
from voipqos.lab.replay_eval import call_runs

pytestmark = pytest.mark.kernel
PREFIX = f"vqdd{os.getpid()}-"


def call_start(name: str) -> int:
    """The first call's first second as the corpus scoring counts it (a burst before
    the call, such as WhatsApp's first 2 s of relay set-up, is not the call)."""
    truth = json.loads((CORPUS / f"{name}.truth.json").read_text())
    return call_runs({int(t): n for t, n in truth["media"].items()})[0].start


def run(name: str, tmp: Path) -> tuple[dict, float]:
    """Replay capture `name` with the daemon on the router: its last status (taken
    while the replay's tail still runs) and the wall time of the replay's first datagram."""
    conf = write_config(tmp / "voipqos", tmp / "run", off_hold="15", min_on="30")
    seen: dict = {}

    @contextmanager
    def daemon(topo: netns.Topology) -> Iterator[None]:
        log = (tmp / "daemon.log").open("w")
        p = topo.popen("router", [sys.executable, "-m", "voipqos.cli", "run",
                                  "--foreground", "--config", str(conf)], stderr=log)
        try:
            wait_for(lambda d: d["observer"]["state"] == "on", 10, conf)
            seen["start"] = time.time()
            yield
            seen["doc"] = status(conf)
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(15) == 0, (tmp / "daemon.log").read_text()[-2000:]

    replay(read_plan(CORPUS / f"{name}.plan.gz"), PREFIX, during=daemon)
    return seen["doc"], seen["start"]


@pytest.mark.parametrize("name", ["whatsapp-video", "snapchat-video"])
def test_a_real_call_switches_on_from_its_rtp_headers(name, tmp_path):
    doc, start = run(name, tmp_path)
    on = [t for t in doc["transitions"] if t["state"] == "on"]
    assert on, doc["transitions"]
    first = min(on, key=lambda t: t["at"])
    assert first["reason"] == "call confirmed by RTP headers", doc["transitions"]
    delay = first["at"] - start - call_start(name)
    assert delay <= 3.0, (delay, doc["transitions"])
    assert doc["profile"]["applied"] and doc["profile"]["backend"] == "htb"
    assert doc["recent_calls"] or doc["calls"]
    assert doc["observer"]["state"] == "on" and doc["observer"]["flows"] >= 1


def test_a_real_game_never_switches_on(tmp_path):
    doc, _ = run("game-nintendo", tmp_path)
    assert [t["state"] for t in doc["transitions"]] == ["watching"], doc["transitions"]
    assert not doc["calls"] and not doc["recent_calls"]
