"""Daemon logic without a kernel: scripted snapshots, a fake clock, a recording profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from test_rpc import Clock
from voipqos import config
from voipqos.alerts import Alert, Ledger
from voipqos.api import InvalidArgument
from voipqos.conntrack import Entry, Snapshot, Tuple
from voipqos.daemon import Daemon, ReloadRejected, System
from voipqos.detect import Sides
from voipqos.linkwatch import Events
from voipqos.profile import LogProfile, ProfileError

LAN, FAR, WAN = "192.168.1.20", "203.0.113.9", "198.51.100.1"


class Recorder(LogProfile):
    """LogProfile that records calls and can be told to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []
        self.fail_apply = False
        self.fail_flows = False
        self.lost: str | None = None

    def apply(self, rate_scale: float = 1.0) -> None:
        self.log.append("apply" if rate_scale == 1 else f"apply x{rate_scale:g}")
        if self.fail_apply:
            raise ProfileError("htb: kernel said no")
        super().apply()

    def remove(self) -> None:
        self.log.append("remove")
        super().remove()

    def set_flows(self, flows) -> None:
        if self.fail_flows:
            raise ProfileError("voipqos_flows update: table full")
        super().set_flows(flows)

    def check(self) -> str | None:
        return self.lost


class Script(System):
    """Feeds a call's conntrack entry whose counters grow while `talking`; touches no OS."""

    def __init__(self) -> None:
        super().__init__()
        self.talking = False
        self.packets = 0
        self.broken = False
        self.acct: bool | None = True
        self.changed: Events = Events()

    def kernel_events(self) -> Events:
        changed, self.changed = self.changed, Events()
        return changed

    def traffic(self, device: str) -> None:
        return None

    def resolve(self, interface: str) -> str:
        return interface

    def sides(self, device: str) -> Sides:
        return Sides(frozenset({WAN}))

    def accounting(self) -> bool | None:
        return self.acct

    def enable_accounting(self) -> None:
        raise PermissionError(13, "Permission denied")

    def snapshot(self, cfg: config.Config, now: float, *_hints: object) -> Snapshot:
        if self.broken:
            raise FileNotFoundError(2, "No such file or directory")
        if self.talking:
            self.packets += 50
        e = Entry(4, "udp", Tuple(LAN, FAR, 40000, 20000), Tuple(FAR, WAN, 20000, 40000),
                  self.packets, self.packets * 200, self.packets, self.packets * 200, 120)
        return Snapshot({e.key: e}, taken_at=now)


@dataclass
class Rig:
    d: Daemon
    script: Script
    prof: Recorder
    clock: Clock
    events: list[dict]
    path: Path

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            self.clock.now += 1
            self.d.poll(self.clock.now)


@pytest.fixture
def rig(tmp_path, caplog) -> Rig:
    caplog.set_level("INFO")
    path = tmp_path / "voipqos"
    path.write_text("config voipqos 'main'\n\toption interface 'wan0'\n\toption on_polls '2'\n"
                    "\toption off_hold '3'\n\toption min_on '0'\n\toption drain_time '0'\n")
    clock, script, prof = Clock(), Script(), Recorder()
    d = Daemon(config.load(path), str(path), lambda c, dev: prof, script, clock)
    events: list[dict] = []
    d.send_event = lambda name, data: events.append({"event": name, **data})
    return Rig(d, script, prof, clock, events, path)


def active(d: Daemon) -> bool:
    return d.status()["active"]


def codes(d: Daemon) -> set[str]:
    return {w["code"] for w in d.status()["warnings"]}


