"""The HTB profile on the real kernel: lan - router - wan namespaces (prefix vqc-)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pyroute2 import NetNS

from voipqos import config, probe
from voipqos import plan as P
from voipqos.htb import HtbProfile
from voipqos.lab import netns
from voipqos.profile import ProfileError
from voipqos.tc import Tc

pytestmark = pytest.mark.kernel

PREFIX = f"vqc{os.getpid() % 100000}-"  # unique: other worktrees run these too
ROUTER = PREFIX + "router"
IFB = P.ifb_name(netns.ROUTER_WAN_DEV)


class Lab:
    def __init__(self, topo: netns.Topology, pins: str) -> None:
        self.topo, self.pins = topo, pins
        self.ns = NetNS(ROUTER)
        self.features = probe.probe(self.ns)
        self.made: list[HtbProfile] = []

    def profile(self, bpf_obj: Path | None = None, **opts: str | list[str]) -> HtbProfile:
        cfg = config.from_options({"upload": "10000", "download": "20000",
                                   "voice_ports": ["10000-10100"], **opts})
        prof = HtbProfile(cfg, netns.ROUTER_WAN_DEV, self.pins, tc=Tc(self.ns),
                          features=self.features, netns=ROUTER, bpf_obj=bpf_obj)
        self.made.append(prof)
        return prof

    def tc(self, *args: str) -> list[dict]:
        out = self.topo.exec("router", ["tc", "-j", "-s", *args]).stdout
        return json.loads(out or "[]")

    def classes(self, dev: str = netns.ROUTER_WAN_DEV) -> dict[str, dict]:
        """handle "5651:10" -> packets, rate (bytes/s), leaf ("5652:"); via netlink because
        iproute2 6.1 prints no JSON for htb classes."""
        def fmt(h: int) -> str:
            return f"{h >> 16:x}:{h & 0xFFFF:x}" if h & 0xFFFF else f"{h >> 16:x}:"

        idx = self.ns.link_lookup(ifname=dev)[0]
        leaves = {q["parent"]: fmt(q["handle"]) for q in self.ns.get_qdiscs(index=idx)}
        out = {}
        for c in self.ns.get_classes(index=idx):
            parms = dict(c.get_attr("TCA_OPTIONS")["attrs"])["TCA_HTB_PARMS"]
            out[fmt(c["handle"])] = {"packets": c.get_attr("TCA_STATS")["packets"],
                                     "rate": parms["rate"], "leaf": leaves.get(c["handle"])}
        return out

    def qdiscs(self, dev: str = netns.ROUTER_WAN_DEV) -> list[tuple[str, str]]:
        return sorted((q["kind"], q["handle"]) for q in self.tc("qdisc", "show", "dev", dev))

    def links(self) -> set[str]:
        out = self.topo.exec("router", "ip -j link show").stdout
        return {link["ifname"] for link in json.loads(out)}

    def udp(self, host: str, dst: str, dport: int, count: int = 20, sport: int = 0) -> None:
        code = ("import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                f"s.bind(('',{sport}));"
                f"[s.sendto(b'x'*160,('{dst}',{dport})) for _ in range({count})]")
        self.topo.exec(host, [sys.executable, "-c", code])

    def pins_left(self) -> list[str]:
        globals_dir = Path(self.pins) / "tc" / "globals"
        return sorted(p.name for p in globals_dir.iterdir()) if globals_dir.exists() else []


@pytest.fixture
def lab() -> Iterator[Lab]:
    pins = tempfile.mkdtemp(prefix="vqc-pins-")
    subprocess.run(["mount", "-t", "bpf", "bpf", pins], check=True)
    topo = netns.three_hosts(PREFIX)
    lab = Lab(topo, pins)
    try:
        yield lab
    finally:
        for prof in lab.made:
            with contextlib.suppress(ProfileError):
                prof.remove()
        lab.ns.close()
        topo.close()
        subprocess.run(["umount", pins], check=False)
        Path(pins).rmdir()


def packets(cls: dict) -> int:
    return cls["packets"]


def direct_packets(lab: Lab, dev: str) -> int:
    return Tc(lab.ns).direct_packets(dev)


def test_apply_builds_exactly_one_tree(lab: Lab) -> None:
    prof = lab.profile()
    prof.apply()
    for dev in (netns.ROUTER_WAN_DEV, IFB):
        assert set(lab.classes(dev)) == {"5651:1", "5651:10", "5651:20"}
        kinds = lab.qdiscs(dev)
        assert [k for k in kinds if k[0] == "htb"] == [("htb", "5651:")]
        leaves = {h: c["leaf"] for h, c in lab.classes(dev).items()}
        assert leaves["5651:10"] == "5652:" and leaves["5651:20"] == "5653:"
    assert ("clsact", "ffff:") in lab.qdiscs()
    st = prof.status()
    assert st["applied"] and st["classifier"] in ("bpf", "u32") and st["leaf"] in (
        "fq_codel", "pfifo")
    if not lab.features.fq_codel:
        assert "leaf_fallback" in {w["code"] for w in st["warnings"]}


def test_unmatched_traffic_is_shaped_in_the_default_class(lab: Lab) -> None:
    lab.profile().apply()
    lab.udp("lan", netns.WAN_HOST4, 4000)  # upload via wan0
    lab.udp("wan", netns.ROUTER_WAN4, 4001)  # download via the IFB
    for dev in (netns.ROUTER_WAN_DEV, IFB):
        classes = lab.classes(dev)
        assert packets(classes["5651:20"]) >= 20
        assert packets(classes["5651:10"]) == 0
        assert direct_packets(lab, dev) == 0


def test_second_apply_changes_nothing_and_rates_change_in_place(lab: Lab) -> None:
    prof = lab.profile()
    prof.apply()
    tc = Tc(lab.ns)
    before = tc.observe(netns.ROUTER_WAN_DEV)
    ifb_index = tc.index(IFB)
    prof.apply()
    assert tc.observe(netns.ROUTER_WAN_DEV) == before
    faster = lab.profile(upload="30000", download="40000")
    faster.apply()
    assert tc.index(IFB) == ifb_index
    after = tc.observe(netns.ROUTER_WAN_DEV)
    assert [type(o) for o in after.objects] == [type(o) for o in before.objects]
    assert {getattr(o, "handle", None) for o in after.objects} == {
        getattr(o, "handle", None) for o in before.objects}
    assert lab.classes()["5651:1"]["rate"] == 30_000_000 // 8  # bytes/s


def test_apply_remove_cycles_leave_nothing(lab: Lab) -> None:
    for _ in range(3):
        prof = lab.profile()
        prof.apply()
        assert IFB in lab.links()
        prof.remove()
        assert lab.qdiscs() == [("noqueue", "0:")]
        assert IFB not in lab.links()
        assert lab.pins_left() == []
        assert prof.status()["applied"] is False
    lab.profile().remove()  # nothing there: still fine


def test_killed_daemon_leftovers_are_adopted_then_cleaned(lab: Lab) -> None:
    code = (f"from voipqos import config;from voipqos.htb import HtbProfile;"
            f"p=HtbProfile(config.from_options({{'download':'20000'}}),'wan0','{lab.pins}');"
            "p.apply();print(p.classifier,flush=True);import time;time.sleep(60)")
    proc = lab.topo.popen("router", [sys.executable, "-c", code], stdout=subprocess.PIPE,
                          text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() in ("bpf", "u32")
    proc.kill()
    proc.wait()
    prof = lab.profile()
    prof.apply()  # adopts: one tree, same handles, no second IFB
    assert [k for k in lab.qdiscs() if k[0] == "htb"] == [("htb", "5651:")]
    assert sorted(n for n in lab.links() if n.startswith("vqi-")) == [IFB]
    lab.profile().remove()  # a fresh instance cleans everything by handle and name
    assert lab.qdiscs() == [("noqueue", "0:")]
    assert IFB not in lab.links()
    assert lab.pins_left() == []


def test_remove_leaves_the_users_objects_alone(lab: Lab) -> None:
    lab.topo.exec("router", "tc qdisc add dev wan0 clsact")
    lab.topo.exec("router", "tc filter add dev wan0 egress pref 100 protocol ip u32 "
                  "match ip dst 203.0.113.0/24 classid 1:1")
    lab.topo.exec("router", "tc qdisc add dev lan0 root handle 7: pfifo limit 50")
    prof = lab.profile()
    prof.apply()
    prof.remove()
    assert ("clsact", "ffff:") in lab.qdiscs()
    assert any(f.get("pref") == 100 for f in lab.tc("filter", "show", "dev", "wan0", "egress"))
    assert ("pfifo", "7:") in lab.qdiscs("lan0")
    assert not [q for q in lab.qdiscs() if q[0] == "htb"]


def test_u32_fallback_classifies_voice_ports(lab: Lab, tmp_path: Path) -> None:
    broken = tmp_path / "broken.o"
    broken.write_bytes(b"not an ELF object")
    prof = lab.profile(bpf_obj=broken)
    prof.apply()
    st = prof.status()
    assert st["classifier"] == "u32"
    assert "bpf_fallback" in {w["code"] for w in st["warnings"]}
    lab.udp("lan", netns.WAN_HOST4, 10050)  # voice port range, upload
    lab.udp("lan", netns.WAN_HOST4, 9000)  # not voice
    lab.udp("wan", netns.ROUTER_WAN4, 4000, sport=10001)  # voice, download via the IFB
    up, down = lab.classes(), lab.classes(IFB)
    assert packets(up["5651:10"]) == 20 and packets(up["5651:20"]) >= 20
    assert packets(down["5651:10"]) == 20
    assert direct_packets(lab, "wan0") == 0
    prof.set_flows([(17, netns.ROUTER_WAN4, netns.WAN_HOST4, 7000, 7001)])
    lab.udp("router", netns.WAN_HOST4, 7001, sport=7000)
    assert packets(lab.classes()["5651:10"]) == 40
    assert prof.status()["counters"]["voice"]["packets"] >= 60


def test_refuses_another_shaper(lab: Lab) -> None:
    lab.topo.exec("router", "tc qdisc add dev wan0 root handle 1: htb default 1")
    prof = lab.profile()
    with pytest.raises(ProfileError, match="another shaper"):
        prof.apply()
    assert "other_shaper" in {w["code"] for w in prof.status()["warnings"]}
    assert IFB not in lab.links()
    assert ("htb", "1:") in lab.qdiscs()


def test_failed_apply_rolls_back(lab: Lab) -> None:
    # a foreign device under the IFB's name: creating the IFB fails midway
    lab.topo.exec("router", f"ip link add {IFB} type veth peer name vqc-peer")
    prof = lab.profile()
    with pytest.raises(ProfileError, match=f"add ifb {IFB}"):
        prof.apply()
    assert lab.qdiscs() == [("noqueue", "0:")]
    assert IFB in lab.links()  # not ours: left alone
    prof.remove()
    assert IFB in lab.links()


def test_drain_burst_rates_then_configured_rates_in_place(lab: Lab) -> None:
    prof = lab.profile()
    prof.apply(0.5)
    tc = Tc(lab.ns)
    handles = {getattr(o, "handle", None) for o in tc.observe(netns.ROUTER_WAN_DEV).objects}
    ifb_index = tc.index(IFB)
    assert lab.classes()["5651:1"]["rate"] == 5_000_000 // 8
    prof.apply()
    assert lab.classes()["5651:1"]["rate"] == 10_000_000 // 8
    assert tc.index(IFB) == ifb_index
    assert {getattr(o, "handle", None)
            for o in tc.observe(netns.ROUTER_WAN_DEV).objects} == handles


def test_turning_download_off_detaches_the_ingress_classifier(lab: Lab) -> None:
    prof = lab.profile()
    prof.apply()
    ingress = f"tc filter show dev {netns.ROUTER_WAN_DEV} ingress"
    assert "voipqos_eth" in lab.topo.exec("router", ingress).stdout
    prof.cfg = config.from_options({"upload": "10000", "download": "0"})  # a reload
    prof.apply()
    assert "voipqos_eth" not in lab.topo.exec("router", ingress, check=False).stdout
    assert "vqi-" not in lab.topo.exec("router", "ip -o link show type ifb").stdout


def test_switch_time_is_short(lab: Lab) -> None:
    """Not a benchmark (see bench/profile_switch.py): a sanity bound only."""
    prof = lab.profile()
    t0 = time.perf_counter()
    prof.apply()
    prof.remove()
    assert time.perf_counter() - t0 < 10


def test_apply_in_a_fresh_netns_mount_gets_bpf_not_an_error(tmp_path):
    """`ip netns exec` gives a fresh /sys without bpffs: the one-shot apply mounts the
    system bpffs itself and loads the classifier, instead of failing half-built."""
    import sys

    from voipqos.lab import netns as nn

    conf = tmp_path / "voipqos"
    conf.write_text("config voipqos 'main'\n\toption interface 'wan0'\n\toption download '0'\n")
    with nn.three_hosts(PREFIX + "s") as t:
        cmd = [sys.executable, "-m", "voipqos.cli"]
        res = t.exec("router", [*cmd, "apply", "--config", str(conf)], check=False)
        assert res.returncode == 0, res.stderr
        shown = t.exec("router", "tc filter show dev wan0 egress").stdout
        assert "voipqos_eth" in shown
        res = t.exec("router", [*cmd, "remove", "--config", str(conf)], check=False)
        assert res.returncode == 0, res.stderr
        assert "htb" not in t.exec("router", "tc qdisc show dev wan0").stdout


def test_run_when_disabled_removes_what_a_killed_daemon_left(tmp_path):
    """`enabled 0` by any path leaves the line unshaped: `voipqos run` on a disabled
    config removes a profile left behind (here by a one-shot apply) and exits."""
    import sys

    from voipqos.lab import netns as nn

    conf = tmp_path / "voipqos"
    base = f"config voipqos 'main'\n\toption interface 'wan0'\n\toption run_dir '{tmp_path}'\n"
    conf.write_text(base)
    with nn.three_hosts(PREFIX + "d") as t:
        cmd = [sys.executable, "-m", "voipqos.cli"]
        res = t.exec("router", [*cmd, "apply", "--config", str(conf)], check=False)
        assert res.returncode == 0, res.stderr
        assert "htb" in t.exec("router", "tc qdisc show dev wan0").stdout
        conf.write_text(base + "\toption enabled '0'\n")
        res = t.exec("router", [*cmd, "run", "--foreground", "--config", str(conf)],
                     check=False)
        assert res.returncode == 0, res.stderr
        assert "not running" in res.stdout
        assert "htb" not in t.exec("router", "tc qdisc show dev wan0").stdout
        assert "vqi-wan0" not in t.exec("router", "ip link show").stdout


# --- the service's own process: pyroute2 only in the worker, counters without it --------

SERVICE = """
import json, sys
from pathlib import Path
from voipqos import config
from voipqos.htb import HtbProfile
from voipqos.tc import Tc

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS"))

