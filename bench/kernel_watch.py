"""What the daemon's watch on the kernel costs while shaping (needs root).

The daemon looks for link/tc events every 0.25 s while the profile is on (a drained
non-blocking netlink socket) and reads the kernel back (HtbProfile.check: tc dumps plus a
`tc filter show` per classifier hook) only when an event arrived. Printed next to each
other: the idle look, one `tc qdisc show` (what a shell script would run each poll:
the baseline, same run), the full check, and
the share of one core they take on this machine at the daemon's rates.
Usage: .venv/bin/python bench/kernel_watch.py [N]
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from voipqos import config
from voipqos.htb import HtbProfile
from voipqos.lab import netns
from voipqos.linkwatch import LinkWatch

PREFIX = f"vqz{os.getpid()}-w-"


def timed(fn, n: int) -> float:
    """Median seconds per call."""
    xs = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs)


def inner(n: int) -> None:
    """Runs inside the router namespace (the watch subscribes in its own namespace)."""
    pins = tempfile.mkdtemp(prefix="vqc-pins-")
    cfg = config.from_options({"upload": "10000", "download": "20000"})
    prof = HtbProfile(cfg, netns.ROUTER_WAN_DEV, pins)
    watch = LinkWatch()
    try:
        prof.apply()
        assert prof.check() is None, prof.check()
        watch.events()  # our own apply's events
        idle = timed(watch.events, n * 100)
        qdisc = ["tc", "-j", "qdisc", "show", "dev", netns.ROUTER_WAN_DEV]
        shell = timed(lambda: subprocess.run(qdisc, capture_output=True, check=True), n)
        check = timed(prof.check, n)
        print(f"idle look (recv, nothing happened)  {idle * 1e6:9.1f} us  "
              f"x4/s = {idle * 4 * 100:.4f} % of a core")
        print(f"baseline: one `tc qdisc show`        {shell * 1e3:9.2f} ms  (a script's check)")
        print(f"full check after an event           {check * 1e3:9.2f} ms  "
              f"(if done every 1 s poll instead: {check * 100:.2f} % of a core)")
    finally:
        prof.remove()
        subprocess.run(["umount", pins], capture_output=True)
        os.rmdir(pins)


def main() -> None:
    n = int(sys.argv[2] if sys.argv[1:2] == ["--inner"] else sys.argv[1] if sys.argv[1:] else 50)
    if sys.argv[1:2] == ["--inner"]:
        inner(n)
        return
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpus, kernel "
          f"{platform.release()}, python {platform.python_version()}, N={n}")
    with netns.three_hosts(PREFIX) as topo:
        print(topo.exec("router", [sys.executable, __file__, "--inner", str(n)],
                        timeout=300).stdout, end="")


if __name__ == "__main__":
    main()
