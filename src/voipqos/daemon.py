"""The service: one thread that polls conntrack on a fixed grid, feeds detection and
hysteresis, switches the profile, and serves the method table in between polls.

It owns time and the profile's lifecycle: whatever it applied is removed on SIGTERM,
SIGINT or a failed start, so the line is never left throttled by a dead daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from . import __version__, conntrack, hostinfo
from .api import Dispatcher, InvalidArgument
from .config import Config, ConfigError, load, to_dict
from .detect import Call, DetectConfig, Detection, Detector, FiveTuple, Flow, Sides
from .hysteresis import Hysteresis, HysteresisConfig, Mode
from .profile import Profile, ProfileError

log = logging.getLogger("voipqos")

ProfileFactory = Callable[[Config, str], Profile]

APPLY_RETRY = 10.0  # seconds between attempts when applying the profile failed
SIDES_REFRESH = 30.0  # seconds between re-reads of the router's addresses
METRICS_REFRESH = 5.0


class System:
    """The daemon's reads and writes of the OS, in one place so tests can script them."""

    def snapshot(self, cfg: Config, now: float) -> conntrack.Snapshot:
        if cfg.conntrack_source == "netlink":
            from .ctnetlink import read_netlink

            return read_netlink(sip_ports=cfg.sip_ports, taken_at=now)
        return conntrack.read_proc(sip_ports=cfg.sip_ports, taken_at=now)

    def resolve(self, interface: str) -> str:
        return hostinfo.resolve_device(interface)

    def sides(self, device: str) -> Sides:
        return hostinfo.sides(device)

    def accounting(self) -> bool | None:
        return conntrack.read_accounting()

    def enable_accounting(self) -> None:
        conntrack.enable_accounting()


def _warning(code: str, message: str, fix: str = "") -> dict[str, str]:
    return {"code": code, "message": message, "fix": fix}


