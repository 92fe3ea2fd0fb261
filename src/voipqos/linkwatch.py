"""Notice the kernel changing under the profile: link and tc events from rtnetlink.

A PPPoE reconnect re-creates the WAN device, someone deletes our IFB or root qdisc, a
device is renamed: the kernel announces each on the RTMGRP_LINK / RTMGRP_TC multicast
groups. Draining that socket costs one non-blocking recv() when nothing happened, so the
daemon can look every poll (and more often while shaping) and only then read the kernel
back. Plain `socket`, no pyroute2: nothing is parsed but "something changed".
"""

from __future__ import annotations

import errno
import logging
import socket

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTMGRP_LINK, RTMGRP_TC = 0x1, 0x8


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

    def changed(self) -> bool:
        """Whether any link or tc event arrived since the last call (drains them all)."""
        if self.sock is None:
            return True
        seen = False
        while True:
            try:
                if not self.sock.recv(65536):
                    return seen
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:  # overrun: events were lost, so yes
                    raise
            seen = True

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
