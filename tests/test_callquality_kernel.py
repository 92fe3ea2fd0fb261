"""The real daemon (HTB + IFB + BPF classifier) in a lan–router–wan namespace lab with
NAT: a real RTP call across the router, with packets the phone never got out and packets
the far end's side lost, must show in `status` per call and direction while it runs and,
after it ends, in `recent_calls` and the daemon's one log line per finished call."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from line_faults import wait_for, write_config
from voipqos.lab import netns

pytestmark = pytest.mark.kernel
PREFIX = f"vqcq{os.getpid() % 100000}-"  # unique: a bench or a second run beside CI

# one side of an RTP call: 20 ms PCMU packets, every `every`th one not sent (lost before
# it reaches the router on the LAN side, or on the internet side for the far end's)
RTP_PEER = """
import socket, struct, sys, time
bind, to, n, every, ssrc = sys.argv[1:]
host, port = bind.rsplit(":", 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((host, int(port)))
if to == "answer":
    s.settimeout(10)
    _, peer = s.recvfrom(2048)
else:
    h, p = to.rsplit(":", 1)
    peer = (h, int(p))
t0 = time.monotonic()
for i in range(int(n)):
    time.sleep(max(0.0, t0 + 0.02 * i - time.monotonic()))
    if int(every) and i % int(every) == int(every) - 1:
        continue
    s.sendto(struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, 160 * i, int(ssrc)) + bytes(160), peer)
"""


@pytest.fixture
def lab():
    with netns.three_hosts(PREFIX) as topo:
        yield topo


def test_daemon_reports_a_calls_loss_and_its_end_of_call_summary(lab, tmp_path: Path):
    conf = write_config(tmp_path / "voipqos", tmp_path / "run", download="20000")
    log = tmp_path / "daemon.log"
    daemon = lab.popen("router", [sys.executable, "-m", "voipqos.cli", "run", "--foreground",
                                  "--config", str(conf)], stderr=log.open("w"))
    try:
        wait_for(lambda d: d["metrics"]["polls"] >= 1, 10, conf)
        n = 700  # 14 s
        far = lab.popen("wan", [sys.executable, "-c", RTP_PEER, f"{netns.WAN_HOST4}:5004",
                                "answer", str(n), "25", "2222"])
        phone = lab.popen("lan", [sys.executable, "-c", RTP_PEER, f"{netns.LAN_HOST4}:40000",
                                  f"{netns.WAN_HOST4}:5004", str(n), "20", "1111"])
        # shaping on, the call's tuples in the classifier, a few hundred packets counted
        doc, _ = wait_for(lambda d: d["calls"] and d["profile"]["classifier"] == "bpf"
                          and (d["calls"][0]["quality"]["egress"] or {}).get("expected", 0)
                          >= 200, 20, conf)
        assert doc["calls"], doc
        q = doc["calls"][0]["quality"]
        assert q["known"]
        out, inb = q["egress"], q["ingress"]
        # every 20th packet the phone did not send: the Wi-Fi/LAN side; every 25th of the
        # far end's: the internet side (a partial window: within one packet of the ratio)
        assert out["ssrc"] == 1111 and abs(out["loss_percent"] - 5.0) <= 100 / out["expected"]
        assert inb["ssrc"] == 2222 and abs(inb["loss_percent"] - 4.0) <= 100 / inb["expected"]
        assert out["where"] == "on the Wi-Fi/LAN side" and out["trouble"].startswith("losing")
        assert inb["trouble"] == "losing 4 % on the internet side"
        assert 1.0 <= out["mos"] < 4.4 and out["jitter_ms"] is not None
        assert phone.wait(20) == 0 and far.wait(10) == 0
        doc, _ = wait_for(lambda d: d["recent_calls"], 20, conf)
        s = doc["recent_calls"][0]
        assert s["id"] == f"{netns.LAN_HOST4}>{netns.WAN_HOST4}" and s["duration"] >= 5
        # the last read before the tuples left the table: the whole measured call
        final = s["quality"]
        assert final["egress"]["expected"] >= out["expected"]
        assert abs(final["egress"]["loss_percent"] - 5.0) <= 0.5
        assert abs(final["ingress"]["loss_percent"] - 4.0) <= 0.5
        daemon.terminate()
        assert daemon.wait(10) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(5)
    lines = [x for x in log.read_text().splitlines() if " ended after " in x]
    assert len(lines) == 1, lines
    assert re.search(rf"call {re.escape(s['id'])} ended after \d+s: in [34]\.\d % lost, "
                     r"jitter [\d.]+ ms, MOS \d\.\d; out [45]\.\d % lost, jitter [\d.]+ ms, "
                     r"MOS \d\.\d; losing 5 % on the Wi-Fi/LAN side; losing 4 % on the "
                     r"internet side", lines[0]), lines[0]
