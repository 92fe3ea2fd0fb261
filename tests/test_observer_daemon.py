"""The real daemon and the observer in the lan–router–wan lab (`voipqos run --dry-run`:
the observer only observes, so a dry run has it too).

With `header_evidence` on the daemon attaches the observer on wan0 at its first poll
(profile off), reads it every poll into the detector (status `observer.flows` counts
the call's entry, the call flow's reasons cite its RTP headers, which switch the profile
on at once),
attaches it again when the device is re-created, and leaves no filter after SIGTERM;
after a kill -9, `voipqos remove` deletes what it left. Off, nothing is attached. An
object that cannot load turns header evidence off with the cause in status, and the
daemon goes on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from line_faults import cli, wait_for, write_config
from test_bpf_netns import RTP_ANSWER, RTP_SEND
from voipqos.lab import netns

pytestmark = pytest.mark.kernel
PREFIX = f"vqo{os.getpid()}-"
WAN = netns.ROUTER_WAN_DEV


@pytest.fixture
def lab():
    with netns.three_hosts(PREFIX) as topo:
        yield topo


def start(lab: netns.Topology, conf: Path, log: Path, **env: str) -> subprocess.Popen:
    p = lab.popen("router", [sys.executable, "-m", "voipqos.cli", "run", "--foreground",
                             "--dry-run", "--config", str(conf)],
                  stderr=log.open("w"), env={**os.environ, **env})
    wait_for(lambda d: d["metrics"]["polls"] >= 1, 10, conf)
    return p


def flows(conf: Path) -> list[dict]:
    return json.loads(cli("flows", "--json", "--all", "--config", str(conf)).stdout)["flows"]


def ours(lab: netns.Topology) -> str:
    """The observer's filters on wan0, both hooks."""
    return "".join(line for hook in ("egress", "ingress") for line in
                   lab.exec("router", f"tc filter show dev {WAN} {hook}").stdout.splitlines()
                   if "voipqos_obs" in line)


def test_daemon_attaches_reads_and_removes_the_observer(lab, tmp_path):
    conf = write_config(tmp_path / "voipqos", tmp_path / "run")
    daemon = start(lab, conf, tmp_path / "daemon.log")
    doc, _ = wait_for(lambda d: d["observer"]["state"] == "on", 5, conf)
    assert doc["observer"]["device"] == WAN and doc["state"] == "watching"
    assert ours(lab).count("voipqos_obs_eth") == 2  # egress and ingress, profile off
    sink = lab.popen("wan", [sys.executable, "-c", RTP_ANSWER, "5004", "200", "999"],
                     stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    call = lab.popen("lan", [sys.executable, "-c", RTP_SEND, netns.LAN_HOST4, "40000",
                             netns.WAN_HOST4, "5004", "200", "999"])  # 4 s both ways
    wait_for(lambda d: d["observer"]["flows"] >= 1, 5, conf)
    # the detector got the headers: its reasons for the call's flow cite them
    deadline = time.monotonic() + 4
    while not any("RTP headers" in r for f in flows(conf) if f["dport"] == 5004
                  for r in f["reasons"]):
        assert time.monotonic() < deadline, flows(conf)
        time.sleep(0.25)
    # and RTP headers make the call sure: on at the first poll that sees it, not after
    # on_polls (2) polls in a row
    doc, _ = wait_for(lambda d: d["state"] == "on", 4, conf)
    assert doc["reason"] == "call confirmed by RTP headers", doc["transitions"]
    assert call.wait(10) == 0
    # a PPPoE reconnect: the device goes and comes back (new index, no filters)
    lab.exec("router", f"ip link del {WAN}")
    wait_for(lambda d: d["observer"]["state"] == "off", 5, conf)
    lab.link("router", WAN, "wan", "eth0")
    wait_for(lambda d: d["observer"]["state"] == "on", 5, conf)
    assert ours(lab).count("voipqos_obs_eth") == 2
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    assert ours(lab) == "" and "clsact" not in lab.exec("router", f"tc qdisc show dev {WAN}").stdout

    # killed hard: its filters stay until `voipqos remove`
    daemon = start(lab, conf, tmp_path / "daemon2.log")
    wait_for(lambda d: d["observer"]["state"] == "on", 5, conf)
    daemon.kill()
    daemon.wait(5)
    assert ours(lab)
    res = lab.exec("router", [sys.executable, "-m", "voipqos.cli", "remove", "--config",
                              str(conf)])
    assert res.returncode == 0, res.stderr
    assert ours(lab) == "" and "clsact" not in lab.exec("router", f"tc qdisc show dev {WAN}").stdout


def test_option_off_attaches_nothing(lab, tmp_path):
    conf = write_config(tmp_path / "voipqos", tmp_path / "run", header_evidence="0")
    daemon = start(lab, conf, tmp_path / "daemon.log")
    doc, _ = wait_for(lambda d: d["metrics"]["polls"] >= 2, 5, conf)
    assert doc["observer"] == {"state": "off", "reason": "header_evidence is 0",
                               "device": None, "flows": 0, "read_ms": 0.0}
    assert ours(lab) == "" and "observer" not in {w["code"] for w in doc["warnings"]}
    daemon.terminate()
    assert daemon.wait(10) == 0


def test_an_object_that_cannot_load_turns_it_off_not_the_daemon(lab, tmp_path):
    broken = tmp_path / "bpf"
    broken.mkdir()
    (broken / "voipqos-bpfel.o").write_bytes(b"not an object")
    conf = write_config(tmp_path / "voipqos", tmp_path / "run")
    daemon = start(lab, conf, tmp_path / "daemon.log", VOIPQOS_BPF_DIR=str(broken))
    doc, _ = wait_for(lambda d: d["metrics"]["polls"] >= 3, 5, conf)
    assert doc["observer"]["state"] == "off"
    assert "not a 64-bit ELF object" in doc["observer"]["reason"]
    warning = next(w for w in doc["warnings"] if w["code"] == "observer")
    assert warning["message"].startswith("header evidence off: ")
    assert ours(lab) == "" and "clsact" not in lab.exec("router", f"tc qdisc show dev {WAN}").stdout
    log = (tmp_path / "daemon.log").read_text()
    assert log.count("header evidence off") == 1  # said once, not retried every poll
    daemon.terminate()
    assert daemon.wait(10) == 0
