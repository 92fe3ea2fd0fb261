"""The observer on a real path and next to the classifier: lan -- router -- wan with NAT
and conntrack, the observer on the router's wan0 egress and ingress.

An RTP call both ways through the router: `read()` has its counts under the key that
the router's conntrack entry gives (reply src, sport, dport), each direction as the
reference model counts the packets the endpoints sent. The classifier and the observer
share clsact hooks and the pin directory: either can be attached first and removed
first without touching the other, and the last one leaves the device as it was.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_bpf_netns import RTP_ANSWER, RTP_SEND, obj, topo  # noqa: F401  (fixtures)
from test_sqm import KERNEL_RUN_SH, SQM_CONF, tree  # noqa: F401  (tree: a fixture)
from voipqos import bpf, config, conntrack
from voipqos.header_evidence import IN, OUT, FlowHeaders
from voipqos.headerwatch import HeaderWatch
from voipqos.lab import netns
from voipqos.observer import Observer
from voipqos.sqm import SqmProfile

pytestmark = pytest.mark.kernel


def rtp_payloads(n: int, skip: set[int], ssrc: int) -> list[bytes]:
    """What test_bpf_netns's RTP_STREAM sends: packets 0..n-1 but `skip`."""
    return [struct.pack("!BBHII", 0x80, 0, i, 160 * i, ssrc) + bytes(160)
            for i in range(n) if i not in skip]


def reply_key(t: netns.Topology, sport: int) -> tuple[str, int, int]:
    """(reply src, sport, dport) of the router's entry for the LAN port: the observer's key."""
    deadline = time.monotonic() + 5
    while True:
        snap = conntrack.parse(t.exec("router", "cat /proc/net/nf_conntrack").stdout.splitlines())
        for e in snap.entries.values():
            if e.orig.sport == sport:
                return e.reply.src, e.reply.sport, e.reply.dport
        assert time.monotonic() < deadline, f"no conntrack entry from port {sport}"
        time.sleep(0.05)


