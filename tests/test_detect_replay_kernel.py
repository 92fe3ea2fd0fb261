"""One real capture replayed through the real kernel: a namespace router with NAT and
conntrack (lab/replay.py) from its committed plan, then the daemon's Detector and
Hysteresis over what /proc/net/nf_conntrack showed. Checks the replay keeps the
capture's packets and sizes, and that the kernel's view gives the same verdict as the
committed snapshot sequence CI replays without a kernel."""

from __future__ import annotations

import os

import pytest

from voipqos import config
from voipqos.conntrack import parse
from voipqos.detect import DetectConfig, Detector
from voipqos.header_evidence import IN, OUT, FlowHeaders, worth_tracking
from voipqos.hysteresis import Hysteresis, HysteresisConfig
from voipqos.lab import netns
from voipqos.lab.replay import read_plan, read_snapshots, replay
from voipqos.lab.replay_corpus import CORPUS
from voipqos.lab.replay_eval import LAB_SIDES, header_map, observed

PREFIX = "vqd-r"


def verdicts(snaps: list[tuple[float, list[str]]]) -> tuple[list[int], bool]:
    cfg = config.defaults()
    det = Detector(DetectConfig.from_config(cfg))
    hyst = Hysteresis(HysteresisConfig.from_config(cfg), 0.0)
    calls = []
    for t, lines in snaps:
        d = det.update(parse(lines, cfg.sip_ports, taken_at=t), LAB_SIDES)
        hyst.step(t, len(d.calls))
        calls.append(len(d.calls))
    return calls, hyst.active


@pytest.mark.kernel
def test_sip_rtp_capture_through_the_kernel():
    plan = read_plan(CORPUS / "sip-rtp-g711.plan.gz")
    try:
        res = replay(plan, f"{PREFIX}{os.getpid()}-")
    finally:
        leftover = [n for n in netns.run(["ip", "netns", "list"]).stdout.split()
                    if n.startswith(f"{PREFIX}{os.getpid()}-")]
    assert not leftover, f"namespaces left behind: {leftover}"
    assert res.sent == len(plan.sends) and res.dropped == 0
    last = parse(res.snapshots[-1][1])
    [entry] = last.entries.values()
    # conntrack counted every datagram at its original IP length (280 B: G.711 20 ms)
    assert (entry.orig_packets, entry.orig_bytes) == (236, 236 * 280)
    got, on = verdicts(res.snapshots)
    want, want_on = verdicts(read_snapshots(CORPUS / "sip-rtp-g711.ct"))
    assert on == want_on is True
    # the same polls see the call, give or take the one poll a second's edge can move
    assert abs(sum(got) - sum(want)) <= 1 and got.index(1) - want.index(1) in (-1, 0, 1)


@pytest.mark.kernel
def test_the_observers_counts_in_the_scoring_are_what_the_wan_device_carries():
    """The corpus scoring computes the observer's counters from the plan's heads, keyed
    through conntrack's NAT view (replay_eval.observed/header_map). Here a real WhatsApp
    video call (TURN relay, STUN, RTP both ways) goes through the kernel's NAT and every
    datagram on the router's WAN device is counted by the reference model: the same
    counts under the same keys."""
    plan = read_plan(CORPUS / "whatsapp-video.plan.gz")
    try:
        res = replay(plan, f"{PREFIX}{os.getpid()}-", speed=2.0, tap=True)
    finally:
        leftover = [n for n in netns.run(["ip", "netns", "list"]).stdout.split()
                    if n.startswith(f"{PREFIX}{os.getpid()}-")]
    assert not leftover, f"namespaces left behind: {leftover}"
    wire: dict[tuple[str, int, int], FlowHeaders] = {}
    for out, src, sport, dst, dport, head in res.wan:
        key = (dst, dport, sport) if out else (src, sport, dport)
        if key in wire or worth_tracking(head, key[1:]):
            wire.setdefault(key, FlowHeaders()).packet(OUT if out else IN, head)
    [final] = observed(plan, 0.0, [float("inf")])
    modelled = {}
    for _, lines in res.snapshots:  # every entry ever seen: its LAN port -> NAT key
        modelled.update(header_map(parse(lines), final))
    assert modelled and {k: f.counts() for k, f in wire.items()} == modelled
    total = [sum(c.rtp_out for c in modelled.values()), sum(c.rtp_in for c in modelled.values()),
             sum(c.stun_out + c.stun_in for c in modelled.values())]
    assert min(total) > 0, total  # RTP both ways and STUN: the test saw real headers
