"""Notice the kernel changing under the profile: link and tc events from rtnetlink.

A PPPoE reconnect re-creates the WAN device, someone deletes our IFB or root qdisc, a
device is renamed: the kernel announces each on the RTMGRP_LINK / RTMGRP_TC multicast
groups. Draining that socket costs one non-blocking recv() when nothing happened, so the
daemon can look every poll (and more often while shaping) and only then read the kernel
back. Plain `socket` and `struct`, no pyroute2: the only thing parsed is the name in
RTM_NEWLINK messages, so a device that (re)appears can be told from other changes.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTMGRP_LINK, RTMGRP_TC = 0x1, 0x8
RTM_NEWLINK = 16
IFLA_IFNAME = 3
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG_SIZE = 16
_RTATTR = struct.Struct("=HH")  # len, type


@dataclass(frozen=True)
class Events:
    seen: bool = False  # any link or tc change
    links: frozenset[str] = frozenset()  # devices announced new or changed (RTM_NEWLINK)


def _align(n: int) -> int:
    return (n + 3) & ~3


def new_links(data: bytes) -> set[str]:
    """Device names of the RTM_NEWLINK messages in one netlink datagram."""
    out: set[str] = set()
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype = _NLMSGHDR.unpack_from(data, off)[:2]
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        if mtype == RTM_NEWLINK:
            a = off + _NLMSGHDR.size + _IFINFOMSG_SIZE
            while a + _RTATTR.size <= off + length:
                alen, atype = _RTATTR.unpack_from(data, a)
                if alen < _RTATTR.size:
                    break
                if atype == IFLA_IFNAME:
                    out.add(data[a + 4:a + alen].split(b"\0")[0].decode(errors="replace"))
                a += _align(alen)
        off += _align(length)
    return out


class LinkWatch:
    """A subscription in the calling process's network namespace."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                              NETLINK_ROUTE)
            s.bind((0, RTMGRP_LINK | RTMGRP_TC))
            self.sock = s
        except OSError as exc:  # no netlink (not Linux?): report a change every time
            log.warning("no rtnetlink events (%s): checking the kernel every poll",
                        exc.strerror)

    def events(self) -> Events:
        """What arrived since the last call (drains the socket)."""
        if self.sock is None:
            return Events(seen=True)
        seen, links = False, set()
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return Events(seen, frozenset(links))
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # overrun: events were lost, so "seen"
                    raise
                data = b""
            seen = True
            links |= new_links(data)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
