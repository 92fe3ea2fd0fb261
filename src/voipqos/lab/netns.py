"""Network-namespace topologies for the kernel tests and the lab (needs root, iproute2, nft).

`Topology` creates namespaces and veth links and always removes them again: use it as a
context manager, or call `close()` in a `finally`. Names carry a prefix so parallel runs
and leftovers from a killed run can be told apart (`cleanup_prefix`).

Addresses are documentation/ULA ranges inside our own namespaces only.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field


def router_ruleset(wan: str, lan: str | None = None, nat: bool = True,
                   sip_helper: bool = False) -> str:
    """An nft ruleset like OpenWrt's fw4: conntrack in use (the kernel tracks nothing in
    a namespace until a rule uses it), masquerade out of `wan`. With `lan`, new forwarded
    connections only from the LAN (fw4's default zones); with `sip_helper`, the SIP ALG
    (kmod-nf-nathelper-extra) so a SIP call's SDP addresses survive NAT."""
    helper = """
  ct helper sip5060 {
    type "sip" protocol udp
    l3proto inet
  }
  chain prerouting {
    type filter hook prerouting priority filter; policy accept;
    udp dport 5060 ct helper set "sip5060"
  }""" if sip_helper else ""
    policy, from_lan = ("drop", f'\n    iifname "{lan}" accept') if lan else ("accept", "")
    return f"""
flush ruleset
table inet voipqos_lab {{{helper}
  chain forward {{
    type filter hook forward priority filter; policy {policy};
    ct state established,related accept
    ct state invalid drop{from_lan}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    ct state established,related accept
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{wan}" {"masquerade" if nat else "accept"}
  }}
}}
"""



def run(cmd: list[str] | str, check: bool = True, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    if check and res.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: {res.stderr.strip() or res.returncode}")
    return res


def cleanup_prefix(prefix: str) -> None:
    """Delete every namespace whose name starts with prefix (leftovers of a killed run)."""
    for line in run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix):
            run(["ip", "netns", "pids", name], check=False)
            for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
                run(["kill", "-9", pid], check=False)
            run(["ip", "netns", "del", name], check=False)


@dataclass
class Topology:
    prefix: str
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def ns(self, short: str) -> str:
        return f"{self.prefix}{short}"

    def add(self, short: str) -> str:
        name = self.ns(short)
        run(["ip", "netns", "del", name], check=False)
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.exec(short, "ip link set lo up")
        return name

    def exec(self, short: str, cmd: list[str] | str, check: bool = True,
             input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        args = shlex.split(cmd) if isinstance(cmd, str) else cmd
        return run(["ip", "netns", "exec", self.ns(short), *args], check, input, timeout)

    def popen(self, short: str, cmd: list[str] | str, **kw) -> subprocess.Popen:
        """Start a process in a namespace; it is killed on close()."""
        args = shlex.split(cmd) if isinstance(cmd, str) else cmd
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(short), *args], **kw)
        self.procs.append(p)
        return p

    def sysctl(self, short: str, key: str, value: str) -> None:
        self.exec(short, ["sysctl", "-qw", f"{key}={value}"])

    def link(self, a: str, a_dev: str, b: str, b_dev: str) -> None:
        """A veth pair between two namespaces, up, offloads off (the shaper must see
        real packet sizes)."""
        run(["ip", "link", "add", a_dev, "netns", self.ns(a), "type", "veth",
             "peer", "name", b_dev, "netns", self.ns(b)])
        for short, dev in ((a, a_dev), (b, b_dev)):
            self.exec(short, f"ip link set {dev} up")
            self.exec(short, f"ethtool -K {dev} tso off gso off gro off", check=False)

    def addr(self, short: str, dev: str, *cidrs: str) -> None:
        for cidr in cidrs:
            flags = " nodad" if ":" in cidr else ""
            self.exec(short, f"ip addr add {cidr} dev {dev}{flags}")

    def route(self, short: str, *specs: str) -> None:
        for spec in specs:
            self.exec(short, f"ip route add {spec}")

    def nft(self, short: str, ruleset: str) -> None:
        self.exec(short, ["nft", "-f", "-"], input=ruleset)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        for name in reversed(self.namespaces):
            for pid in run(["ip", "netns", "pids", name], check=False).stdout.split():
                run(["kill", "-9", pid], check=False)
            run(["ip", "netns", "del", name], check=False)
        self.namespaces.clear()
        self.procs.clear()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Addresses of the three-host lab: lan -- router -- wan
LAN_NET4, LAN_NET6 = "192.168.77.0/24", "fd77::/64"
LAN_HOST4, LAN_HOST6 = "192.168.77.2", "fd77::2"
ROUTER_LAN4, ROUTER_LAN6 = "192.168.77.1", "fd77::1"
ROUTER_WAN4, ROUTER_WAN6 = "198.51.100.1", "2001:db8:77::1"
WAN_HOST4, WAN_HOST6 = "198.51.100.2", "2001:db8:77::2"
ROUTER_LAN_DEV, ROUTER_WAN_DEV = "lan0", "wan0"


def three_hosts(prefix: str, nat: bool = True) -> Topology:
    """lan -- router -- wan: the router forwards with an fw4-like conntrack ruleset,
    masquerades on wan0 (IPv4) and has nf_conntrack_acct=1. Caller must close()."""
    cleanup_prefix(prefix)  # leftovers of a killed run with the same names
    t = Topology(prefix)
    try:
        for short in ("lan", "router", "wan"):
            t.add(short)
        t.link("lan", "eth0", "router", ROUTER_LAN_DEV)
        t.link("router", ROUTER_WAN_DEV, "wan", "eth0")
        t.addr("lan", "eth0", f"{LAN_HOST4}/24", f"{LAN_HOST6}/64")
        t.addr("router", ROUTER_LAN_DEV, f"{ROUTER_LAN4}/24", f"{ROUTER_LAN6}/64")
        t.addr("router", ROUTER_WAN_DEV, f"{ROUTER_WAN4}/24", f"{ROUTER_WAN6}/64")
        t.addr("wan", "eth0", f"{WAN_HOST4}/24", f"{WAN_HOST6}/64")
        t.route("lan", f"default via {ROUTER_LAN4}", f"default via {ROUTER_LAN6}")
        t.route("wan", f"{LAN_NET6} via {ROUTER_WAN6}")
        if not nat:
            t.route("wan", f"{LAN_NET4} via {ROUTER_WAN4}")
        t.sysctl("router", "net.ipv4.ip_forward", "1")
        t.sysctl("router", "net.ipv6.conf.all.forwarding", "1")
        t.nft("router", router_ruleset(ROUTER_WAN_DEV, nat=nat))
        t.exec("router", "modprobe nf_conntrack", check=False)
        t.sysctl("router", "net.netfilter.nf_conntrack_acct", "1")
        time.sleep(0.05)
    except BaseException:
        t.close()
        raise
    return t


def require_root() -> str | None:
    """None if kernel tests can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nft", "ethtool"):
        if run(["which", tool], check=False).returncode:
            return f"needs {tool}"
    return None
