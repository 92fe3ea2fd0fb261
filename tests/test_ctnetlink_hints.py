"""Observer hints to the conntrack reader against the real kernel: a new UDP flow through
the lab router's NAT is watched in the poll its reply-tuple hint comes with, even when
the discovery cycle gets no turn; without the hint it is not; a hint for a flow that does
not exist costs one lookup and is then remembered; IPv6 hints are not looked up; and the
real observer's key for an RTP call through the NAT is the hint that finds its entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from test_bpf_netns import RTP_ANSWER, RTP_SEND, obj  # noqa: F401  (obj: a fixture)
from voipqos.conntrack import Tuple
from voipqos.ctnetlink import reply_hints
from voipqos.lab import netns
from voipqos.observer import Observer

pytestmark = pytest.mark.kernel

POLLS = """
import json, sys, time
from voipqos import config, ctnetlink
from voipqos.header_evidence import HeaderCounts
from voipqos.system import System

ctnetlink.SLICE_MIN_S = ctnetlink.SLICE_MAX_S = 0.0  # discovery never gets a turn
looked = []
real_lookup = ctnetlink.lookup
ctnetlink.lookup = lambda t: looked.append(t) or real_lookup(t)
far4, far6, wan4, wan6 = sys.argv[1:5]
rtp = HeaderCounts(rtp_out=20)
headers = {(far4, 4000, 41000): rtp,  # the stream through the NAT
           (far4, 4000, 41999): rtp,  # no such flow (a stale map entry)
           (far6, 4000, 41001): rtp,  # IPv6: the reply goes to the LAN host, not known
           (far4, 4000, 41002): HeaderCounts(stun_in=3)}  # STUN only: not a hint
system, cfg = System(), config.defaults()
out = []
for with_hints in (False, True, True, True):
    snap = system.snapshot(cfg, time.monotonic(), headers if with_hints else None,
                           {wan4, wan6})
    out.append({"keys": sorted(map(list, snap.entries)),
                "looked": [[t.src, t.dst, t.sport, t.dport] for t in looked]})
    looked.clear()
    time.sleep(0.2)
print(json.dumps(out))
"""
SEND = ("import socket, time\n"
        "s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s4.bind(('', 41000))\n"
        "s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s6.bind(('', 41001))\n"
        "end = time.monotonic() + 6\n"
        "while time.monotonic() < end:\n"
        "    s4.sendto(b'v' * 160, ('{far4}', 4000)); s6.sendto(b'v' * 160, ('{far6}', 4000))\n"
        "    time.sleep(0.02)\n")


def test_hinted_flow_is_watched_at_once_and_a_missing_one_looked_up_once():
    with netns.three_hosts(f"vqh{os.getpid() % 100000}-") as t:
        sender = t.popen("lan", [sys.executable, "-c", SEND.format(
            far4=netns.WAN_HOST4, far6=netns.WAN_HOST6)])
        deadline = time.monotonic() + 5
        while "dport=41000" not in t.exec("router", "conntrack -L -p udp").stdout:
            assert time.monotonic() < deadline, "the stream never reached conntrack"
            time.sleep(0.05)
        out = json.loads(t.exec("router", [sys.executable, "-c", POLLS, netns.WAN_HOST4,
                                           netns.WAN_HOST6, netns.ROUTER_WAN4,
                                           netns.ROUTER_WAN6], timeout=30).stdout)
        sender.kill()
        sender.wait(timeout=5)
    flow = ["udp", netns.LAN_HOST4, netns.WAN_HOST4, 41000, 4000, 0]
    assert out[0] == {"keys": [], "looked": []}  # no hint, no discovery: not seen
    assert out[1]["keys"] == [flow]  # the hint's poll
    assert out[1]["looked"] == [[netns.WAN_HOST4, netns.ROUTER_WAN4, 4000, 41000],
                                [netns.WAN_HOST4, netns.ROUTER_WAN4, 4000, 41999]]
    # then watched (refreshed, not looked up again); the missing one is remembered
    assert out[2] == out[3] == {"keys": [flow], "looked": []}


HINTED = """
import json, sys, time
from voipqos import ctnetlink
from voipqos.conntrack import Tuple
ctnetlink.SLICE_MIN_S = ctnetlink.SLICE_MAX_S = 0.0  # discovery never gets a turn
t = ctnetlink.Tracker()
print(json.dumps([sorted(map(list, t.poll(time.monotonic(), [Tuple(*h) for h in hints])
                                   .entries)) for hints in json.loads(sys.argv[1])]))
"""


def test_the_real_observers_key_finds_the_nat_entry(obj, tmp_path):  # noqa: F811
    """The chain the daemon runs: an RTP call through the NAT, the observer's map read,
    reply_hints with the router's WAN addresses, one lookup: the call's entry."""
    with netns.three_hosts(f"vqh{os.getpid() % 100000}o-") as t:
        sink = t.popen("wan", [sys.executable, "-c", RTP_ANSWER, "5004", "100", "0"],
                       stdout=subprocess.PIPE, text=True)
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        o = Observer(str(tmp_path / "bpffs"), obj, netns=t.ns("router"))
        try:
            o.ensure(netns.ROUTER_WAN_DEV)
            up = t.popen("lan", [sys.executable, "-c", RTP_SEND, netns.LAN_HOST4, "40000",
                                 netns.WAN_HOST4, "5004", "150", "0"])
            deadline = time.monotonic() + 10
            while not (hints := reply_hints(o.read(), {netns.ROUTER_WAN4,
                                                       netns.ROUTER_WAN6})):
                assert time.monotonic() < deadline, "no RTP counted by the observer"
                time.sleep(0.1)
            polls = json.loads(t.exec("router", [sys.executable, "-c", HINTED, json.dumps(
                [[], [[h.src, h.dst, h.sport, h.dport] for h in hints]])]).stdout)
            up.wait(timeout=20)
            sink.communicate(timeout=10)
        finally:
            o.close()
    assert hints == [Tuple(netns.WAN_HOST4, netns.ROUTER_WAN4, 5004, hints[0].dport)]
    assert polls == [[], [["udp", netns.LAN_HOST4, netns.WAN_HOST4, 40000, 5004, 0]]]
