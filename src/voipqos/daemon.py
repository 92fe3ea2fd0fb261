"""The service: wires conntrack polling, detection, hysteresis and switching to the
profile, serves the method table in between polls, and owns time.

Each part keeps its own rules and renders its own status (Hysteresis: when shaping is
wanted; switching.Switch: which profile actions to run and what the kernel holds;
the profile: its kernel objects); this module only runs them in order and executes the
switching actions. Whatever it applied is removed on SIGTERM, SIGINT or a failed start,
so the line is never left throttled by a dead daemon. The OS it reads is `system.System`;
the process around it (pid lock, signals, the loop) is `service.run`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import __version__, conntrack, hostinfo
from . import alerts as A
from .alerts import Alert, Ledger
from .api import Dispatcher, InvalidArgument
from .callquality import CallQualities, log_line
from .config import Config, ConfigError, load, to_dict
from .detect import Call, DetectConfig, Detection, Detector, Sides
from .documents import call_doc, flows_document
from .headerwatch import Headers, HeaderWatch, ObserverFactory
from .hysteresis import Hysteresis, HysteresisConfig, Mode
from .profile import Profile, ProfileError
from .switching import Action, Kind, Switch, SwitchConfig, call_tuples
from .system import System

log = logging.getLogger("voipqos")

ProfileFactory = Callable[[Config, str], Profile]

APPLY_RETRY = 10.0  # seconds between attempts when a profile action failed
SIDES_REFRESH = 30.0  # seconds between re-reads of the router's addresses
METRICS_REFRESH = 5.0
CHECK_INTERVAL = 0.5  # at most this often read the kernel back after events (busy routers)


class ReloadRejected(ValueError):
    """The new config was refused (one line naming the cause); the running one is kept."""


class Daemon:
    """Poll state and the method handlers; `run()` adds signals, lock and endpoints."""

    def __init__(self, cfg: Config, config_path: str, profile_factory: ProfileFactory,
                 system: System | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 observer_factory: ObserverFactory | None = None) -> None:
        """`observer_factory` makes the header-evidence observer (observer.Observer);
        None: this run has none (tests, `analyze`), the detector gets headers=None."""
        self.config_path = config_path
        self.profile_factory = profile_factory
        self.system = system or System()
        self.clock = clock
        now = clock()
        self.hyst = Hysteresis(HysteresisConfig.from_config(cfg), now)
        self.switch = Switch(SwitchConfig.from_config(cfg, APPLY_RETRY))
        self.detector: Detector | None = None
        self.detection: Detection | None = None
        self.call_started: dict[str, float] = {}
        self.qualities = CallQualities()  # per-call quality, finished calls' history
        self.alerts: dict[str, Alert] = {}  # the daemon's own; the profile has its own
        self.profile_alerts: list[Alert] = []
        self.ledger = Ledger()
        self.sides = Sides()
        self.sides_at = -SIDES_REFRESH
        self.polls = 0
        self.poll_ms = 0.0
        self.metrics_at: float | None = None
        self.cpu_percent = 0.0
        self.send_event: Callable[[str, dict[str, Any]], None] = lambda event, data: None
        self.tuples: frozenset = frozenset()  # what the calls put in the classifier
        self.unchecked = False  # kernel events not yet followed by a check
        self.checked_at = float("-inf")
        self.headers = HeaderWatch(observer_factory)
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
        self.headers.configure(cfg.enabled and cfg.header_evidence, device)  # 0: idle
        self._check_accounting()

    def _check_accounting(self) -> None:
        """Every poll: accounting switched off while running makes calls undetectable."""
        acct = self.system.accounting()
        if acct is False and self.cfg.conntrack_acct and "acct_off" not in self.alerts:
            try:
                self.system.enable_accounting()
                log.warning("nf_conntrack_acct was 0: turned it on; flows that existed "
                            "before get no counters (a running call is seen from its next "
                            "conntrack entry)")
                acct = True
            except OSError as exc:
                log.error("cannot turn on nf_conntrack_acct: %s", exc.strerror)
        if acct is False:
            self.alerts["acct_off"] = A.acct_off()
        else:
            self.alerts.pop("acct_off", None)

    def reload(self) -> dict[str, Any]:
        """Re-read the config; a bad one is rejected (ReloadRejected) and the running one
        kept. `enabled 0` switches the profile off like the end of a call."""
        old, where = self.profile, (self.device, self.cfg.backend)
        try:
            self._configure(load(self.config_path))
        except (ConfigError, hostinfo.DeviceError, ProfileError) as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            self.alerts["config_rejected"] = Alert(
                "config_rejected", str(exc), "fix the option and reload again")
            self.ledger.logged(self.alerts["config_rejected"])
            raise ReloadRejected(str(exc)) from exc
        self.alerts.pop("config_rejected", None)
        log.info("config reloaded from %s", self.config_path)
        same = (self.device, self.cfg.backend) == where
        if not same and self.switch.active:
            self._execute(Action(Kind.REMOVE), old)
        self.switch.reconfigured(SwitchConfig.from_config(self.cfg, APPLY_RETRY), same)
        self._switch(self.clock())
        self._publish()
        return {"reloaded": True}

    # -- the poll ------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        start = time.perf_counter()
        if now - self.sides_at >= SIDES_REFRESH:
            self.sides = self.system.sides(self.device)
            self.sides_at = now
        headers = self.headers.read()  # first: its RTP flows hint the conntrack reader
        snap = self._read(now, headers)
        self._note_headers()
        if snap is not None:
            self.detection = self.detector.update(snap, self.sides, headers=headers)
            self.tuples = call_tuples(self.detection)
            self._note_offload(snap)
        self._check_accounting()
        # what every poll costs (read + detect); switching the profile is the exception
        self.poll_ms = (time.perf_counter() - start) * 1000
        calls = self.detection.calls if self.detection and snap is not None else ()
        if snap is not None:  # a failed read ends no call
            self._measure(calls, now)
        self._track_calls(calls, now)
        was = self.hyst.active
        # RTP headers confirm a call at once; a stale detection (failed read) is never sure
        self.hyst.step(now, len(calls), snap is not None and self.detection is not None
                       and self.detection.sure)
        self.tend(now)
        if self.hyst.active != was:
            self._announce()
        self.polls += 1
        if self.metrics_at is None:  # start the CPU window after start-up's own work
            self.system.cpu_percent()
            self.metrics_at = now
        elif now - self.metrics_at >= METRICS_REFRESH:
            self.cpu_percent = self.system.cpu_percent()
            self.metrics_at = now
        self._publish()

    def tend(self, now: float) -> None:
        """Between polls too: restore a profile the kernel lost, retry what is due."""
        events = self.system.kernel_events()
        self.unchecked |= events.seen
        if events.seen:
            self.headers.kernel_changed(self.device in events.links)
        if self.device in events.links:
            self.switch.kick()  # e.g. the device a failed apply needed is back
        if self.switch.active and self.unchecked and now - self.checked_at >= CHECK_INTERVAL:
            self.unchecked, self.checked_at = False, now
            try:
                lost = self.profile.check()
            except ProfileError as exc:
                lost = str(exc)
            if lost:
                log.warning("profile lost on %s (%s): restoring it", self.device, lost)
                self.switch.lost()
        self._switch(now)

    def _read(self, now: float, headers: Headers | None) -> conntrack.Snapshot | None:
        """The table now, or None with a `conntrack` warning saying why not."""
        try:
            snap = self.system.snapshot(self.cfg, now, headers, self.sides.wan_addrs)
        except OSError as exc:
            self.alerts["conntrack"] = Alert(
                "conntrack", f"cannot read the connection table: {exc.strerror}",
                "load nf_conntrack (kmod-nf-conntrack) and check /proc/net/nf_conntrack")
            return None
        if snap.parsed == 0 and snap.malformed > 0:
            self.alerts["conntrack"] = Alert(
                "conntrack", f"none of {snap.lines} conntrack lines could be parsed: "
                "unknown kernel format?", "report it with a copy of /proc/net/nf_conntrack")
        else:
            self.alerts.pop("conntrack", None)
        if snap.note:
            self.alerts["conntrack_reader"] = Alert(
                "conntrack_reader", snap.note,
                "install kmod-nf-conntrack-netlink; a smaller table (nf_conntrack_max, "
                "shorter UDP timeouts) shortens the scan")
        else:
            self.alerts.pop("conntrack_reader", None)
        return snap

    def _note_headers(self) -> None:
        alert = self.headers.alert()
        if alert is None:
            self.alerts.pop("observer", None)
        else:
            self.alerts["observer"] = alert

    def _note_offload(self, snap: conntrack.Snapshot) -> None:
        if any(e.offloaded for e in snap.entries.values()):
            self.alerts["offload"] = A.offload("conntrack shows offloaded flows")
        else:
            self.alerts.pop("offload", None)

    def _track_calls(self, calls: tuple[Call, ...], now: float) -> None:
        ids = {c.id for c in calls}
        for cid in list(self.call_started):
            if cid not in ids:
                del self.call_started[cid]
        for cid in ids:
            self.call_started.setdefault(cid, now)

    def _measure(self, calls: tuple[Call, ...], now: float) -> None:
        """Per-call quality from one read of the classifier's table, taken before the
        switching below drops ended calls' tuples (that resets their counters); each
        ended call is logged and announced with its summary."""
        read = self.switch.active and self.qualities.wants_read(calls, now)
        for s in self.qualities.update(calls, now, self.profile.quality() if read else None,
                                       self._wall):
            log.info("%s", log_line(s))
            self.send_event("voipqos.call", {"state": "call_end", "call": s})

    def _announce(self) -> None:
        state = "start" if self.hyst.active else "end"
        log.info("profile %s: %s", "on" if self.hyst.active else "off", self.hyst.reason)
        self.send_event("voipqos.call", {"state": state, "reason": self.hyst.reason,
                                         "mode": str(self.hyst.mode),
                                         "calls": [c.id for c in self._calls()]})

    def _calls(self) -> tuple[Call, ...]:
        return self.detection.calls if self.detection else ()

    # -- switching: run what switching.Switch decides --------------------------------------

    def _switch(self, now: float) -> None:
        wanted = self.cfg.enabled and self.hyst.active
        actions = self.switch.step(now, wanted, self.tuples)
        for action in actions:
            ok = self._execute(action, self.profile)
            self.switch.done(action, ok, now)
            if not ok:
                break
        if actions:
            self.profile_alerts = [Alert(**w) for w in self.profile.status()["warnings"]]

    def _execute(self, action: Action, profile: Profile) -> bool:
        """Run one action; a failure becomes a status warning (logged once by the ledger)
        and the line stays as the profile's rollback left it."""
        code = "flow_table" if action.kind is Kind.FLOWS else "profile_error"
        if action.kind is Kind.APPLY and self.cfg.backend == "sqm":
            self.headers.step_aside()
        try:
            if action.kind in (Kind.APPLY, Kind.RATES):
                profile.apply(action.scale)
            elif action.kind is Kind.REMOVE:
                profile.remove()
            else:
                profile.set_flows(action.flows)
        except ProfileError as exc:
            if action.kind is Kind.FLOWS:
                self.alerts[code] = Alert(
                    code, f"{len(action.flows)} call 5-tuples not classified: {exc}",
                    "none needed: retried when the calls change; other traffic is unaffected")
            else:
                fix = "voipqos remove" if action.kind is Kind.REMOVE else \
                    "run `voipqos check` for missing features"
                self.alerts[code] = Alert(code, f"profile {action.kind} failed (retried "
                                          f"in {APPLY_RETRY:.0f} s): {exc}", fix)
            return False
        self.alerts.pop(code, None)
        return True

    def shutdown(self) -> None:
        """Remove what we applied (also what a crashed predecessor left)."""
        self.switch.done(Action(Kind.REMOVE), self._execute(Action(Kind.REMOVE), self.profile),
                         self.clock())
        self.headers.stop()  # at start-up nothing yet: the first poll attaches it
        self._publish()

    def _publish(self) -> None:
        self.ledger.update([*self.alerts.values(), *self.profile_alerts])

    # -- documents served over ubus / JSON-RPC ---------------------------------------------

    def _wall(self, t: float) -> float:
        return round(time.time() - (self.clock() - t), 3)

    def status(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        now = self.clock()
        prof = self.profile.status()
        snap = self.detector.prev
        hyst = self.hyst.status(self._wall)
        return {
            "version": __version__,
            "enabled": self.cfg.enabled,
            **hyst,
            "state": hyst["state"] if self.cfg.enabled else "off",
            "active": self.switch.active,
            "device": self.device,
            "calls": [{**call_doc(c, self.call_started.get(c.id, now), now, self._wall),
                       "quality": self.qualities.quality(c.id)} for c in self._calls()],
            "recent_calls": list(self.qualities.history),
            # one record of "on": the switching's (the profile's own may predate a loss)
            "profile": {**{k: v for k, v in prof.items() if k != "warnings"},
                        "applied": self.switch.active},
            "traffic": self.system.traffic(self.device),
            "observer": self.headers.status(),
            "warnings": [*(a.as_dict() for a in self.alerts.values()), *prof["warnings"]],
            "metrics": {
                "cpu_percent": self.cpu_percent,
                "rss_bytes": self.system.rss(),
                "poll_ms": round(self.poll_ms, 3),
                "polls": self.polls,
                "entries": len(snap.entries) if snap else 0,
                "lines": snap.lines if snap else 0,
                "malformed": snap.malformed if snap else 0,
            },
            "config": to_dict(self.cfg),
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
        self._switch(now)
        if was != self.hyst.active:
            self._announce()
        self._publish()
        return {"mode": mode, "state": str(self.hyst.state), "active": self.switch.active}

    def check(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        from .probe import flow_offload, probe, report

        return report(probe(), flow_offload())

    def _reload_call(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.reload()
        except ReloadRejected as exc:
            raise InvalidArgument(str(exc)) from exc

    def dispatcher(self) -> Dispatcher:
        return Dispatcher({"status": self.status, "flows": self.flows, "check": self.check,
                           "set_mode": self.set_mode, "reload": self._reload_call})