def test_call_through_nat_is_counted_under_the_conntrack_reply_key(topo, obj, tmp_path):  # noqa: F811
    t = topo
    sink = t.popen("wan", [sys.executable, "-c", RTP_ANSWER, "5004", "100", "7,50,51"],
                   stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
    o = Observer(str(tmp_path / "bpffs"), obj, netns=t.ns("router"))
    try:
        o.ensure("wan0")
        up = t.popen("lan", [sys.executable, "-c", RTP_SEND, netns.LAN_HOST4, "40000",
                             netns.WAN_HOST4, "5004", "150", "5,17,18,40"])
        key = reply_key(t, 40000)
        assert up.wait(timeout=20) == 0
        received = json.loads(sink.communicate(timeout=10)[0].splitlines()[-1])
        headers = o.read()
    finally:
        o.close()
    ref = FlowHeaders()
    ref.packet(OUT, b"hello")
    for p in rtp_payloads(150, {5, 17, 18, 40}, 1111):
        ref.packet(OUT, p)
    for p in rtp_payloads(100, {7, 50, 51}, 2222):
        ref.packet(IN, p)
    assert len(received) == 146  # nothing lost on the way: the model saw what the wire did
    assert key == (netns.WAN_HOST4, 5004, key[2]) and key[2] != 0
    assert headers[key] == ref.counts()
    assert (ref.counts().rtp_out, ref.counts().rtp_in) == (145, 96)


def filters(t: netns.Topology, hook: str) -> str:
    return t.exec("router", f"tc filter show dev wan0 {hook}").stdout


@pytest.mark.parametrize("first", ["classifier", "observer"])
def test_classifier_and_observer_come_and_go_independently(topo, obj, tmp_path, first):  # noqa: F811
    t, pin = topo, tmp_path / "bpffs"
    clf = bpf.Classifier(str(pin), obj, netns=t.ns("router"))
    o = Observer(str(pin), obj, netns=t.ns("router"))
    order = [clf, o] if first == "classifier" else [o, clf]
    try:
        for prog in order:
            for hook in bpf.HOOKS:
                prog.attach("wan0", hook)
        for hook in bpf.HOOKS:
            shown = filters(t, hook)
            assert "voipqos_eth" in shown and "voipqos_obs_eth" in shown
        assert {p.name for p in (pin / "tc" / "globals").iterdir()} == {
            "voipqos_flows", "voipqos_config", "voipqos_ports", "voipqos_stats", "voipqos_seen"}
        # the first one leaves: the second keeps its hooks, its pins and its work
        order[0].close()
        gone, kept = ("voipqos_eth", "voipqos_obs_eth") if first == "classifier" else \
            ("voipqos_obs_eth", "voipqos_eth")
        for hook in bpf.HOOKS:
            shown = filters(t, hook)
            assert gone not in shown and kept in shown
            order[1].prog_id("wan0", hook)
        assert "clsact" in t.exec("router", "tc qdisc show dev wan0").stdout
        if first == "classifier":
            assert o.read() == {}
            clf.attach("wan0", "egress")  # and comes back next to it
            assert "voipqos_obs_eth" in filters(t, "egress")
        else:
            clf.set_flows([(17, netns.LAN_HOST4, netns.WAN_HOST4, 40000, 5004)])
            # its maps still work: readable, nothing in the voice class (the router's own
            # IPv6 ND/MLD packets may count as "other" at any moment: not asserted)
            assert clf.counters()["voice"]["packets"] == 0
    finally:
        for prog in order:
            prog.close()
    for hook in bpf.HOOKS:
        assert filters(t, hook) == ""
    assert "clsact" not in t.exec("router", "tc qdisc show dev wan0").stdout
    assert str(pin) not in Path("/proc/self/mounts").read_text()


def test_observer_makes_way_for_sqm_and_sits_on_its_qdiscs(topo, obj, tree):  # noqa: F811
    """sqm-scripts adds a plain `ingress` qdisc, which the kernel refuses next to the
    observer's clsact ("Exclusivity flag on"): the daemon's HeaderWatch steps aside before
    sqm starts, then attaches on sqm's ingress qdisc and root; after sqm stops (its
    qdiscs and the filters on them gone) it comes back on a clsact."""
    t = topo
    (tree / "sqm").write_text(SQM_CONF.replace("'eth1'", "'wan0'"))
    (tree / "run.sh").write_text(KERNEL_RUN_SH.format(ns=t.ns("router"), state=tree / "state"))
    prof = SqmProfile(config.from_options({"backend": "sqm"}), "wan0", str(tree / "bpffs"),
                      config_path=str(tree / "sqm"), run_sh=str(tree / "run.sh"),
                      state_dir=str(tree / "state"), netns=t.ns("router"))
    watch = HeaderWatch(lambda: Observer(str(tree / "bpffs"), obj, netns=t.ns("router")))
    watch.configure(True, "wan0")
    try:
        assert watch.read() == {} and "voipqos_obs_eth" in filters(t, "ingress")
        watch.step_aside()
        prof.apply()
        assert "qdisc ingress ffff:" in t.exec("router", "tc qdisc show dev wan0").stdout
        assert watch.read() == {} and watch.status()["state"] == "on"
        assert "voipqos_obs_eth" in filters(t, "ingress")
        assert "voipqos_obs_eth" in t.exec("router", "tc filter show dev wan0 parent 1:").stdout
        prof.remove()
        watch.kernel_changed(device_announced=False)
        assert watch.read() == {} and "voipqos_obs_eth" in filters(t, "egress")
        assert "clsact" in t.exec("router", "tc qdisc show dev wan0").stdout
    finally:
        watch.stop()
        prof.remove()
    assert filters(t, "egress") == "" and filters(t, "ingress") == ""
    assert "clsact" not in t.exec("router", "tc qdisc show dev wan0").stdout
