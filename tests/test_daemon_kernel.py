"""The real daemon in a lan–router–wan namespace lab, polling the router's conntrack.

A call-like UDP stream (50 pps each way, 160 B payload) must be reported as a call within
3 polls and dropped after the off-hold once it stops; a flood and a bulk stream must not.
The daemon runs `--dry-run` (log backend): shaping itself is tested in test_tc_kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from line_faults import cli, status, wait_for, write_config
from voipqos.lab import netns

pytestmark = pytest.mark.kernel
PREFIX = f"vqk{os.getpid()}-"  # other worktrees run these tests at the same time


@pytest.fixture
def lab(tmp_path):
    with netns.three_hosts(PREFIX) as topo:
        yield topo


def start_daemon(lab: netns.Topology, conf: Path, log: Path) -> subprocess.Popen:
    p = lab.popen("router", [sys.executable, "-m", "voipqos.cli", "run", "--foreground",
                             "--dry-run", "--config", str(conf)],
                  stderr=log.open("w"))
    wait_for(lambda d: d["metrics"]["polls"] >= 1, 10, conf)
    return p


def stream(lab: netns.Topology, pps: float, size: int, duration: float, port: int = 20000,
           back_pps: float | None = None) -> None:
    gen = [sys.executable, "-m", "voipqos.lab.udpgen"]
    lab.popen("wan", [*gen, "--bind", f"{netns.WAN_HOST4}:{port}", "--answer",
                      "--pps", str(back_pps if back_pps is not None else pps),
                      "--size", str(size), "--duration", str(duration + 2)])
    time.sleep(0.3)
    lab.popen("lan", [*gen, "--to", f"{netns.WAN_HOST4}:{port}", "--pps", str(pps),
                      "--size", str(size), "--duration", str(duration)])


def test_call_detected_within_three_polls_and_dropped_after_hold(lab, tmp_path):
    conf = write_config(tmp_path / "voipqos", tmp_path / "run")
    daemon = start_daemon(lab, conf, tmp_path / "daemon.log")
    stream(lab, pps=50, size=160, duration=8)
    polls = status(conf)["metrics"]["polls"]
    # the daemon's poll count is the clock: reported within 3 polls of the stream's
    # start (which falls within the poll after `polls`), plus one poll of status lag
    doc, _ = wait_for(lambda d: d["calls"] or d["metrics"]["polls"] > polls + 5, 10, conf)
    assert doc["calls"] and doc["metrics"]["polls"] <= polls + 5, "call not seen in 3 polls"
    doc, _ = wait_for(lambda d: d["state"] == "on", 4, conf)
    # a full poll interval: the first rate of a new entry is partial
    polls = doc["metrics"]["polls"]
    doc, _ = wait_for(lambda d: d["metrics"]["polls"] >= polls + 2, 4, conf)
    assert doc["traffic"]["tx_bytes"] > 0 and doc["traffic"]["rx_packets"] > 0  # wan0's own
    call = doc["calls"][0]
    assert call["lan_host"] == netns.LAN_HOST4 and call["far_host"] == netns.WAN_HOST4
    assert call["lan_known"] and 40 <= call["pps_out"] <= 60 and 40 <= call["pps_in"] <= 60
    # the stream stops after 8 s; the conntrack entry lingers with frozen counters
    doc, _ = wait_for(lambda d: not d["calls"], 10, conf)
    doc, _ = wait_for(lambda d: d["state"] == "watching", 6, conf)
    assert [t["state"] for t in doc["transitions"]][:3] == ["watching", "on", "watching"]
    # its entry lingers with frozen counters (or, idle, is not even decoded): not media
    flows = json.loads(cli("flows", "--json", "--all", "--config", str(conf)).stdout)
    assert not any(f["dport"] == 20000 and f["verdict"] == "media" for f in flows["flows"])
    daemon.terminate()
    assert daemon.wait(10) == 0


@pytest.mark.parametrize("name, pps, size", [("flood", 3000, 100), ("bulk", 900, 1200)])
def test_flood_and_bulk_are_not_calls(lab, tmp_path, name, pps, size):
    conf = write_config(tmp_path / "voipqos", tmp_path / "run")
    start_daemon(lab, conf, tmp_path / "daemon.log")
    polls = status(conf)["metrics"]["polls"]
    stream(lab, pps=pps, size=size, duration=5)
    doc, _ = wait_for(lambda d: d["metrics"]["polls"] >= polls + 4, 8, conf)
    assert doc["calls"] == [] and doc["state"] == "watching", doc
    flows = json.loads(cli("flows", "--json", "--all", "--config", str(conf)).stdout)
    ours = [f for f in flows["flows"] if f["dport"] == 20000]
    assert ours and ours[0]["verdict"] == "other"
    assert "above" in ours[0]["reasons"][0]


def tc_state(lab: netns.Topology) -> tuple[str, str, str]:
    """Root qdiscs of wan0, voipqos IFBs, BPF filters on wan0 (what must not pile up)."""
    qdiscs = lab.exec("router", f"tc qdisc show dev {netns.ROUTER_WAN_DEV}").stdout
    links = lab.exec("router", "ip -o link show type ifb").stdout
    filters = lab.exec("router", f"tc filter show dev {netns.ROUTER_WAN_DEV} egress").stdout
    return qdiscs, links, filters


def test_kill_9_with_profile_on_then_restart_leaves_one_tree(lab, tmp_path):
    """The real backend (HTB + IFB + BPF): a daemon killed hard while shaping is adopted
    or cleaned by the next one, and a clean stop leaves nothing."""
    conf = write_config(tmp_path / "voipqos", tmp_path / "run", download="20000")
    cmd = [sys.executable, "-m", "voipqos.cli", "run", "--foreground", "--config", str(conf)]
    first = lab.popen("router", cmd)
    wait_for(lambda d: d["metrics"]["polls"] >= 1, 10, conf)
    assert cli("on", "--config", str(conf)).returncode == 0
    wait_for(lambda d: d["active"] and d["profile"]["classifier"] == "bpf", 5, conf)
    qdiscs, links, _ = tc_state(lab)
    assert qdiscs.count("qdisc htb 5651: root") == 1 and links.count("vqi-") == 1
    first.kill()  # SIGKILL: no cleanup at all
    first.wait(5)
    second = lab.popen("router", cmd)
    wait_for(lambda d: d["metrics"]["polls"] >= 1, 10, conf)
    # the new daemon starts off (auto, no call): the leftover profile is gone (what is
    # left is the header-evidence observer, voipqos_obs_*, which runs while off too)
    qdiscs, links, filters = tc_state(lab)
    assert "htb" not in qdiscs and "vqi-" not in links and "voipqos_eth" not in filters
    assert cli("on", "--config", str(conf)).returncode == 0
    wait_for(lambda d: d["active"], 5, conf)
    qdiscs, links, filters = tc_state(lab)
    assert qdiscs.count("qdisc htb 5651: root") == 1 and links.count("vqi-") == 1
    assert filters.count("voipqos_eth") == 1
    second.terminate()
    assert second.wait(10) == 0
    qdiscs, links, filters = tc_state(lab)
    assert "htb" not in qdiscs and "vqi-" not in links and "voipqos" not in filters