def test_call_switches_profile_on_and_off(rig):
    d, script, prof = rig.d, rig.script, rig.prof
    rig.tick()
    script.talking = True
    rig.tick()
    assert d.status()["calls"] and not active(d)  # one poll with a call, on_polls=2
    rig.tick()
    assert active(d) and prof.log == ["apply"]
    assert d.status()["calls"][0]["flow_list"] == [
        {"proto": "udp", "src": LAN, "dst": FAR, "sport": 40000, "dport": 20000}]
    assert prof.flows == {(17, LAN, FAR, 40000, 20000), (17, FAR, WAN, 20000, 40000)}
    assert rig.events[-1]["state"] == "start"
    script.talking = False
    rig.tick(2)
    assert active(d)  # off_hold is 3 s
    rig.tick()
    assert not active(d) and prof.log == ["apply", "remove"]
    assert rig.events[-1]["state"] == "end"
    doc = d.status()
    assert doc["state"] == "watching" and doc["transitions"][0]["state"] == "watching"
    assert doc["metrics"]["polls"] == 6


def test_failed_apply_leaves_line_unshaped_and_retries(rig, caplog):
    d, prof = rig.d, rig.prof
    prof.fail_apply = True
    rig.script.talking = True
    rig.tick(4)
    assert not active(d) and "profile_error" in codes(d)
    prof.fail_apply = False
    rig.tick(3)
    assert not active(d)  # retries only every APPLY_RETRY seconds
    rig.tick(8)
    assert active(d) and "profile_error" not in codes(d)
    lines = [r.getMessage() for r in caplog.records if "profile_error" in r.getMessage()]
    assert len(lines) == 2 and lines[1].endswith("cleared")  # not once per retry


def test_a_kernel_change_retries_a_failed_apply_at_once(rig):
    rig.prof.fail_apply = True
    rig.script.talking = True
    rig.tick(3)
    rig.prof.fail_apply = False
    rig.script.changed = Events(True, frozenset({"other0"}))
    rig.tick()
    assert not active(rig.d)  # another device: no retry before APPLY_RETRY
    rig.script.changed = Events(True, frozenset({"wan0"}))  # the WAN device is back
    rig.tick()
    assert active(rig.d)


def test_a_lost_profile_is_restored_and_logged_once(rig, caplog):
    d, prof = rig.d, rig.prof
    rig.script.talking = True
    rig.tick(3)
    prof.lost = "device wan0 was re-created"
    prof.fail_apply = True
    rig.script.changed = Events(True)
    rig.d.tend(rig.clock.now)
    doc = d.status()
    assert not doc["active"] and not doc["profile"]["applied"]  # not what it remembers
    prof.fail_apply = False
    rig.script.changed = Events(True, frozenset({"wan0"}))
    rig.d.tend(rig.clock.now)
    assert prof.log[-3:] == ["apply", "apply", "apply"] and active(d)
    prof.lost = None
    rig.script.changed = Events(True)
    rig.tick()
    assert prof.log.count("apply") == 3  # no re-apply once the kernel holds it
    assert sum("profile lost" in r.getMessage() for r in caplog.records) == 1


def test_set_mode_and_bad_arguments(rig):
    d = rig.d
    assert d.set_mode({"mode": "on"})["active"] is True
    assert rig.events[-1]["state"] == "start"
    rig.tick(5)
    assert active(d)
    d.set_mode({"mode": "off"})
    assert not active(d)
    with pytest.raises(InvalidArgument, match="mode must be on, off or auto"):
        d.set_mode({"mode": "maybe"})
    with pytest.raises(InvalidArgument):
        d.dispatcher().call("set_mode", {"mode": "on", "expires": "soon"})
    d.set_mode({"mode": "on", "expires": 2})
    rig.tick(2)
    assert d.status()["mode"] == "auto"


def test_reload_rejects_bad_config_and_keeps_running_one(rig, caplog):
    d, path = rig.d, rig.path
    before = d.cfg
    path.write_text("config voipqos 'main'\n\toption upload 'lots'\n")
    with pytest.raises(ReloadRejected, match=r"main\.upload: 'lots'"):
        d.reload()
    with pytest.raises(InvalidArgument, match=r"main\.upload: 'lots'"):
        d.dispatcher().call("reload", {})  # the RPC layer's error, from its own adapter
    assert d.cfg is before
    assert "config_rejected" in codes(d)
    rig.tick()
    said = [r.getMessage() for r in caplog.records if "upload" in r.getMessage()]
    assert len(said) == 2 and all("reload rejected" in m for m in said)  # one per reload
    path.write_text("config voipqos 'main'\n\toption interface 'wan0'\n\toption upload '20000'\n")
    assert d.reload() == {"reloaded": True}
    assert d.cfg.upload == 20000
    assert "config_rejected" not in codes(d)


