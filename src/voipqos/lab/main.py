"""`voipqos-lab`: the end-to-end proof. Builds phone – router – isp – far end in network
namespaces, saturates the line both ways with cubic TCP, places a real SIP call with an
irtt probe beside it, and does so three times: without voipqos, with the daemon in auto
mode, and with the profile forced on. Prints a side-by-side table and writes
results.json, latency.png and cdf.png. Needs root; everything it made is removed on exit,
Ctrl-C and failure, and leftovers of a killed run are removed at start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import plots, probe, report
from .netns import cleanup_prefix, require_root
from .scenario import FULL, QUICK, SCENARIOS, Lab, Progress
from .topology import Line, four_hosts

TOOLS = ("ip", "nft", "tc", "conntrack", "irtt", "iperf3", "baresip")


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_avg": os.getloadavg()}


def progress_printer(step: str) -> Progress:
    """A one-line bar on a terminal, one line per phase otherwise (CI logs)."""
    tty = sys.stderr.isatty()
    seen: set[str] = set()

    def show(what: str, done: float, total: float) -> None:
        if tty:
            n = int(20 * done / total) if total else 20
            sys.stderr.write(f"\r{step} {what:<28} [{'#' * n}{'.' * (20 - n)}] "
                             f"{done:4.0f}/{total:.0f} s ")
            sys.stderr.flush()
        elif what not in seen:
            seen.add(what)
            print(f"{step} {what} ({total:.0f} s)", file=sys.stderr, flush=True)

    return show


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="voipqos-lab", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (under a minute, for CI)")
    p.add_argument("--out", default="lab-results", help="output directory (%(default)s)")
    p.add_argument("--up", type=int, default=10_000, help="line upload kbit/s (%(default)s)")
    p.add_argument("--down", type=int, default=20_000,
                   help="line download kbit/s (%(default)s)")
    p.add_argument("--buffer-ms", type=int, default=500,
                   help="modem FIFO depth in ms at the line rate (%(default)s)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help="comma-separated subset of %(default)s")
    p.add_argument("--prefix", default="vqf-lab-", help="namespace name prefix (%(default)s)")
    p.add_argument("--conntrack-source", default="netlink", choices=("netlink", "proc"),
                   help="the daemon's conntrack_source (%(default)s)")
    args = p.parse_args(argv)
    names = args.scenarios.split(",")
    bad = [n for n in names if n not in SCENARIOS]
    if bad:
        p.error(f"--scenarios: unknown {bad[0]!r}; known: {', '.join(SCENARIOS)}")
    args.scenarios = names
    return args


def _on_term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """The lab; SIGTERM ends it like Ctrl-C (cleanup first), only while it runs."""
    old = signal.signal(signal.SIGTERM, _on_term)
    try:
        return _run(parse_args(argv))
    finally:
        signal.signal(signal.SIGTERM, old)


def _run(args: argparse.Namespace) -> int:
    why = require_root()
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if why or missing:
        print(f"voipqos-lab: {why or 'needs ' + ', '.join(missing)} "
              "(run scripts/demo.sh, which installs everything)", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    raw = out / "raw"
    cleanup_prefix(args.prefix)
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    line = Line(args.up, args.down, args.buffer_ms)
    timing = QUICK if args.quick else FULL
    t0 = time.monotonic()
    doc: dict[str, Any] = {"machine": machine(), "line": vars(line),
                           "timing": vars(timing), "quick": args.quick,
                           "started": time.time(), "scenarios": []}
    try:
        with four_hosts(args.prefix, line) as topo:
            lab = Lab(topo, line, timing, raw, progress_printer("[setup]"),
                      args.conntrack_source)
            lab.start_servers()
            lab.progress = progress_printer("[idle]")
            idle = probe.summarize(probe.samples_from_irtt(lab.idle()))
            doc["idle"] = idle
            shaped = {"up": line.up_kbit, "down": line.down_kbit}
            for i, name in enumerate(args.scenarios, 1):
                lab.progress = progress_printer(f"[{i}/{len(args.scenarios)}]")
                raw_res = lab.scenario(name)
                doc["scenarios"].append(report.summarize(raw_res, idle, shaped))
        if sys.stderr.isatty():
            sys.stderr.write("\n")
    except KeyboardInterrupt:
        print("\nvoipqos-lab: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"\nvoipqos-lab: {exc}; namespaces and processes removed", file=sys.stderr)
        return 1
    doc["elapsed_s"] = time.monotonic() - t0
    return _write(doc, out)


def _write(doc: dict[str, Any], out: Path) -> int:
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    m = doc["machine"]
    subtitle = (f"{doc['line']['up_kbit'] / 1000:g}/{doc['line']['down_kbit'] / 1000:g} "
                f"Mbit/s line, {doc['line']['buffer_ms']} ms modem buffer; "
                f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}")
    plots.latency_over_time(doc["scenarios"], out / "latency.png", subtitle)
    plots.latency_cdf(doc["scenarios"], out / "cdf.png", subtitle)
    text = report.table(doc["scenarios"], doc["idle"])
    errors = [f"{r['name']}: {e}" for r in doc["scenarios"] for e in r["errors"]]
    summary = "\n".join([text, f"machine: {subtitle}",
                         f"elapsed {doc['elapsed_s']:.0f} s; results in {out}",
                         *(f"problem: {e}" for e in errors)])
    (out / "summary.txt").write_text(summary + "\n")
    print(summary)
    return 1 if errors else 0