class Daemon:
    """Poll state and the method handlers; `run()` adds signals, lock and endpoints."""

    def __init__(self, cfg: Config, config_path: str, profile_factory: ProfileFactory,
                 system: System | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config_path = config_path
        self.profile_factory = profile_factory
        self.system = system or System()
        self.clock = clock
        now = clock()
        self.hyst = Hysteresis(HysteresisConfig.from_config(cfg), now)
        self.detector: Detector | None = None
        self.detection: Detection | None = None
        self.call_started: dict[str, float] = {}
        self.applied = False
        self.apply_failed_at: float | None = None
        self.reapply_at: float | None = None  # re-apply the configured rates then
        self.flows_set: frozenset[FiveTuple] = frozenset()
        self.warnings: dict[str, dict[str, str]] = {}
        self.sides = Sides()
        self.sides_at = -SIDES_REFRESH
        self.polls = 0
        self.poll_ms = 0.0
        self.metrics_at: float | None = None
        self.process = psutil.Process()
        self.cpu_percent = 0.0
        self.send_event: Callable[[str, dict[str, Any]], None] = lambda event, data: None
        self._configure(cfg)

    # -- configuration -------------------------------------------------------------------

    def _configure(self, cfg: Config) -> None:
        """Adopt a validated config: resolve the device, make the profile backend.
        Nothing is assigned until both succeeded, so a failure keeps the running state."""
        device = self.system.resolve(cfg.interface)
        old = getattr(self, "profile", None)
        if old is not None and (device, cfg.backend) == (self.device, self.cfg.backend):
            profile = old  # same backend and device: keep its kernel handles, new rates
            profile.cfg = cfg
        else:
            profile = self.profile_factory(cfg, device)
        self.cfg, self.device, self.profile = cfg, device, profile
        dcfg = DetectConfig.from_config(cfg)
        if self.detector is None:
            self.detector = Detector(dcfg)
        self.detector.cfg = dcfg
        self.hyst.cfg = HysteresisConfig.from_config(cfg)
        self.sides_at = -SIDES_REFRESH
        self._check_accounting()

    def _check_accounting(self) -> None:
        acct = self.system.accounting()
        self.warnings.pop("acct_off", None)
        if acct is False and self.cfg.conntrack_acct:
            try:
                self.system.enable_accounting()
                log.warning("nf_conntrack_acct was 0: turned it on; flows that existed "
                            "before get no counters (a running call is seen from its next "
                            "conntrack entry)")
                return
            except OSError as exc:
                log.error("cannot turn on nf_conntrack_acct: %s", exc.strerror)
        if acct is False:
            self.warnings["acct_off"] = _warning(
                "acct_off", "connection accounting is off: no packet counters, no detection",
                "sysctl -w net.netfilter.nf_conntrack_acct=1 (or set main.conntrack_acct 1)")

    def reload(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Re-read the config; a bad one is rejected and the running one kept."""
        old = (self.profile, self.device, self.cfg.backend)
        try:
            self._configure(load(self.config_path))
        except (ConfigError, hostinfo.DeviceError, ProfileError) as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            self.warnings["config_rejected"] = _warning(
                "config_rejected", str(exc), "fix the option and reload again")
            raise InvalidArgument(str(exc)) from None
        self.warnings.pop("config_rejected", None)
        log.info("config reloaded from %s", self.config_path)
        if self.applied:
            if old[1:] != (self.device, self.cfg.backend):
                self._remove(old[0])
                self.applied = False
            else:  # apply() reconciles: the new rates are changed in place, no drain
                self.reapply_at = self.clock()
            self.flows_set = frozenset()
            self._sync_profile(self.clock())
        return {"reloaded": True}

    # -- the poll ------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        start = time.perf_counter()
        if now - self.sides_at >= SIDES_REFRESH:
            self.sides = self.system.sides(self.device)
            self.sides_at = now
        snap = self._read(now)
        if snap is not None:
            self.detection = self.detector.update(snap, self.sides)
            self._note_offload(snap)
        # what every poll costs (read + detect); switching the profile is the exception
        self.poll_ms = (time.perf_counter() - start) * 1000
        calls = self.detection.calls if self.detection and snap is not None else ()
        self._track_calls(calls, now)
        was = self.hyst.active
        self.hyst.step(now, len(calls))
        self._sync_profile(now)
        if self.hyst.active != was:
            self._announce()
        self.polls += 1
        if self.metrics_at is None:  # start the CPU window after start-up's own work
            self.process.cpu_percent(None)
            self.metrics_at = now
        elif now - self.metrics_at >= METRICS_REFRESH:
            self.cpu_percent = self.process.cpu_percent(None)
            self.metrics_at = now

    def _read(self, now: float) -> conntrack.Snapshot | None:
        """The table now, or None with a `conntrack` warning saying why not."""
        try:
            snap = self.system.snapshot(self.cfg, now)
        except OSError as exc:
            self.warnings["conntrack"] = _warning(
                "conntrack", f"cannot read the connection table: {exc.strerror}",
                "load nf_conntrack (kmod-nf-conntrack) and check /proc/net/nf_conntrack")
            return None
        if snap.parsed == 0 and snap.malformed > 0:
            self.warnings["conntrack"] = _warning(
                "conntrack", f"none of {snap.lines} conntrack lines could be parsed: "
                "unknown kernel format?", "report it with a copy of /proc/net/nf_conntrack")
        else:
            self.warnings.pop("conntrack", None)
        return snap

    def _note_offload(self, snap: conntrack.Snapshot) -> None:
        if any(e.offloaded for e in snap.entries.values()):
            self.warnings["offload"] = _warning(
                "offload", "flow offloading is on: offloaded flows have frozen counters and "
                "bypass the classifier",
                "uci set firewall.@defaults[0].flow_offloading=0; uci commit firewall; "
                "/etc/init.d/firewall restart")
        else:
            self.warnings.pop("offload", None)

    def _track_calls(self, calls: tuple[Call, ...], now: float) -> None:
        ids = {c.id for c in calls}
        for cid in list(self.call_started):
            if cid not in ids:
                del self.call_started[cid]
        for cid in ids:
            self.call_started.setdefault(cid, now)

    def _announce(self) -> None:
        state = "start" if self.hyst.active else "end"
        log.info("profile %s: %s", "on" if self.hyst.active else "off", self.hyst.reason)
        self.send_event("voipqos.call", {"state": state, "reason": self.hyst.reason,
                                         "mode": str(self.hyst.mode),
                                         "calls": [c.id for c in self._calls()]})

    def _calls(self) -> tuple[Call, ...]:
        return self.detection.calls if self.detection else ()

    def _sync_profile(self, now: float) -> None:
        """Make the profile follow the hysteresis; failures keep the line unshaped."""
        if self.hyst.active and not self.applied:
            if self.apply_failed_at is not None and now - self.apply_failed_at < APPLY_RETRY:
                return
            # a drain burst first: the modem's buffer, filled before the call, holds
            # seconds of queue that only the gap below the line rate can empty
            drain = self.cfg.drain_time > 0 and self.cfg.drain_rate < 100
            try:
                self.profile.apply(self.cfg.drain_rate / 100 if drain else 1.0)
            except ProfileError as exc:
                self.apply_failed_at = now
                log.error("profile apply failed (line left unshaped, retry in %.0f s): %s",
                          APPLY_RETRY, exc)
                self.warnings["profile_error"] = _warning(
                    "profile_error", str(exc), "run `voipqos check` for missing features")
                return
            self.applied, self.apply_failed_at = True, None
            self.reapply_at = now + self.cfg.drain_time if drain else None
            self.warnings.pop("profile_error", None)
        elif not self.hyst.active and self.applied:
            self.applied = not self._remove(self.profile)
            self.flows_set = frozenset()
            self.reapply_at = None
        if self.applied and self.reapply_at is not None and now >= self.reapply_at:
            try:
                self.profile.apply()  # the configured rates, changed in place
                self.reapply_at = None
            except ProfileError as exc:
                log.error("re-applying the configured rates failed, will retry: %s", exc)
        if self.applied:
            tuples = self.detection.tuples if self.detection else frozenset()
            if tuples != self.flows_set:
                try:
                    self.profile.set_flows(tuples)
                    self.flows_set = tuples
                except ProfileError as exc:
                    log.error("classifier flow update failed: %s", exc)

    def _remove(self, profile: Profile) -> bool:
        try:
            profile.remove()
        except ProfileError as exc:
            log.error("profile remove failed, will retry: %s", exc)
            self.warnings["profile_error"] = _warning(
                "profile_error", str(exc), "voipqos remove")
            return False
        return True

    def shutdown(self) -> None:
        """Remove what we applied (also what a crashed predecessor left)."""
        if self._remove(self.profile):
            self.applied = False

    # -- documents served over ubus / JSON-RPC ---------------------------------------------

    def _wall(self, t: float) -> float:
        return round(time.time() - (self.clock() - t), 3)

    def status(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        now = self.clock()
        prof = self.profile.status()
        warnings = [*self.warnings.values(), *prof.get("warnings", [])]
        snap = self.detector.prev
        return {
            "version": __version__,
            "enabled": self.cfg.enabled,
            "state": str(self.hyst.state) if self.cfg.enabled else "off",
            "mode": str(self.hyst.mode),
            "mode_expires": self._wall(self.hyst.expires) if self.hyst.expires else None,
            "active": self.applied,
            "since": self._wall(self.hyst.since),
            "reason": self.hyst.reason,
            "device": self.device,
            "calls": [self._call_doc(c, now) for c in self._calls()],
            "transitions": [
                {"at": self._wall(t.at), "state": str(t.state), "active": t.active,
                 "reason": t.reason} for t in reversed(self.hyst.transitions)],
            "profile": {k: v for k, v in prof.items() if k != "warnings"},
            "traffic": self._traffic(),
            "warnings": warnings,
            "metrics": {
                "cpu_percent": self.cpu_percent,
                "rss_bytes": self.process.memory_info().rss,
                "poll_ms": round(self.poll_ms, 3),
                "polls": self.polls,
                "entries": len(snap.entries) if snap else 0,
                "lines": snap.lines if snap else 0,
                "malformed": snap.malformed if snap else 0,
            },
            "config": to_dict(self.cfg),
        }

    def _traffic(self) -> dict[str, int] | None:
        """The WAN device's own counters (rx = download), for throughput graphs that
        also cover the time the profile is off."""
        io = psutil.net_io_counters(pernic=True).get(self.device)
        if io is None:
            return None
        return {"rx_bytes": io.bytes_recv, "tx_bytes": io.bytes_sent,
                "rx_packets": io.packets_recv, "tx_packets": io.packets_sent}

    def _call_doc(self, c: Call, now: float) -> dict[str, Any]:
        started = self.call_started.get(c.id, now)
        return {
            "id": c.id, "lan_host": c.lan_host, "far_host": c.far_host, "flows": len(c.flows),
            "flow_list": [{"proto": k[0], "src": k[1], "dst": k[2], "sport": k[3], "dport": k[4]}
                          for k in c.flows],
            "sip": c.sip, "lan_known": c.lan_known,
            "pps_out": round(c.out.pps, 1), "pps_in": round(c.inb.pps, 1),
            "kbps_out": round(c.out.bps * 8 / 1000, 1), "kbps_in": round(c.inb.bps * 8 / 1000, 1),
            "started": self._wall(started), "duration": round(now - started, 1),
        }

    def flows(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        det = self.detection or Detection((), (), None)
        return flows_document(det, bool((args or {}).get("all")))

    def set_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        mode = args.get("mode")
        if mode not in ("on", "off", "auto"):
            raise InvalidArgument("set_mode: mode must be on, off or auto")
        expires = args.get("expires", 0)
        if expires < 0:
            raise InvalidArgument("set_mode: expires must be 0 (never) or seconds from now")
        now = self.clock()
        was = self.hyst.active
        self.hyst.set_mode(Mode(mode), now, now + expires if expires else None)
        self._sync_profile(now)
        if was != self.hyst.active:
            self._announce()
        return {"mode": mode, "state": str(self.hyst.state), "active": self.applied}

    def check(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        from .probe import flow_offload, probe, report

        return report(probe(), flow_offload())

    def dispatcher(self) -> Dispatcher:
        return Dispatcher({"status": self.status, "flows": self.flows, "check": self.check,
                           "set_mode": self.set_mode, "reload": self.reload})


def flow_row(f: Flow) -> dict[str, Any]:
    o = f.entry.orig
    return {
        "proto": f.entry.proto, "src": o.src, "dst": o.dst, "sport": o.sport, "dport": o.dport,
        "verdict": f.verdict, "reasons": list(f.reasons), "call": f.call,
        "lan_side": f.lan_side,
        "pps_out": round(f.out.pps, 1) if f.out else None,
        "pps_in": round(f.inb.pps, 1) if f.inb else None,
        "size_out": round(f.out.mean_size) if f.out else None,
        "size_in": round(f.inb.mean_size) if f.inb else None,
        "flags": sorted(f.entry.flags),
    }


def flows_document(det: Detection, include_other: bool = True) -> dict[str, Any]:
    """The `flows` shape shared by the daemon and `voipqos analyze`."""
    rows = [flow_row(f) for f in det.flows if include_other or f.verdict != "other"]
    order = {"media": 0, "signalling": 1, "other": 2}
    rows.sort(key=lambda r: (order[r["verdict"]], r["src"], r["dst"], r["sport"]))
    return {"calls": len(det.calls), "interval": det.interval, "flows": rows}


# -- process plumbing ------------------------------------------------------------------------


class AlreadyRunning(RuntimeError):
    pass


@contextlib.contextmanager
def pid_lock(run_dir: str, wait: float = 0.0):
    """One daemon per run_dir: an flock on the pid file, released when we exit. `apply`
    and `remove` take it too, so nothing changes the device under a running daemon;
    `wait` is how long to wait for a holder that is shutting down (procd does not wait)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path = Path(run_dir, "voipqos.pid")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    other = os.pread(fd, 32, 0).decode().strip() or "?"
                    raise AlreadyRunning(
                        f"voipqos is already running (pid {other}, {path})") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


class Waiter:
    """Sleeps until the next poll unless woken by a signal (no endpoint configured)."""

    def __init__(self, wake_fd: int) -> None:
        self.wake_fd = wake_fd

    def wait(self, timeout: float) -> None:
        select.select([self.wake_fd], [], [], timeout)

    def send_event(self, event: str, data: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def make_endpoints(d: Daemon, wake_fd: int):
    """The JSON-RPC endpoint (and ubus when python-ubus is importable)."""
    try:
        import ubus  # noqa: F401  (python-ubus, on OpenWrt)

        use_ubus = True
    except ImportError:
        use_ubus = False
    if not d.cfg.rpc_listen and not use_ubus:
        return Waiter(wake_fd)
    from .endpoints import Endpoints

    return Endpoints(d.dispatcher(), d.cfg.rpc_listen, str(Path(d.cfg.run_dir, "rpc.secret")),
                     use_ubus, wake_fd)


def run(d: Daemon) -> int:
    """The loop: polls on a drift-free grid, endpoints served in between."""
    flags = {"stop": False, "reload": False}

    def on_stop(signum: int, frame: object) -> None:
        flags["stop"] = True

    def on_hup(signum: int, frame: object) -> None:
        flags["reload"] = True

    rsock, wsock = socket.socketpair()
    rsock.setblocking(False)
    wsock.setblocking(False)
    old_wake = signal.set_wakeup_fd(wsock.fileno())
    handlers = {s: signal.signal(s, on_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    endpoints = None
    try:
        with pid_lock(d.cfg.run_dir), contextlib.ExitStack() as held:
            # on any way out, before the lock is released: `voipqos remove --wait` (the
            # init script's stop) then finds nothing left, and a second daemon refused
            # the lock never removes the running one's profile
            held.callback(d.shutdown)
            d.shutdown()  # a predecessor killed with -9 may have left its profile
            endpoints = make_endpoints(d, rsock.fileno())
            d.send_event = endpoints.send_event
            log.info("voipqos %s watching conntrack every %g s, shaping %s (%s backend)",
                     __version__, d.cfg.poll_interval, d.device, d.profile.name)
            start = d.clock()
            n = 0
            while not flags["stop"]:
                now = d.clock()
                if now >= start + n * d.cfg.poll_interval:
                    d.poll(now)
                    # drift-free: the next slot on the grid, skipping any we overran
                    n = int((d.clock() - start) / d.cfg.poll_interval) + 1
                if flags["reload"]:
                    flags["reload"] = False
                    with contextlib.suppress(InvalidArgument):
                        d.reload()
                endpoints.wait(max(0.0, start + n * d.cfg.poll_interval - d.clock()))
                with contextlib.suppress(BlockingIOError):
                    while rsock.recv(512):
                        pass
            log.info("stopping: removing the profile")
    finally:
        if endpoints is not None:
            endpoints.close()
        signal.set_wakeup_fd(old_wake)
        for s, h in handlers.items():
            signal.signal(s, h)
        rsock.close()
        wsock.close()
    return 0
