"""Replay the capture corpus (tests/data/captures/corpus.json) through the lab router.

For each capture: the snapshot sequence the router's conntrack showed (`NAME.ct`) and the
ground truth (`NAME.truth.json`: per replay second, packets of the call's labelled media
flows; the address map) and the replay plan (`NAME.plan.gz`: each datagram's time, side,
ports, size and first 12 payload bytes (its RTP/STUN header), no further payload:
`replay.read_plan` replays it again without the pcap). `--plans-only` rewrites the plans
from the pcaps without replaying (the snapshots stay as they are). The
pcaps themselves are not in the repository: fetch them from the source named in the
manifest (repository, commit, path) into `--pcaps`.

`--shift S --out DIR` replays the committed plans again with every datagram S seconds
later (no pcaps needed): the same traffic against another phase of the router's
once-a-second poll, as another replay or a real router would see it. The corpus test
scores `shift-0.5/` too, so a rule that only works at one phase fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .replay import Plan, media_seconds, plan, read_plan, replay, write_plan, write_snapshots
from .replay_pcap import read_udp

CORPUS = Path(__file__).resolve().parents[3] / "tests" / "data" / "captures"


def load_manifest(directory: Path = CORPUS) -> list[dict]:
    return json.loads((directory / "corpus.json").read_text())["captures"]


def corpus_file(directory: Path, name: str) -> Path:
    """A corpus file for a sequence directory: its own, its parent's (a shifted replay
    of a corpus lives in a subdirectory of it), else the committed corpus'."""
    for d in (directory, directory.parent, CORPUS):
        if (d / name).exists():
            return d / name
    return CORPUS / name


def run_one(cap: dict, pcaps: Path | None, out: Path, prefix: str, shift: float = 0.0,
            plans_only: bool = False, corpus: Path = CORPUS) -> str:
    if pcaps is None:  # the corpus' plan, shifted
        p = read_plan(corpus / f"{cap['name']}.plan.gz")
        p = Plan(p.lan_host, [(t + shift, *rest) for t, *rest in p.sends], p.far_map,
                 p.skipped, p.duration + shift, p.heads)
    else:
        p = plan(read_udp(pcaps / cap["file"])[0], cap["lan"])
        write_plan(out / f"{cap['name']}.plan.gz", p)
        if plans_only:
            return f"{cap['name']}: plan of {len(p.sends)} datagrams"
    res = replay(p, prefix)
    write_snapshots(out / f"{cap['name']}.ct", res.snapshots)
    truth = {"name": cap["name"], "duration": round(p.duration, 3), "sent": res.sent,
             "dropped_no_nat_mapping": res.dropped, "far_map": p.far_map,
             "media": media_seconds(p, cap["call_flows"])}
    (out / f"{cap['name']}.truth.json").write_text(json.dumps(truth, indent=1) + "\n")
    return f"{cap['name']}: {len(res.snapshots)} snapshots, sent {res.sent}, dropped {res.dropped}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="voipqos-replay-corpus", description=__doc__.split("\n")[0])
    ap.add_argument("--pcaps", help="directory holding the corpus' capture files")
    ap.add_argument("--shift", type=float, help="replay the committed plans this many "
                    "seconds later instead (no pcaps)")
    ap.add_argument("--corpus", default=str(CORPUS),
                    help="directory with the corpus.json to replay, and with --shift its plans "
                    "(default: the committed corpus; your own captures: see docs/detection.md)")
    ap.add_argument("--out", default=str(CORPUS))
    ap.add_argument("--only", nargs="*", help="capture names (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--plans-only", action="store_true",
                    help="with --pcaps: only rewrite the plans, no replay (no root)")
    a = ap.parse_args(argv)
    if (a.pcaps is None) == (a.shift is None) or (a.plans_only and not a.pcaps):
        print("voipqos-replay-corpus: give --pcaps or --shift (--plans-only needs --pcaps)",
              file=sys.stderr)
        return 2
    if os.geteuid() != 0 and not a.plans_only:
        print("voipqos-replay-corpus: needs root (network namespaces)", file=sys.stderr)
        return 2
    Path(a.out).mkdir(parents=True, exist_ok=True)
    caps = [c for c in load_manifest(Path(a.corpus)) if not a.only or c["name"] in a.only]
    with ProcessPoolExecutor(a.jobs) as pool:
        futs = [pool.submit(run_one, c, a.pcaps and Path(a.pcaps), Path(a.out),
                            f"vqr{os.getpid()}x{i}-", a.shift or 0.0, a.plans_only,
                            Path(a.corpus))
                for i, c in enumerate(caps)]
        for f in futs:
            print(f.result(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
