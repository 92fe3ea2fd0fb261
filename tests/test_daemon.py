"""Daemon logic without a kernel: scripted snapshots, a fake clock, a recording profile."""

from __future__ import annotations

import pytest

from voipqos import config
from voipqos.api import InvalidArgument
from voipqos.conntrack import Entry, Snapshot, Tuple
from voipqos.daemon import Daemon, System
from voipqos.detect import Sides
from voipqos.profile import LogProfile, ProfileError

LAN, FAR, WAN = "192.168.1.20", "203.0.113.9", "198.51.100.1"


class Recorder(LogProfile):
    """LogProfile that records calls and can be told to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []
        self.fail_apply = False

    def apply(self, rate_scale: float = 1.0) -> None:
        self.log.append("apply" if rate_scale == 1 else f"apply x{rate_scale:g}")
        if self.fail_apply:
            raise ProfileError("htb: kernel said no")
        super().apply()

    def remove(self) -> None:
        self.log.append("remove")
        super().remove()


class Script(System):
    """Feeds a call's conntrack entry whose counters grow while `talking`; touches no OS."""

    def __init__(self) -> None:
        self.talking = False
        self.packets = 0
        self.broken = False

    def resolve(self, interface: str) -> str:
        return interface

    def sides(self, device: str) -> Sides:
        return Sides(frozenset({WAN}))

    def accounting(self) -> bool:
        return True

    def snapshot(self, cfg: config.Config, now: float) -> Snapshot:
        if self.broken:
            raise FileNotFoundError(2, "No such file or directory")
        if self.talking:
            self.packets += 50
        e = Entry(4, "udp", Tuple(LAN, FAR, 40000, 20000), Tuple(FAR, WAN, 20000, 40000),
                  self.packets, self.packets * 200, self.packets, self.packets * 200, 120)
        return Snapshot({e.key: e}, taken_at=now)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def rig(tmp_path):
    path = tmp_path / "voipqos"
    path.write_text("config voipqos 'main'\n\toption interface 'wan0'\n\toption on_polls '2'\n"
                    "\toption off_hold '3'\n\toption min_on '0'\n\toption drain_time '0'\n")
    clock, script, prof = Clock(), Script(), Recorder()
    d = Daemon(config.load(path), str(path), lambda c, dev: prof, script, clock)
    events: list[dict] = []
    d.send_event = lambda name, data: events.append({"event": name, **data})

    def tick(n: int = 1) -> None:
        for _ in range(n):
            clock.t += 1
            d.poll(clock.t)

    return d, script, prof, tick, events, path


def test_call_switches_profile_on_and_off(rig):
    d, script, prof, tick, events, _ = rig
    tick()
    script.talking = True
    tick()
    assert d.status()["calls"] and not d.applied  # one poll with a call, on_polls=2
    tick()
    assert d.applied and prof.log == ["apply"]
    assert d.status()["calls"][0]["flow_list"] == [
        {"proto": "udp", "src": LAN, "dst": FAR, "sport": 40000, "dport": 20000}]
    assert prof.flows == {(17, LAN, FAR, 40000, 20000), (17, FAR, WAN, 20000, 40000)}
    assert events[-1]["state"] == "start"
    script.talking = False
    tick(2)
    assert d.applied  # off_hold is 3 s
    tick()
    assert not d.applied and prof.log == ["apply", "remove"]
    assert events[-1]["state"] == "end"
    doc = d.status()
    assert doc["state"] == "watching" and doc["transitions"][0]["state"] == "watching"
    assert doc["metrics"]["polls"] == 6


def test_failed_apply_leaves_line_unshaped_and_retries(rig):
    d, script, prof, tick, _, _ = rig
    prof.fail_apply = True
    script.talking = True
    tick(4)
    assert not d.applied
    assert any(w["code"] == "profile_error" for w in d.status()["warnings"])
    prof.fail_apply = False
    tick(3)
    assert not d.applied  # retries only every APPLY_RETRY seconds
    tick(8)
    assert d.applied
    assert not any(w["code"] == "profile_error" for w in d.status()["warnings"])


def test_set_mode_and_bad_arguments(rig):
    d, _, _, tick, events, _ = rig
    assert d.set_mode({"mode": "on"})["active"] is True
    assert events[-1]["state"] == "start"
    tick(5)
    assert d.applied
    d.set_mode({"mode": "off"})
    assert not d.applied
    with pytest.raises(InvalidArgument, match="mode must be on, off or auto"):
        d.set_mode({"mode": "maybe"})
    with pytest.raises(InvalidArgument):
        d.dispatcher().call("set_mode", {"mode": "on", "expires": "soon"})
    d.set_mode({"mode": "on", "expires": 2})
    tick(2)
    assert d.status()["mode"] == "auto"


def test_reload_rejects_bad_config_and_keeps_running_one(rig):
    d, _, _, _, _, path = rig
    before = d.cfg
    path.write_text("config voipqos 'main'\n\toption upload 'lots'\n")
    with pytest.raises(InvalidArgument, match=r"main\.upload: 'lots'"):
        d.reload()
    assert d.cfg is before
    assert any(w["code"] == "config_rejected" for w in d.status()["warnings"])
    path.write_text("config voipqos 'main'\n\toption interface 'wan0'\n\toption upload '20000'\n")
    assert d.reload() == {"reloaded": True}
    assert d.cfg.upload == 20000
    assert not any(w["code"] == "config_rejected" for w in d.status()["warnings"])


def test_unreadable_conntrack_is_a_warning_not_a_crash(rig):
    d, script, _, tick, _, _ = rig
    script.broken = True
    tick()
    assert any(w["code"] == "conntrack" for w in d.status()["warnings"])


def test_flows_document_shape(rig):
    d, script, _, tick, _, _ = rig
    script.talking = True
    tick(2)
    doc = d.flows({"all": True})
    assert doc["calls"] == 1
    [row] = doc["flows"]
    assert {"proto", "src", "dst", "sport", "dport", "verdict", "reasons"} <= set(row)
    assert row["verdict"] == "media" and row["lan_side"] == "orig"


def test_drain_burst_then_configured_rates(rig):
    d, script, prof, tick, _, path = rig
    path.write_text(path.read_text().replace("drain_time '0'", "drain_time '2'"))
    d.reload()
    script.talking = True
    tick(3)
    assert prof.log == ["apply x0.5"]
    tick()
    assert prof.log[-1] == "apply x0.5"  # 1 s into the 2 s drain
    tick()
    assert prof.log[-1] == "apply"  # configured rates, in place
    tick(3)
    assert prof.log.count("apply") == 1


def test_reload_during_a_call_changes_rates_in_place_without_drain(rig):
    d, script, prof, tick, _, path = rig
    script.talking = True
    tick(3)
    assert d.applied and prof.log == ["apply"]
    path.write_text(path.read_text().replace("drain_time '0'", "drain_time '2'")
                    + "\toption upload '20000'\n")
    d.reload()
    assert d.applied and prof.log == ["apply", "apply"] and d.cfg.upload == 20000
