"""Per-call quality over a call's life and the history of finished calls (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from test_daemon import Recorder, rig  # noqa: F401  (rig: a fixture)
from voipqos import detect
from voipqos.callquality import HISTORY, NOT_MEASURED, CallQualities, log_line, quality_doc
from voipqos.cli import format_status
from voipqos.quality import Direction

PHONE, FAR = "192.168.1.20", "203.0.113.9"
ORIG = (17, PHONE, FAR, 40000, 20000)
REPLY = (17, FAR, "198.51.100.2", 20000, 40000)


def call(lan: str = PHONE, far: str = FAR, tuples=(ORIG, REPLY)) -> detect.Call:
    d = detect.Direction(50.0, 8000.0)
    return detect.Call(f"{lan}>{far}", lan, far, (), d, d, True, True, frozenset(tuples))


def rtp(expected: int, received: int, jitter: float = 3.0, pt: int = 0) -> Direction:
    return Direction(received, received * 172, rtp=True, ssrc=1, payload_type=pt,
                     clock_hz=8000, expected=expected, received=received, jitter_ms=jitter)


def table(egress: Direction, ingress: Direction) -> dict:
    # with NAT both WAN directions land in the reply tuple's entry
    idle = Direction(0, 0, rtp=False)
    return {ORIG: {"egress": idle, "ingress": idle}, REPLY: {"egress": egress, "ingress": ingress}}


def wall(t: float) -> float:
    return 1_700_000_000.0 + t


def test_a_call_is_measured_while_it_runs_and_summarised_when_it_ends() -> None:
    cq = CallQualities()
    assert cq.update([call()], 0.0, table(rtp(100, 100), rtp(100, 100)), wall) == []
    q = cq.quality(call().id)
    assert q["known"] and q["summary"] == "good"
    assert q["ingress"]["loss_percent"] == 0.0 and q["ingress"]["where"] == "on the internet side"
    # the last read before the tuples leave the table: 5 % lost arriving from the WAN
    assert cq.update([call()], 191.0, table(rtp(1000, 1000), rtp(1000, 950, 4.0)), wall) == []
    ended = cq.update([], 192.4, {}, wall)
    assert len(ended) == 1 and list(cq.history) == ended
    s = ended[0]
    assert (s["id"], s["duration"], s["started"], s["ended"]) == (
        f"{PHONE}>{FAR}", 192.4, wall(0.0), wall(192.4))
    assert s["quality"]["ingress"]["loss_percent"] == 5.0
    assert s["quality"]["ingress"]["trouble"] == "losing 5 % on the internet side"
    assert s["quality"]["egress"]["trouble"] is None
    assert log_line(s) == (
        f"call {PHONE}>{FAR} ended after 3m12s: in 5.0 % lost, jitter 4.0 ms, MOS 3.9; "
        "out 0.0 % lost, jitter 3.0 ms, MOS 4.4; losing 5 % on the internet side")
    assert cq.calls == {}


def test_an_ended_call_is_measured_with_the_tuples_it_had() -> None:
    """The poll that no longer sees the call reads the table once more before the
    daemon removes its tuples: those counts are the final ones."""
    cq = CallQualities()
    cq.update([call()], 0.0, table(rtp(100, 100), rtp(100, 100)), wall)
    [s] = cq.update([], 10.0, table(rtp(500, 480), rtp(500, 500)), wall)
    assert s["quality"]["egress"]["loss_percent"] == 4.0
    assert log_line(s).endswith("losing 4 % on the Wi-Fi/LAN side")


def test_a_pending_only_call_is_not_reported() -> None:
    """One pending interval (a game's or a VPN handshake's burst): it counted toward
    switching on, never reached the voice class; when it goes it is no call to log or
    list. A call confirmed at any poll is reported, even if its last poll was pending."""
    q = CallQualities()
    q.update([call(tuples=())], 0.0, None, wall)
    assert q.update([], 1.0, None, wall) == [] and not q.history
    q.update([call(tuples=())], 2.0, None, wall)
    q.update([call()], 3.0, None, wall)
    q.update([call(tuples=())], 4.0, None, wall)
    [ended] = q.update([], 5.0, None, wall)
    assert ended["duration"] == 3.0 and list(q.history) == [ended]


def test_quality_is_kept_when_the_table_no_longer_holds_the_call() -> None:
    """A profile switched off (table gone) leaves the last measured quality, not zeros."""
    cq = CallQualities()
    cq.update([call()], 0.0, table(rtp(100, 98), rtp(100, 100)), wall)
    cq.update([call()], 1.0, None, wall)
    cq.update([call()], 2.0, {}, wall)
    assert cq.quality(call().id)["egress"]["loss_percent"] == 2.0


def test_non_rtp_and_unmeasured_calls_say_unknown_never_zeros() -> None:
    cq = CallQualities()
    other = call("192.168.1.30", "198.51.100.7",
                 tuples=[(17, "192.168.1.30", "198.51.100.7", 1, 2)])
    udp = Direction(500, 60000, rtp=False)
    cq.update([call(), other], 0.0, {ORIG: {"egress": udp, "ingress": udp}}, wall)
    q = cq.quality(call().id)
    assert not q["known"] and q["summary"] == "quality unknown (no RTP seen)"
    assert q["egress"]["loss_percent"] is None and q["egress"]["mos"] is None
    assert cq.quality(other.id) == {"known": False, "summary": NOT_MEASURED, "rtt_ms": {},
                                    "egress": None, "ingress": None}
    ended = cq.update([], 65.0, None, wall)
    assert [log_line(s) for s in ended] == [
        f"call {PHONE}>{FAR} ended after 1m05s: quality unknown (no RTP seen)",
        f"call 192.168.1.30>198.51.100.7 ended after 1m05s: {NOT_MEASURED}"]


def test_a_call_with_one_rtp_direction_says_which_is_unknown() -> None:
    cq = CallQualities()
    cq.update([call()], 0.0, table(rtp(100, 100), Direction(100, 9000, rtp=False)), wall)
    [s] = cq.update([], 5.0, None, wall)
    assert log_line(s) == (f"call {PHONE}>{FAR} ended after 5s: in quality unknown; "
                           "out 0.0 % lost, jitter 3.0 ms, MOS 4.4")


def test_reads_the_table_every_interval_while_calls_run_and_when_one_ends() -> None:
    cq = CallQualities(interval=5.0)
    assert not cq.wants_read([], 0.0)
    assert cq.wants_read([call()], 0.0)  # a new call
    cq.update([call()], 0.0, {}, wall)
    assert not cq.wants_read([call()], 4.0)
    assert cq.wants_read([call()], 5.0)
    cq.update([call()], 5.0, None, wall)  # not read: still due
    assert cq.wants_read([call()], 6.0)
    cq.update([call()], 6.0, {}, wall)
    assert cq.wants_read([], 7.0)  # the poll where it ended reads at once
    cq.update([], 7.0, None, wall)
    assert not cq.wants_read([], 20.0)


@given(st.lists(st.sets(st.integers(0, 30), max_size=5), max_size=40))
def test_history_is_bounded_newest_first_and_every_call_ends_once(polls: list[set[int]]) -> None:
    cq = CallQualities()
    ended_ids: list[str] = []
    running: set[int] = set()
    for i, ids in enumerate([*polls, set()]):
        ended = cq.update([call(f"192.168.1.{n}") for n in sorted(ids)], float(i), None, wall)
        assert {s["id"] for s in ended} == {call(f"192.168.1.{n}").id for n in running - ids}
        ended_ids.extend(s["id"] for s in ended)
        running = ids
    assert cq.calls == {}
    assert len(cq.history) == min(HISTORY, len(ended_ids))
    assert [s["id"] for s in cq.history] == ended_ids[::-1][:HISTORY]
    assert all(s["duration"] >= 1.0 for s in cq.history)


class Measuring(Recorder):
    """A profile whose classifier table, like the kernel's, holds counters only for the
    tuples it was given and grows by 50 expected packets (2 lost) per read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def quality(self) -> dict:
        if not self.flows:
            return {}
        self.reads += 1
        n = 50 * self.reads
        return {t: {"egress": rtp(n, n - 2 * self.reads), "ingress": rtp(n, n)}
                for t in self.flows}


