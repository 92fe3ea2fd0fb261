"""Resident memory of the running service, next to bare python3 and today's design.

    sudo .venv-pyroute2-0.7.9/bin/python bench/memory.py [--sizes 1000:100,60000:30000]
        [--status-calls 10000] [--settle 8] [--before COMMIT]

Baselines in the same run: `python3 -c pass`; the import footprint of the design before
the tc worker (the daemon's modules plus pyroute2 with an open IPRoute, held for the
daemon's whole life); and that design's real daemon (src/ of --before, by default the
commit this branch started from, extracted with git archive) in the same rows. Each
daemon (`voipqos run --foreground`) runs in a vqm- router namespace whose conntrack
table holds TOTAL:UDP entries (bench/conntrack_poll.py's mix, plus 4 real 50 pps flows;
its router-sized hash):
metrics.rss_bytes and poll_ms from `voipqos status` after --settle seconds of polls,
then with the profile switched on (set_mode on; the tc worker's RSS beside it) and off
again, then after --status-calls status requests (LuCI's 5 s poll for ~14 hours).
The interpreter running this script is the one measured (pyroute2 version printed).
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import conntrack_poll  # noqa: E402

from voipqos.lab.netns import WAN_HOST4, three_hosts  # noqa: E402
from voipqos.rpc_client import LocalClient  # noqa: E402

RSS = ("import sys\nwith open('/proc/self/status') as f:\n"
       "    print(next(int(x.split()[1]) for x in f if x.startswith('VmRSS')) / 1024)")
TODAY = ("import voipqos.cli, voipqos.daemon, voipqos.backends, voipqos.endpoints\n"
         "from pyroute2 import IPRoute\nipr = IPRoute()\n" + RSS)


def rss_of(code: str) -> float:
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                text=True, check=True).stdout)


def pid_rss(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("VmRSS")) / 1024


def worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent), "-f", "voipqos.tcworker"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def config(run_dir: Path, source: str) -> str:
    return "\n".join(["config voipqos 'main'", "\toption interface 'wan0'",
                      "\toption upload '9500'", "\toption download '18000'",
                      f"\toption conntrack_source '{source}'",
                      f"\toption run_dir '{run_dir}'",
                      f"\toption rpc_listen 'unix:{run_dir}/rpc.sock'", ""])


def one(size: tuple[int, int], source: str, args: argparse.Namespace, src: Path) -> dict:
    n, udp = size
    with tempfile.TemporaryDirectory(prefix="vqm-") as tmp, three_hosts("vqm-") as t:
        run_dir = Path(tmp)
        cfg = run_dir / "voipqos.conf"
        cfg.write_text(config(run_dir, source))
        t.exec("router", [sys.executable, str(ROOT / "bench/conntrack_poll.py"), "--child",
                          "fill", "--n", str(n), "--udp", str(udp)], timeout=300)
        t.popen("lan", [sys.executable, "-c", conntrack_poll.VOICE, "900", WAN_HOST4])
        d = t.popen("router", ["sh", "-c", "mountpoint -q /sys/fs/bpf || mount -t bpf bpf "
                               '/sys/fs/bpf; exec "$@"', "sh", "env", f"PYTHONPATH={src}",
                               sys.executable, "-m", "voipqos.cli", "run", "--config",
                               str(cfg), "--foreground"],
                    stdout=(run_dir / "log").open("w"), stderr=subprocess.STDOUT)
        client = LocalClient(f"unix:{run_dir}/rpc.sock", str(run_dir / "rpc.secret"))
        deadline = time.monotonic() + 30
        while not (run_dir / "rpc.sock").exists():
            if time.monotonic() > deadline or d.poll() is not None:
                raise SystemExit(f"daemon did not start: {(run_dir / 'log').read_text()}")
            time.sleep(0.2)
        pid = int((run_dir / "voipqos.pid").read_text())
        time.sleep(args.settle)

        def metrics() -> dict:
            return client.call("status", {})["metrics"]

        out = {"n": n, "udp": udp, "source": source}
        m = metrics()
        out["idle"] = {"rss": m["rss_bytes"] / 2**20, "poll_ms": m["poll_ms"],
                       "entries": m["entries"]}
        client.call("set_mode", {"mode": "on"})
        time.sleep(2)
        workers = worker_pids(pid)
        out["on"] = {"rss": metrics()["rss_bytes"] / 2**20,
                     "worker_rss": sum(pid_rss(w) for w in workers)}
        client.call("set_mode", {"mode": "auto"})
        time.sleep(2)
        out["off_again"] = {"rss": metrics()["rss_bytes"] / 2**20}
        before = pid_rss(pid)
        for _ in range(args.status_calls):
            client.call("status", {})
        out["status_calls"] = {"calls": args.status_calls, "before": before,
                               "after": pid_rss(pid)}
        m = metrics()
        out["end"] = {"rss": m["rss_bytes"] / 2**20, "poll_ms": m["poll_ms"],
                      "workers_left": len(worker_pids(pid))}
        d.terminate()
        d.wait(timeout=15)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000:100,20500:500,60000:30000")
    ap.add_argument("--sources", default="netlink,proc")
    ap.add_argument("--status-calls", type=int, default=10_000)
    ap.add_argument("--settle", type=float, default=8)
    ap.add_argument("--before", default="4ec40bc", help="git commit of the old design")
    args = ap.parse_args()
    before = Path(tempfile.mkdtemp(prefix="vqm-before-"))
    subprocess.run(f"git -C {ROOT} archive {args.before} src | tar -x -C {before}",
                   shell=True, check=True)
    print(conntrack_poll.machine())
    print(f"bare python3: {rss_of(RSS):.1f} MiB; today's design (daemon modules + pyroute2 "
          f"{metadata.version('pyroute2')} with an IPRoute): {rss_of(TODAY):.1f} MiB")
    print(f"{'table':>13} {'source':>13} {'idle MiB':>8} {'poll ms':>7} {'on MiB':>6} "
          f"{'+worker':>7} {'off':>5} {'after N status':>22} {'workers left':>12}")
    runs = [(source, ROOT / "src", "") for source in args.sources.split(",")]
    runs.append(("proc", before / "src", " (before)"))
    sizes = [(int(a), int(b)) for a, b in (x.split(":") for x in args.sizes.split(","))]
    with conntrack_poll.router_hash():
        for size, (source, src, label) in itertools.product(sizes, runs):
            r = one(size, source, args, src)
            sc = r["status_calls"]
            print(f"{r['n']:>6}:{r['udp']:<6} {source + label:>13} {r['idle']['rss']:8.1f} "
                  f"{r['idle']['poll_ms']:7.2f} {r['on']['rss']:6.1f} "
                  f"{r['on']['worker_rss']:7.1f} {r['off_again']['rss']:5.1f} "
                  f"{sc['before']:6.1f} -> {sc['after']:.1f} ({sc['calls']})"
                  f" {r['end']['workers_left']:>12}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
