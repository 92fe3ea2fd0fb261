"""The daemon's side of header evidence without a kernel (headerwatch.HeaderWatch): what
the detector gets, when the observer is attached, re-checked and given up. The observer
stand-in replays what the real one gave in the kernel tests (test_observer_netns: the
NAT call's read; test_observer_daemon: a broken object's error); the kernel tests run
the real daemon with the real observer.
"""

from __future__ import annotations

from test_daemon import Recorder, Script
from test_rpc import Clock
from voipqos import config
from voipqos.bpf import BpfError
from voipqos.daemon import Daemon
from voipqos.header_evidence import HeaderCounts
from voipqos.linkwatch import Events

# Observer.read() after test_observer_netns's call through NAT (port chosen by NAT)
READ = {("10.99.2.2", 5004, 40000): HeaderCounts(rtp_out=145, rtp_in=96, stun_out=0,
                                                 stun_in=0)}
BROKEN = "BPF object: not a 64-bit ELF object"  # the real message for a broken object


class Replay:
    """Observer stand-in: records what the daemon asks, answers READ or fails."""

    def __init__(self, log: list[str], fail_attach: str = "", fail_read: str = "") -> None:
        self.log, self.fail_attach, self.fail_read = log, fail_attach, fail_read

    def attach(self, dev: str, hook: str) -> None:
        self.log.append(f"attach {dev} {hook}")
        if self.fail_attach:
            raise BpfError(self.fail_attach)

    def ensure(self, dev: str) -> None:
        self.log.append(f"ensure {dev}")

    def read(self) -> dict:
        if self.fail_read:
            raise BpfError(self.fail_read)
        return READ

    def remove_from(self, dev: str) -> None:
        self.log.append(f"remove_from {dev}")

    def close(self) -> None:
        self.log.append("close")


def daemon(tmp_path, made: list[Replay], log: list[str], fail: dict | None = None,
           **opts: str):
    """A daemon whose observers are Replays (`fail`: their failures, may change later)."""
    fail = {} if fail is None else fail
    path = tmp_path / "voipqos"
    body = "".join(f"\toption {k} '{v}'\n" for k, v in {"interface": "wan0", **opts}.items())
    path.write_text(f"config voipqos 'main'\n{body}")
    script = Script()

    def factory() -> Replay:
        made.append(Replay(log, **fail))
        return made[-1]

    d = Daemon(config.load(path), str(path), lambda c, dev: Recorder(), script, Clock(),
               observer_factory=factory)
    got: list = []
    update = d.detector.update

    def spy(snap, sides, interval=None, headers=None):
        got.append(headers)
        return update(snap, sides, interval, headers=headers)

    d.detector.update = spy
    return d, script, got


def poll(d: Daemon, n: int = 1) -> None:
    for _ in range(n):
        d.clock.now += 1
        d.poll(d.clock.now)


def test_detector_gets_each_polls_read(tmp_path) -> None:
    made, log = [], []
    d, _, got = daemon(tmp_path, made, log)
    assert d.status()["observer"]["state"] == "off" and not log  # nothing before a poll
    poll(d, 3)
    assert got == [READ] * 3
    assert log == ["attach wan0 egress", "attach wan0 ingress"]
    assert d.status()["observer"] | {"read_ms": 0} == {
        "state": "on", "reason": None, "device": "wan0", "flows": 1, "read_ms": 0}
    d.shutdown()
    assert log[-1] == "close" and d.status()["observer"]["state"] == "off"


def test_option_off_or_disabled_never_makes_one(tmp_path) -> None:
    for opts in ({"header_evidence": "0"}, {"enabled": "0"}):
        made, log = [], []
        d, _, got = daemon(tmp_path, made, log, **opts)
        poll(d, 2)
        assert not made and got == [None, None]
        assert "observer" not in {w["code"] for w in d.status()["warnings"]}


def test_a_failure_is_said_once_and_retried_only_when_something_changed(tmp_path) -> None:
    made, log, fail = [], [], {"fail_attach": BROKEN}
    d, script, got = daemon(tmp_path, made, log, fail)
    poll(d, 3)
    assert got == [None] * 3 and len(made) == 1
    doc = d.status()
    assert doc["observer"]["state"] == "off" and doc["observer"]["reason"] == BROKEN
    assert [w["message"] for w in doc["warnings"] if w["code"] == "observer"] == [
        f"header evidence off: {BROKEN}"]
    script.changed = Events(seen=True)  # tc events (e.g. the profile's): no retry
    d.tend(d.clock.now)
    poll(d)
    assert len(made) == 1
    script.changed = Events(seen=True, links=frozenset({"wan0"}))  # the device is back
    d.tend(d.clock.now)
    poll(d)
    assert len(made) == 2
    fail.clear()
    d.reload()  # a reload retries too, and this time it works
    poll(d)
    assert len(made) == 3 and got[-1] == READ
    assert "observer" not in {w["code"] for w in d.status()["warnings"]}


def test_a_read_error_turns_it_off_and_the_poll_goes_on(tmp_path) -> None:
    made, log = [], []
    d, _, got = daemon(tmp_path, made, log)
    poll(d)
    made[0].fail_read = "voipqos_seen read: Bad file descriptor"
    poll(d, 2)
    assert got == [READ, None, None] and log[-1] == "close"
    assert d.status()["observer"]["reason"] == "voipqos_seen read: Bad file descriptor"
    assert d.polls == 3


def test_with_sqm_it_makes_way_before_the_profile_goes_on(tmp_path) -> None:
    """sqm's `ingress` qdisc cannot be added next to the observer's clsact (the kernel
    test test_observer_netns shows both): off before the switch-on, back at the next poll."""
    for backend, steps_aside in (("sqm", True), ("htb", False)):
        made, log = [], []
        d, _, got = daemon(tmp_path, made, log, backend=backend)
        poll(d)
        d.set_mode({"mode": "on"})
        assert (log[-2:] == ["remove_from wan0", "close"]) == steps_aside
        assert (d.status()["observer"]["state"] == "off") == steps_aside
        poll(d)
        assert got[-1] == READ and d.status()["observer"]["state"] == "on"


def test_status_text_says_whether_header_evidence_is_on(tmp_path) -> None:
    from voipqos.cli import format_status

    made, log = [], []
    d, _, _ = daemon(tmp_path, made, log)
    assert "  header evidence off: not attached yet\n" in format_status(d.status())
    poll(d)
    assert "  header evidence: observer on, 1 flow(s)\n" in format_status(d.status())
    doc = d.status()
    del doc["observer"]  # an older router's status: no line
    assert "header evidence" not in format_status(doc)
