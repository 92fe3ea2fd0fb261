"""The daemon's reads of the OS (connection table, devices, addresses, counters, kernel
events) behind one object, so tests and `voipqos analyze` can script them and the
daemon's logic never touches the OS itself."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import Any

from . import conntrack, hostinfo
from .config import Config
from .detect import Sides
from .headerwatch import Headers
from .linkwatch import Events


class System:
    """The daemon's reads and writes of the OS, in one place so tests can script them."""

    def __init__(self) -> None:
        self._watch: Any = None
        self._process: Any = None
        self.tracker: Any = None  # ctnetlink.Tracker: its watched flows carry over polls

    def snapshot(self, cfg: Config, now: float, headers: Headers | None = None,
                 wan_addrs: Iterable[str] = ()) -> conntrack.Snapshot:
        """netlink: a cost that grows with the flows that can be calls (ctnetlink.Tracker),
        which looks up the flows the observer saw RTP in (`headers`) at once; /proc (which
        reads everything anyway) when asked for, or when the kernel has no ctnetlink."""
        if cfg.conntrack_source == "netlink":
            from .ctnetlink import Tracker, reply_hints

            try:
                if self.tracker is None or self.tracker.ports != frozenset(cfg.sip_ports):
                    if self.tracker is not None:
                        self.tracker.close()
                    self.tracker = None
                    self.tracker = Tracker(cfg.sip_ports)
                return self.tracker.poll(now, reply_hints(headers, wan_addrs))
            except OSError as exc:
                if self.tracker is not None or exc.errno != errno.EPROTONOSUPPORT:
                    raise
            snap = conntrack.read_proc(sip_ports=cfg.sip_ports, taken_at=now)
            snap.note = ("ctnetlink is missing (kmod-nf-conntrack-netlink): reading "
                         "/proc/net/nf_conntrack, which costs more on a big table")
            return snap
        return conntrack.read_proc(sip_ports=cfg.sip_ports, taken_at=now)

    def resolve(self, interface: str) -> str:
        return hostinfo.resolve_device(interface)

    def sides(self, device: str) -> Sides:
        return hostinfo.sides(device)

    def accounting(self) -> bool | None:
        return conntrack.read_accounting()

    def enable_accounting(self) -> None:
        conntrack.enable_accounting()

    def kernel_events(self) -> Events:
        """Link and tc changes since the last call (rtnetlink events)."""
        if self._watch is None:
            from .linkwatch import LinkWatch

            self._watch = LinkWatch()
        return self._watch.events()

    def traffic(self, device: str) -> dict[str, int] | None:
        """The device's own counters (rx = download), also while the profile is off."""
        import psutil

        io = psutil.net_io_counters(pernic=True).get(device)
        if io is None:
            return None
        return {"rx_bytes": io.bytes_recv, "tx_bytes": io.bytes_sent,
                "rx_packets": io.packets_recv, "tx_packets": io.packets_sent}

    def _proc(self) -> Any:
        if self._process is None:
            import psutil

            self._process = psutil.Process()
        return self._process

    def cpu_percent(self) -> float:
        """CPU use of this process since the previous call."""
        return float(self._proc().cpu_percent(None))

    def rss(self) -> int:
        return int(self._proc().memory_info().rss)
