"""`voipqos analyze` over a sequence of snapshots answers as the daemon would: the same
Detector and Hysteresis, fed the same tables through the daemon's `System` seam."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from voipqos import config
from voipqos.cli import main
from voipqos.conntrack import Snapshot, read_proc
from voipqos.daemon import Daemon, System
from voipqos.detect import Sides
from voipqos.documents import flows_document
from voipqos.linkwatch import Events
from voipqos.profile import LogProfile

LINE = ("ipv4     2 udp      17 119 src=192.168.1.20 dst=203.0.113.{h} sport={sp} dport={dp} "
        "packets={a} bytes={ab} src=203.0.113.{h} dst=198.51.100.1 sport={dp} dport={sp} "
        "packets={b} bytes={bb} [ASSURED] mark=0 zone=0 use=2\n")


class Replay(System):
    """The daemon's OS seam reading saved tables in order, as analyze does."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self.paths = paths
        self.i = 0

    def kernel_events(self) -> Events:
        return Events()  # no links, no tc: nothing changes

    def traffic(self, device: str) -> None:
        return None

    def resolve(self, interface: str) -> str:
        return interface

    def sides(self, device: str) -> Sides:
        return Sides()  # offline: which side is the LAN is unknown, as for analyze

    def accounting(self) -> bool:
        return True

    def snapshot(self, cfg: config.Config, now: float, *_hints: object) -> Snapshot:
        snap = read_proc(str(self.paths[self.i]), cfg.sip_ports, taken_at=now)
        self.i += 1
        return snap


def daemon_answer(paths: list[Path], interval: float) -> tuple[dict, bool]:
    now = [0.0]
    d = Daemon(config.defaults(), "-", lambda c, dev: LogProfile(c), Replay(paths),
               lambda: now[0])
    for i in range(len(paths)):
        now[0] = i * interval
        d.poll(now[0])
    return flows_document(d.detection), d.hyst.active


# a flow: (host, sport, dport, out pps, out size, in pps, in size) per step
flow = st.tuples(st.integers(1, 4), st.integers(1024, 1030), st.sampled_from([3478, 20000, 53]),
                 st.lists(st.tuples(st.integers(0, 80), st.integers(60, 1300),
                                    st.integers(0, 80), st.integers(60, 1300)),
                          min_size=12, max_size=12))


def write_sequence(directory: Path, flows: list, steps: int) -> list[Path]:
    paths = []
    totals = {i: [0, 0, 0, 0] for i in range(len(flows))}
    for t in range(steps):
        text = []
        for i, (h, sp, dp, rates) in enumerate(flows):
            op, osz, ip, isz = rates[t]
            tot = totals[i]
            tot[0] += op
            tot[1] += op * osz
            tot[2] += ip
            tot[3] += ip * isz
            text.append(LINE.format(h=h, sp=sp + i * 10, dp=dp, a=tot[0], ab=tot[1],
                                    b=tot[2], bb=tot[3]))
        p = directory / f"snap{t:02d}"
        p.write_text("".join(text))
        paths.append(p)
    return paths


@settings(max_examples=25, deadline=None)
@given(st.lists(flow, min_size=1, max_size=4), st.integers(2, 12),
       st.sampled_from([0.5, 1.0, 2.0]))
def test_analyze_equals_the_daemon(flows, steps, interval):
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_sequence(Path(tmp), flows, steps)
        conf = Path(tmp) / "voipqos"
        conf.write_text("config voipqos 'main'\n")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["analyze", *map(str, paths), "--interval", str(interval), "--json",
                         "--config", str(conf)]) == 0
        got = json.loads(out.getvalue())
        doc, active = daemon_answer(paths, interval)
        assert {k: got[k] for k in doc} == doc
        assert got["profile"]["on"] == active
        assert got["snapshots"] == steps


def analyze(tmp_path, capsys, *paths: Path, extra: tuple[str, ...] = ()) -> tuple[int, str, str]:
    conf = tmp_path / "voipqos"
    conf.write_text("config voipqos 'main'\n")
    code = main(["analyze", *map(str, paths), "--config", str(conf), *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def call_sequence(tmp_path: Path, steps: int) -> list[Path]:
    rates = [(50, 200, 50, 200)] * 12
    return write_sequence(tmp_path, [(9, 40000, 20000, rates)], steps)


def test_two_and_twelve_snapshots_of_a_call(tmp_path, capsys):
    paths = call_sequence(tmp_path, 12)
    code, out, _ = analyze(tmp_path, capsys, *paths[:2], extra=("--json",))
    doc = json.loads(out)
    assert code == 0 and doc["snapshots"] == 2 and doc["history_s"] == 1
    fl, active = daemon_answer(paths[:2], 1.0)
    assert {k: doc[k] for k in fl} == fl and doc["calls"] == 1
    assert doc["profile"]["on"] is active is False  # on_polls 2: one rate seen so far
    code, out, _ = analyze(tmp_path, capsys, *paths, extra=("--json",))
    doc = json.loads(out)
    fl, active = daemon_answer(paths, 1.0)
    assert {k: doc[k] for k in fl} == fl and doc["profile"]["on"] is active is True
    _, text, _ = analyze(tmp_path, capsys, *paths)
    assert text.startswith("12 snapshots, 11 s of history; profile on")
    assert "no packet-header evidence" in text.splitlines()[1]  # offline: conntrack only


def test_bad_files_are_one_line_errors_exit_2(tmp_path, capsys):
    a, b = call_sequence(tmp_path, 2)
    junk = tmp_path / "junk"
    junk.write_text("hello\nworld\n")
    for args, cause in (((a, tmp_path / "nope"), "nope: No such file or directory"),
                        ((a, junk), "junk: not a conntrack table"),
                        ((b, a), f"{a}: out of order after {b}"),
                        ((a,), "at least two snapshots")):
        code, _, err = analyze(tmp_path, capsys, *args)
        assert code == 2, cause
        assert len(err.strip().splitlines()) == 1 and cause in err, err
    empty = tmp_path / "empty"
    empty.write_text("")
    assert analyze(tmp_path, capsys, a, empty)[0] == 0  # an empty table is a table


def test_recorded_call_two_and_twelve_snapshots(tmp_path, capsys):
    """A real call (KakaoTalk RTP, replayed through the lab router): analyze on 2 and on
    12 of its saved tables gives the daemon's answers."""
    from voipqos.lab.replay import read_snapshots
    from voipqos.lab.replay_corpus import CORPUS

    snaps = read_snapshots(CORPUS / "kakaotalk.ct")[3:15]
    paths = []
    for i, (_, lines) in enumerate(snaps):
        p = tmp_path / f"ct.{i:02d}"
        p.write_text("".join(line + "\n" for line in lines))
        paths.append(p)
    for n, on in ((2, False), (12, True)):
        code, out, _ = analyze(tmp_path, capsys, *paths[:n], extra=("--json",))
        doc = json.loads(out)
        fl, active = daemon_answer(paths[:n], 1.0)
        assert code == 0 and {k: doc[k] for k in fl} == fl
        assert doc["profile"]["on"] is active is on
        assert doc["calls"] == 1
