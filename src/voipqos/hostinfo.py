"""Where the router's WAN and LAN are: the WAN device's addresses and the other
interfaces' networks, read from the OS. Feeds detect.Sides (which end of a flow is ours).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess

import psutil

from .config import shown
from .detect import Sides


class DeviceError(ValueError):
    """The configured interface cannot be resolved to a network device."""


def device_exists(dev: str) -> bool:
    return os.path.exists(f"/sys/class/net/{dev}")


def resolve_device(interface: str) -> str:
    """A device name as is; a logical OpenWrt interface (wan) through
    `ubus call network.interface.<name> status` → l3_device."""
    if device_exists(interface):
        return interface
    name = interface.lstrip("@")
    if shutil.which("ubus") is None:
        raise DeviceError(f"main.interface: {shown(interface)} is no network device here, "
                          "and there is no ubus to resolve a logical interface")
    res = subprocess.run(["ubus", "call", f"network.interface.{name}", "status"],
                         capture_output=True, text=True, timeout=5)
    if res.returncode != 0:
        raise DeviceError(f"main.interface: {shown(interface)} is neither a device nor a "
                          "logical interface known to netifd")
    status = json.loads(res.stdout or "{}")
    dev = status.get("l3_device") or status.get("device")
    if not dev or not status.get("up", True):
        raise DeviceError(f"main.interface: logical interface {shown(name)} is down "
                          "(no l3_device)")
    return str(dev)


def _network(addr: str, mask: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if ":" in addr:
        bits = bin(int(ipaddress.IPv6Address(mask))).count("1") if mask else 128
        return ipaddress.IPv6Network(f"{addr}/{bits}", strict=False)
    return ipaddress.IPv4Network(f"{addr}/{mask or '255.255.255.255'}", strict=False)


def sides(wan_device: str) -> Sides:
    """The WAN device's addresses and every other interface's networks (not loopback,
    not link-local)."""
    wan: set[str] = set()
    lan: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for dev, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            addr = a.address.split("%")[0]
            ip = ipaddress.ip_address(addr)
            if ip.is_loopback or ip.is_link_local:
                continue
            if dev == wan_device:
                wan.add(ip.compressed)
            else:
                lan.append(_network(addr, a.netmask or ""))
    return Sides(frozenset(wan), tuple(lan))
