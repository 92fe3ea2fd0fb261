"""probe.py: the check report, foreign-shaper detection, and the real probe in a namespace."""

from __future__ import annotations

import os

import pytest

from voipqos import probe
from voipqos.lab import netns
from voipqos.plan import TC_H_EGRESS, TC_H_ROOT, Features
from voipqos.tc import Foreign


def test_report_names_packages_for_missing_parts() -> None:
    rep = probe.report(Features(cake=False, cls_bpf=False, conntrack_acct=False))
    assert rep["ok"] is True
    assert rep["features"]["cls_bpf"] == {"present": False, "package": "kmod-sched-bpf",
                                          "used_for": probe.NEEDS["cls_bpf"][1]}
    codes = {w["code"]: w for w in rep["warnings"]}
    assert "kmod-sched-bpf" in codes["missing_kmod"]["fix"]
    assert "acct_off" in codes
    text = probe.format_report(rep)
    assert "MISSING cls_bpf" in text and "kmod-sched-bpf" in text
    assert not probe.report(Features(htb=False))["ok"]


@pytest.mark.parametrize("found,expect", [
    ([], None),
    ([Foreign("qdisc", "noqueue", 0, TC_H_ROOT)], None),  # kernel default
    ([Foreign("qdisc", "cake", 0x80010000, TC_H_ROOT)], "another shaper (cake 8001:)"),
    ([Foreign("qdisc", "pfifo", 0x70000, TC_H_ROOT)], "a foreign root qdisc"),
    ([Foreign("qdisc", "ingress", 0xFFFF0000, 0xFFFFFFF1)], "ingress qdisc"),
    ([Foreign("filter", "bpf", 2, TC_H_EGRESS, "qosify_egress")], "qosify"),
    ([Foreign("filter", "u32", 100, TC_H_EGRESS)], None),  # a user's filter is no shaper
])
def test_foreign_shaper(found: list[Foreign], expect: str | None) -> None:
    got = probe.foreign_shaper("wan0", found)
    assert (got is None) if expect is None else (expect in (got or ""))


@pytest.mark.kernel
def test_probe_in_a_namespace_leaves_nothing() -> None:
    from pyroute2 import NetNS

    with netns.Topology(f"vqc{os.getpid() % 100000}p-") as topo:
        topo.add("x")
        ns = NetNS(topo.ns("x"))
        try:
            feats = probe.probe(ns)
        finally:
            ns.close()
        assert feats.htb and feats.ifb and feats.clsact and feats.u32 and feats.mirred
        assert topo.exec("x", "ip -br link").stdout.split()[0] == "lo"
        assert len(topo.exec("x", "ip -br link").stdout.splitlines()) == 1


def test_flow_offloading_in_fw4_config_is_a_check_warning(tmp_path) -> None:
    fw = tmp_path / "firewall"
    fw.write_text("config defaults\n\toption flow_offloading '1'\n\toption input 'ACCEPT'\n")
    found = probe.flow_offload(str(fw))
    assert found == "firewall flow_offloading is on"
    rep = probe.report(probe.Features(htb=True), found)
    [warning] = [w for w in rep["warnings"] if w["code"] == "offload"]
    assert "flow_offloading=0" in warning["fix"]
    fw.write_text("config defaults\n\toption flow_offloading '0'\n")
    assert probe.flow_offload(str(fw)) is None  # and no flowtable in this namespace
