"""Score the detector on the replayed corpus: the committed snapshot sequences go through
`Detector.update` and the real `Hysteresis`, exactly as the daemon polls them. Pure.

Per call capture: was the call found, the share of its active seconds (seconds in which
its labelled media flowed) with the profile on, the delay from the first media packet to
the profile switching on, and the flows called media that are not the call's. Per
non-call capture: the seconds the profile would be on and how often it would switch on.

`headers=True` also hands the detector what the tc-BPF observer would have counted
(header_evidence.FlowHeaders over each datagram's captured first 12 bytes, from the
committed plan) at every snapshot, keyed as the daemon keys it: without it the detector
sees what `voipqos analyze` sees, conntrack only.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..conntrack import Snapshot, parse
from ..detect import MEDIA, DetectConfig, Detector, Sides
from ..header_evidence import IN, OUT, FlowHeaders, HeaderCounts, HeaderKey, worth_tracking
from ..hysteresis import Hysteresis, HysteresisConfig
from .netns import LAN_HOST4, LAN_NET4, ROUTER_WAN4
from .replay import Endpoint, Plan, read_plan, read_snapshots
from .replay_corpus import CORPUS, corpus_file, load_manifest

# what hostinfo.sides() gives the daemon on the lab router
LAB_SIDES = Sides(frozenset({ROUTER_WAN4}), (ipaddress.ip_network(LAN_NET4),))


@dataclass
class Score:
    name: str
    kind: str
    app: str
    calls_expected: int
    found: bool = False  # every call of the capture found
    found_calls: int = 0
    active: int = 0  # seconds with call media (truth)
    active_on: int = 0  # of them, seconds with the profile on
    delay: float | None = None  # a call's first media second -> profile on, s (worst call)
    detect_delay: float | None = None  # ... -> first poll with a call, s (worst call)
    on_seconds: int = 0  # polls with the profile on (non-call captures)
    switch_ons: int = 0
    # flows called media (beyond a first pending interval) that are not the call's
    noise: set[str] = field(default_factory=set)

    @property
    def on_share(self) -> float | None:
        return self.active_on / self.active if self.active else None

    def row(self) -> dict:
        return {"name": self.name, "kind": self.kind, "app": self.app,
                "calls": self.calls_expected, "found": self.found_calls, "active_s": self.active,
                "on_share": None if self.on_share is None else round(self.on_share, 3),
                "delay_s": self.delay, "detect_delay_s": self.detect_delay,
                "on_s": self.on_seconds, "switch_ons": self.switch_ons,
                "noise_media": sorted(self.noise)}


def _call_keys(flows: list[str], far_map: dict[str, str]) -> set[tuple[int, str, int]]:
    """Labelled flows ("LANPORT-FARIP:FARPORT") as (LAN port, lab far address, far port)."""
    keys = set()
    for f in flows:
        lan_port, _, far = f.partition("-")
        ip, _, port = far.rpartition(":")
        keys.add((int(lan_port), far_map.get(ipaddress.ip_address(ip).compressed, ""),
                  int(port)))
    return keys


MEDIA_MIN_PACKETS = 4  # a second of call media, both directions together; STUN/keepalives
# send one or two


def call_runs(counts: dict[int, int]) -> list[range]:
    """When the capture's calls were on, from the packets of their labelled flows: runs
    of seconds with media (gaps of up to 2 s inside a run count: DTX) holding at least 3
    media seconds, one run per call. Single bursts (ICE checks, keepalives before and
    after a call) are not a call."""
    busy = sorted(t for t, n in counts.items() if n >= MEDIA_MIN_PACKETS)
    runs: list[list[int]] = []
    for t in busy:
        if runs and t - runs[-1][-1] <= 3:
            runs[-1].append(t)
        else:
            runs.append([t])
    return [range(r[0], r[-1] + 1) for r in runs if len(r) >= 3]


def observed(p: Plan, shift: float, times: list[float]
             ) -> list[dict[tuple[int, Endpoint], HeaderCounts]]:
    """Per snapshot time: the observer's cumulative counters per flow (LAN port, far
    endpoint) over the datagrams sent before it, the plan replayed `shift` s later. A
    far-end datagram before any LAN datagram of its flow is not sent (the replay drops it,
    as a NAT router would); a flow enters the map with its first RTP- or STUN-like head."""
    flows: dict[tuple[int, Endpoint], FlowHeaders] = {}
    opened: set[tuple[int, Endpoint]] = set()
    out: list[dict[tuple[int, Endpoint], HeaderCounts]] = []
    i = 0
    for t in times:
        while i < len(p.sends) and p.sends[i][0] + shift < t:
            _, lan, port, far, _ = p.sends[i]
            head = p.head(i)
            i += 1
            key = (port, far)
            if lan:
                opened.add(key)
            elif key not in opened:
                continue
            if key in flows or worth_tracking(head, (port, far[1])):
                flows.setdefault(key, FlowHeaders()).packet(OUT if lan else IN, head)
        out.append({k: f.counts() for k, f in flows.items()})
    return out


def header_map(snap: Snapshot, counts: dict[tuple[int, Endpoint], HeaderCounts]
               ) -> dict[HeaderKey, HeaderCounts]:
    """The counters keyed as the daemon passes them: by each conntrack entry's reply tuple
    (far address, far port, the router's port), whatever NAT made of the LAN port."""
    heads: dict[HeaderKey, HeaderCounts] = {}
    for e in snap.entries.values():
        o, r = e.orig, e.reply
        c = counts.get((o.sport, (o.dst, o.dport))) if o.src == LAN_HOST4 else None
        if c is not None:
            heads[(r.src, r.sport, r.dport)] = c
    return heads


def score(cap: dict, directory: Path, cfg: config.Config, headers: bool = False) -> Score:
    truth = json.loads((directory / f"{cap['name']}.truth.json").read_text())
    snaps = read_snapshots(directory / f"{cap['name']}.ct")
    counts: list[dict[tuple[int, Endpoint], HeaderCounts]] = []
    if headers:
        p = read_plan(corpus_file(directory, f"{cap['name']}.plan.gz"))
        # a shifted sequence replayed the committed plan later: its truth says how much
        counts = observed(p, round(truth["duration"] - p.duration, 3), [t for t, _ in snaps])
    runs = call_runs({int(k): v for k, v in truth["media"].items()})
    call_keys = _call_keys([*cap["call_flows"], *cap.get("app_flows", [])], truth["far_map"])
    s = Score(cap["name"], cap["kind"], cap["app"], len(runs))
    det = Detector(DetectConfig.from_config(cfg))
    hyst = Hysteresis(HysteresisConfig.from_config(cfg), 0.0)
    seen: dict[int, float] = {}  # run index -> first poll with a call in it
    on: dict[int, float] = {}  # run index -> first poll with the profile on in it
    for n, (t, lines) in enumerate(snaps):
        snap = parse(lines, cfg.sip_ports, taken_at=t)
        # conntrack only: as detectors from before header evidence are called (bench)
        d = det.update(snap, LAB_SIDES, headers=header_map(snap, counts[n])) if headers \
            else det.update(snap, LAB_SIDES)
        # getattr: the bench scores detectors from before header evidence too
        if hyst.step(t, len(d.calls), getattr(d, "sure", False)) and hyst.active:
            s.switch_ons += 1
        s.on_seconds += hyst.active
        for f in d.flows:
            o = f.entry.orig
            mine = (o.sport, o.dst, o.dport) if o.src == LAN_HOST4 else (o.dport, o.src, o.sport)
            # getattr: the bench scores detectors from before `pending` too
            if f.verdict == MEDIA and not getattr(f, "pending", False) and mine not in call_keys:
                s.noise.add(f"{o.src}:{o.sport}>{o.dst}:{o.dport}")
        # the snapshot at t covers [t-1, t): media second t-1 is judged by this poll
        for i, r in enumerate(runs):
            if int(t) - 1 in r:
                s.active += 1
                s.active_on += hyst.active
                if d.calls:
                    seen.setdefault(i, t - r.start)
                if hyst.active:
                    on.setdefault(i, t - r.start)
    # found: the profile was on during the call (what the user gets), not merely a
    # first-interval verdict
    s.found_calls = len(on)
    s.found = bool(runs) and len(on) == len(runs)
    s.detect_delay = max(seen.values()) if len(seen) == len(runs) and runs else None
    s.delay = max(on.values()) if s.found else None
    return s


def evaluate(directory: Path = CORPUS, cfg: config.Config | None = None,
             names: list[str] | None = None, headers: bool = False) -> list[Score]:
    cfg = cfg or config.defaults()
    manifest = load_manifest(corpus_file(directory, "corpus.json").parent)
    return [score(c, directory, cfg, headers) for c in manifest
            if (not names or c["name"] in names) and (directory / f"{c['name']}.ct").exists()]


def table(scores: list[Score]) -> str:
    out = [f"{'capture':<26}{'app':<38}{'calls':>6}{'active':>7}{'on%':>6}{'delay':>7}"
           f"{'on_s':>6}{'sw':>4}  noise"]
    for s in scores:
        share = "-" if s.on_share is None else f"{100 * s.on_share:.0f}"
        delay = "-" if s.delay is None else f"{s.delay:.0f}"
        found = f"{s.found_calls}/{s.calls_expected}" if s.kind == "call" else "-"
        out.append(f"{s.name:<26}{s.app[:37]:<38}{found:>6}{s.active:>7}{share:>6}{delay:>7}"
                   f"{s.on_seconds:>6}{s.switch_ons:>4}  {len(s.noise)}")
    calls = [s for s in scores if s.kind == "call"]
    quiet = [s for s in scores if s.kind != "call"]
    act = sum(s.active for s in calls)
    out.append(f"calls found {sum(s.found_calls for s in calls)}/"
               f"{sum(s.calls_expected for s in calls)} (captures with every call found "
               f"{sum(s.found for s in calls)}/{len(calls)}); active seconds on "
               f"{sum(s.active_on for s in calls)}/{act}; non-call captures with a switch-on "
               f"{sum(1 for s in quiet if s.switch_ons)}/{len(quiet)} "
               f"({sum(s.on_seconds for s in quiet)} s on); flows wrongly called media "
               f"{sum(len(s.noise) for s in scores)}")
    return "\n".join(out)


def markdown(scores: list[Score]) -> str:
    """The per-capture table of docs/detection.md."""
    out = ["| capture | app | calls found | active s | on | delay s | on s (non-call) "
           "| switch-ons | noise flows |", "|---|---|---|---|---|---|---|---|---|"]
    for s in scores:
        call = s.kind == "call"
        out.append(" | ".join([
            f"| {s.name}", s.app, f"{s.found_calls}/{s.calls_expected}" if call else "-",
            str(s.active) if call else "-",
            "-" if s.on_share is None else f"{100 * s.on_share:.0f} %",
            "-" if s.delay is None else f"{s.delay:.0f}",
            "-" if call else str(s.on_seconds), str(s.switch_ons), f"{len(s.noise)} |"]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voipqos-replay-eval", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=str(CORPUS))
    ap.add_argument("--config", help="UCI config (default: built-in defaults)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--headers", action="store_true",
                    help="with the tc-BPF observer's header counters (from the plans)")
    ap.add_argument("names", nargs="*")
    a = ap.parse_args(argv)
    cfg = config.load(a.config) if a.config else config.defaults()
    scores = evaluate(Path(a.dir), cfg, a.names, a.headers)
    if a.json:
        print(json.dumps([s.row() for s in scores], indent=1))
    else:
        print(markdown(scores) if a.markdown else table(scores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