def test_daemon_reads_before_the_tuples_leave_and_announces_the_end(rig, caplog):  # noqa: F811
    d = rig.d
    d.profile = prof = Measuring()
    rig.tick()
    rig.script.talking = True
    rig.tick(3)
    assert d.status()["active"] and prof.reads >= 1
    q = d.status()["calls"][0]["quality"]
    assert q["known"] and q["egress"]["loss_percent"] == 4.0
    assert q["egress"]["trouble"] == "losing 4 % on the Wi-Fi/LAN side"
    rig.script.talking = False
    rig.tick(6)
    assert not d.status()["active"] and not d.status()["calls"]
    ended = [e for e in rig.events if e["state"] == "call_end"]
    assert len(ended) == 1 and all(e["event"] == "voipqos.call" for e in rig.events)
    s = ended[0]["call"]
    # the read of the poll that no longer saw the call, taken before set_flows emptied
    # the table: the last and largest count
    assert s["quality"]["egress"]["expected"] == 50 * prof.reads
    assert d.status()["recent_calls"] == [s]
    assert [r.getMessage() for r in caplog.records if "ended after" in r.getMessage()] == [
        log_line(s)]


def test_voipqos_status_prints_quality_per_call_and_direction() -> None:
    cq = CallQualities()
    cq.update([call()], 0.0, table(rtp(1000, 1000, 2.0), rtp(1000, 950, 4.0)), wall)
    running = {"id": call().id, "lan_host": PHONE, "far_host": FAR, "flows": 1, "sip": True,
               "pps_out": 50.0, "pps_in": 50.0, "kbps_out": 80.0, "kbps_in": 80.0,
               "duration": 42.0, "quality": cq.quality(call().id)}
    [ended] = cq.update([], 192.0, None, wall)
    doc = {"version": "0", "state": "on", "since": wall(0), "reason": "call", "device": "wan0",
           "active": True, "calls": [running], "recent_calls": [ended], "transitions": [],
           "metrics": {"cpu_percent": 0.1, "rss_bytes": 1e7, "poll_ms": 1.0, "entries": 1,
                       "lines": 1, "malformed": 0}}
    text = format_status(doc)
    assert ("    quality: losing 5 % on the internet side\n"
            "      in : 5.0 % lost of 1000, jitter 4.0 ms, MOS 3.9\n"
            "      out: 0.0 % lost of 1000, jitter 2.0 ms, MOS 4.4\n") in text
    assert "recent calls:\n  " in text and f"{PHONE} <-> {FAR}  192 s  SIP\n" in text
    doc["calls"][0]["quality"] = quality_doc(None)
    assert f"    quality: {NOT_MEASURED}\n" in format_status(doc)
