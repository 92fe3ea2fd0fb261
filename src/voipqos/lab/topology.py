"""The lab's four hosts: phone (LAN) – router (runs voipqos) – isp (the bottleneck) – far end.

The isp namespace plays the modem and the access line: a plain rate limit with a deep
FIFO in each direction, the way real modems buffer hundreds of milliseconds. That is where
bufferbloat happens when nobody shapes; voipqos on the router shapes a little below these
rates so the queue moves onto the router, where the voice class wins.

The router runs an fw4-like ruleset: conntrack in use, masquerade on wan0, and the SIP
conntrack helper (OpenWrt's kmod-nf-nathelper-extra) so a SIP call from behind NAT gets
its SDP addresses rewritten, as it does on a real router with the SIP ALG enabled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .netns import Topology, router_ruleset

PHONE4, ROUTER_LAN4 = "192.168.88.2", "192.168.88.1"
ROUTER_WAN4, ISP_CPE4 = "203.0.113.2", "203.0.113.1"
ISP_NET4, FAR4 = "198.51.100.1", "198.51.100.2"
ROUTER_LAN_DEV, ROUTER_WAN_DEV = "lan0", "wan0"
ISP_CPE_DEV, ISP_NET_DEV = "cpe0", "net0"  # isp's side towards the router / the far end


@dataclass(frozen=True)
class Line:
    """The access line the isp namespace models."""

    up_kbit: int = 10_000
    down_kbit: int = 20_000
    buffer_ms: int = 500  # modem FIFO depth at the line rate

    def fifo_bytes(self, kbit: int) -> int:
        """Bytes a FIFO holds for buffer_ms at kbit; at least a few full packets."""
        return max(kbit * 1000 // 8 * self.buffer_ms // 1000, 4 * 1514)


def _bottleneck(t: Topology, dev: str, kbit: int, fifo_bytes: int) -> None:
    t.exec("isp", f"tc qdisc replace dev {dev} root handle 1: htb default 1")
    t.exec("isp", f"tc class add dev {dev} parent 1: classid 1:1 htb rate {kbit}kbit "
                  f"ceil {kbit}kbit")
    t.exec("isp", f"tc qdisc add dev {dev} parent 1:1 handle 10: bfifo limit {fifo_bytes}")


def four_hosts(prefix: str, line: Line) -> Topology:
    """phone – router – isp – far, IPv4, NAT on the router's wan0. Caller must close()."""
    t = Topology(prefix)
    try:
        for short in ("phone", "router", "isp", "far"):
            t.add(short)
        t.link("phone", "eth0", "router", ROUTER_LAN_DEV)
        t.link("router", ROUTER_WAN_DEV, "isp", ISP_CPE_DEV)
        t.link("isp", ISP_NET_DEV, "far", "eth0")
        t.addr("phone", "eth0", f"{PHONE4}/24")
        t.addr("router", ROUTER_LAN_DEV, f"{ROUTER_LAN4}/24")
        t.addr("router", ROUTER_WAN_DEV, f"{ROUTER_WAN4}/24")
        t.addr("isp", ISP_CPE_DEV, f"{ISP_CPE4}/24")
        t.addr("isp", ISP_NET_DEV, f"{ISP_NET4}/24")
        t.addr("far", "eth0", f"{FAR4}/24")
        t.route("phone", f"default via {ROUTER_LAN4}")
        t.route("router", f"default via {ISP_CPE4}")
        t.route("far", f"default via {ISP_NET4}")
        for short in ("router", "isp"):
            t.sysctl(short, "net.ipv4.ip_forward", "1")
        t.nft("router", router_ruleset(ROUTER_WAN_DEV, ROUTER_LAN_DEV, sip_helper=True))
        t.sysctl("router", "net.netfilter.nf_conntrack_acct", "1")
        _bottleneck(t, ISP_NET_DEV, line.up_kbit, line.fifo_bytes(line.up_kbit))
        _bottleneck(t, ISP_CPE_DEV, line.down_kbit, line.fifo_bytes(line.down_kbit))
        time.sleep(0.05)
    except BaseException:
        t.close()
        raise
    return t
