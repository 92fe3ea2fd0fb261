"""The small-router report in one go: memory, poll cost, download delay vs goodput.

    sudo .venv/bin/python bench/report.py [--out bench-results/report] [--quick]

Runs, one after the other so they do not disturb each other, each with its baseline
from the same run: bench/memory.py (the service's RSS vs bare python3 and vs the design
before the tc worker, under pyroute2 0.7.9 from .venv-pyroute2-0.7.9 when it exists),
bench/conntrack_poll.py (poll cost vs `cat` of the same table, 1k/5k/20k/60k entries,
router-sized conntrack hash) and bench/download_latency.py (p99 added download delay
vs goodput over IFB leaf settings, next to the profile off; plot included). Writes
report.md (every table as printed) and p99_vs_goodput.png into --out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(title: str, cmd: list[str], out: list[str]) -> None:
    print(f"== {title}", flush=True)
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True)
    text = res.stdout + (f"\n(exit {res.returncode}) {res.stderr[-2000:]}" if res.returncode
                         else "")
    print(text, flush=True)
    out += [f"## {title}", "", f"`{' '.join(Path(c).name if '/' in c else c for c in cmd)}`"
            f" ({time.monotonic() - t0:.0f} s)", "", "```", text.strip(), "```", ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench-results/report")
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    old = ROOT / ".venv-pyroute2-0.7.9/bin/python"
    py_old = str(old) if old.exists() else sys.executable
    bench = ROOT / "bench"
    quick = args.quick
    doc = ["# voipqos on a small router: memory, poll cost, download delay", ""]
    run("Memory (pyroute2 as OpenWrt 24.10 ships it)",
        [py_old, str(bench / "memory.py"), "--status-calls", "2000" if quick else "10000",
         "--sizes", "1000:100,60000:30000" if quick else "1000:100,20500:500,60000:30000"],
        doc)
    run("Poll cost",
        [sys.executable, str(bench / "conntrack_poll.py"), "--repeat", "3" if quick else "7",
         "--sizes", "1000:100,20500:500,60000:30000" if quick else
         "1000:100,5000:300,20500:500,60000:30000"], doc)
    run("Download delay vs goodput",
        [sys.executable, str(bench / "download_latency.py"), "--out", str(out / "download"),
         "--repeat", "2" if quick else "3", "--seconds", "10" if quick else "12"], doc)
    plot = out / "download" / "p99_vs_goodput.png"
    if plot.exists():
        (out / "p99_vs_goodput.png").write_bytes(plot.read_bytes())
        doc += ["![p99 vs goodput](p99_vs_goodput.png)", ""]
    (out / "report.md").write_text("\n".join(doc))
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