cfg = config.from_options({"upload": "10000", "download": "20000"})
prof = HtbProfile(cfg, "wan0", sys.argv[1], bpf_obj=Path("/nonexistent/voipqos.o"))
out = {}
if sys.argv[2] == "apply":
    prof.apply()  # through the worker: probe and tc
    out["objects"] = len(Tc().observe("wan0").objects)
    out["worker"] = Tc()._local is None and __import__("voipqos.tc").tc.worker().proc.pid
else:
    for _ in range(500):
        prof.status()
    before = rss()
    for _ in range(10_000):  # what LuCI's status poll costs the service, 10k times
        counters = prof.status()["counters"]
    out.update(growth=rss() - before, counters=counters)
out["pyroute2"] = "pyroute2" in sys.modules
print(json.dumps(out))
"""


def service(lab: Lab, what: str) -> dict:
    res = lab.topo.exec("router", [sys.executable, "-c", SERVICE, lab.pins, what], timeout=120)
    return json.loads(res.stdout)


def test_service_switches_through_the_worker_and_never_loads_pyroute2(lab: Lab) -> None:
    got = service(lab, "apply")
    assert got["objects"] > 0 and not got["pyroute2"]
    assert {"5651:1", "5651:10", "5651:20"} <= set(lab.classes())
    deadline = time.monotonic() + 10  # the worker ends when its parent's pipe closes
    while _running(got["worker"]):
        assert time.monotonic() < deadline, "the worker outlived the service"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie's cmdline is empty)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def test_status_counters_match_the_kernel_and_10k_calls_keep_memory_flat(lab: Lab) -> None:
    prof = lab.profile(bpf_obj=Path("/nonexistent/voipqos.o"))  # u32: counters from tc
    prof.apply()
    lab.udp("lan", netns.WAN_HOST4, 4000, count=25)
    on = service(lab, "status")
    kernel = sum(lab.classes(dev)["5651:20"]["packets"] for dev in (netns.ROUTER_WAN_DEV, IFB))
    assert 25 <= on["counters"]["other"]["packets"] <= kernel  # read first; ND may follow
    prof.remove()
    off = service(lab, "status")  # the leak of issue 16 was while off
    assert off["counters"]["other"]["packets"] == 0
    for got in (on, off):
        assert not got["pyroute2"]
        assert got["growth"] < 256 * 1024  # pyroute2 0.9.7's link_lookup: +24 MB


def test_a_bug_in_apply_rolls_back_and_keeps_its_type(lab: Lab) -> None:
    tc = Tc(lab.ns)
    wan = netns.ROUTER_WAN_DEV
    root = P.Qdisc(wan, P.TC_H_ROOT, P.handle(P.ROOT), "htb", (("default", P.DEFAULT),))
    broken = P.FilterGroup(wan, P.handle(P.ROOT), 0x100, P.ETH_P_IP, (("not a Match",),))
    with pytest.raises(AttributeError):  # not disguised as the kernel refusing
        tc.apply([P.Step("add", root), P.Step("add", broken)])
    assert tc.observe(wan).objects == ()


TCP_UPLOAD = """
import socket, sys
s = socket.create_connection((sys.argv[1], 5001))
s.sendall(b"x" * 300_000)
s.close()
"""
TCP_SINK = """
import socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 5001))
srv.listen(1)
conn, _ = srv.accept()
while conn.recv(65536):
    pass
"""


def test_pure_acks_take_the_voice_class_with_pfifo_leaves(lab: Lab) -> None:
    """An upload: its data segments are shaped in wan0's default class, the receiver's
    pure ACKs coming back go through the IFB's voice class."""
    feats = replace(lab.features, fq_codel=False)
    cfg = config.from_options({"upload": "10000", "download": "20000"})
    prof = HtbProfile(cfg, netns.ROUTER_WAN_DEV, lab.pins, tc=Tc(lab.ns), features=feats,
                      netns=ROUTER, bpf_obj=Path("/nonexistent/voipqos.o"))
    lab.made.append(prof)
    prof.apply()
    sink = lab.topo.popen("wan", [sys.executable, "-c", TCP_SINK])
    time.sleep(0.3)
    lab.topo.exec("lan", [sys.executable, "-c", TCP_UPLOAD, netns.WAN_HOST4])
    sink.wait(timeout=10)
    up, down = lab.classes(), lab.classes(IFB)
    assert packets(up["5651:20"]) >= 150 > packets(up["5651:10"])  # the data segments
    assert packets(down["5651:10"]) >= 50 > packets(down["5651:20"])  # the ACKs
