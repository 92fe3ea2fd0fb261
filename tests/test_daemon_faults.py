"""Issue 14's "it leaves the line wrong" and issue 16's status-truth rows as kernel tests:
the real daemon in a namespace router, a fault, and a deadline for the kernel to be right
again (the probes live in line_faults.py, which also runs them as a script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pyroute2 import NetNS

from line_faults import PROBES, run_probe
from voipqos import config, probe
from voipqos.htb import HtbProfile
from voipqos.lab import netns
from voipqos.profile import ProfileError
from voipqos.tc import Tc

pytestmark = pytest.mark.kernel
PREFIX = f"vqz{os.getpid()}-h-"


@pytest.mark.parametrize("name", list(PROBES))
def test_fault_is_repaired(name, tmp_path):
    res = run_probe(name, tmp_path, f"vqz{os.getpid()}-f{list(PROBES).index(name):02d}-")
    assert res.ok, f"{name}: restore {res.restore_s}, {res.detail}"


@pytest.fixture
def router(tmp_path):
    """The lab's router namespace and a private bpffs for the classifier's pins."""
    pins = tmp_path / "pins"
    pins.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(pins)], check=True)
    try:
        with netns.three_hosts(PREFIX) as topo:
            yield topo, str(pins)
    finally:
        subprocess.run(["umount", str(pins)], check=False)


def htb(topo: netns.Topology, pins: str) -> HtbProfile:
    cfg = config.from_options({"upload": "10000", "download": "20000"})
    ns = NetNS(topo.ns("router"))
    return HtbProfile(cfg, netns.ROUTER_WAN_DEV, pins, tc=Tc(ns), features=probe.probe(ns),
                      netns=topo.ns("router"))


def test_a_detached_classifier_is_reported_as_such(router):
    topo, pins = router
    prof = htb(topo, pins)
    prof.apply()
    try:
        assert prof.check() is None and prof.status()["classifier"] == "bpf"
        topo.exec("router", f"tc filter del dev {netns.ROUTER_WAN_DEV} ingress pref 1")
        assert "classifier is not attached" in (prof.check() or "")
        assert prof.status()["classifier"] == "none"
        prof.apply()  # compares with the kernel, not with what it attached before
        assert prof.check() is None and prof.status()["classifier"] == "bpf"
    finally:
        prof.remove()
        prof.tc.close()


def test_a_failed_flow_table_update_keeps_the_previous_set(router):
    topo, pins = router
    prof = htb(topo, pins)
    prof.apply()
    try:
        call = {(17, "192.168.1.2", "203.0.113.9", 4000, 5000)}
        prof.set_flows(call)
        too_many = {(17, "192.168.1.2", "203.0.113.9", 4000, p) for p in range(2000)}
        with pytest.raises(ProfileError, match="table full"):
            prof.set_flows(too_many)
        assert prof.flows == call  # not the set the kernel refused
    finally:
        prof.remove()
        prof.tc.close()


WATCH = """
import json, subprocess
from voipqos.linkwatch import LinkWatch
w = LinkWatch()
out = [w.events()]
subprocess.run("ip link add vqt0 type veth peer name vqt1", shell=True, check=True)
out.append(w.events())
subprocess.run("tc qdisc add dev vqt0 root pfifo", shell=True, check=True)
out.append(w.events())
subprocess.run("ip link set vqt0 name vqt2", shell=True, check=True)
out.append(w.events())
print(json.dumps([[e.seen, sorted(e.links)] for e in out]))
"""


def test_link_watch_sees_links_and_tc_in_its_namespace(router):
    topo, _ = router
    got = json.loads(topo.exec("router", [sys.executable, "-c", WATCH]).stdout)
    assert got[0] == [False, []]
    assert got[1][0] and {"vqt0", "vqt1"} <= set(got[1][1])
    assert got[2] == [True, []]  # a tc change: seen, no device announced
    assert got[3][0] and "vqt2" in got[3][1]