def test_reload_with_enabled_0_removes_the_profile(rig):
    d, prof = rig.d, rig.prof
    rig.script.talking = True
    rig.tick(3)
    assert active(d)
    rig.path.write_text(rig.path.read_text() + "\toption enabled '0'\n")
    d.reload()
    assert prof.log[-1] == "remove" and not active(d)
    assert d.status()["state"] == "off"
    rig.tick(3)
    assert prof.log[-1] == "remove" and not active(d)


def test_unreadable_conntrack_is_a_warning_not_a_crash(rig):
    rig.script.broken = True
    rig.tick()
    assert "conntrack" in codes(rig.d)


def test_accounting_switched_off_while_running_is_noticed_and_logged_once(rig, caplog):
    rig.tick()
    assert "acct_off" not in codes(rig.d)
    rig.script.acct = False
    rig.tick(3)
    assert "acct_off" in codes(rig.d)
    rig.script.acct = True
    rig.tick()
    assert "acct_off" not in codes(rig.d)
    said = [r.getMessage() for r in caplog.records if "acct_off" in r.getMessage()]
    assert len(said) == 2 and said[1].endswith("cleared")


def test_failed_flow_update_is_a_state_not_an_error_every_poll(rig, caplog):
    d, prof = rig.d, rig.prof
    prof.fail_flows = True
    rig.script.talking = True
    rig.tick(6)
    assert active(d) and "flow_table" in codes(d) and prof.flows == frozenset()
    assert sum("flow_table" in r.getMessage() for r in caplog.records) == 1
    prof.fail_flows = False
    rig.tick(10)
    assert "flow_table" not in codes(d) and len(prof.flows) == 2


def test_flows_document_shape(rig):
    rig.script.talking = True
    rig.tick(2)
    doc = rig.d.flows({"all": True})
    assert doc["calls"] == 1
    [row] = doc["flows"]
    assert {"proto", "src", "dst", "sport", "dport", "verdict", "reasons"} <= set(row)
    assert row["verdict"] == "media" and row["lan_side"] == "orig"


def test_drain_burst_then_configured_rates(rig):
    prof, path = rig.prof, rig.path
    path.write_text(path.read_text().replace("drain_time '0'", "drain_time '2'"))
    rig.d.reload()
    rig.script.talking = True
    rig.tick(3)
    assert prof.log == ["apply x0.5"]
    rig.tick()
    assert prof.log[-1] == "apply x0.5"  # 1 s into the 2 s drain
    rig.tick()
    assert prof.log[-1] == "apply"  # configured rates, in place
    rig.tick(3)
    assert prof.log.count("apply") == 1


def test_reload_during_a_call_changes_rates_in_place_without_drain(rig):
    d, prof, path = rig.d, rig.prof, rig.path
    rig.script.talking = True
    rig.tick(3)
    assert active(d) and prof.log == ["apply"]
    path.write_text(path.read_text().replace("drain_time '0'", "drain_time '2'")
                    + "\toption upload '20000'\n")
    d.reload()
    assert active(d) and prof.log == ["apply", "apply"] and d.cfg.upload == 20000


def test_ledger_logs_appear_change_and_clear_once(caplog):
    caplog.set_level("INFO")
    ledger = Ledger()
    a, b = Alert("x", "one"), Alert("x", "two")
    for alerts in ([a], [a], [b], [b], [], []):
        ledger.update(alerts)
    said = [r.getMessage() for r in caplog.records]
    assert said == ["warning [x] one (fix: -)", "warning [x] two (fix: -)",
                    "warning [x] cleared"]
