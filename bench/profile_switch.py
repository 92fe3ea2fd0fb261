"""Time to switch the HTB profile on and off in the lab namespaces (needs root).

Prints the median and p90 of N apply() and remove() calls, with and without download
shaping (IFB), next to a same-run baseline: one netlink round trip (get_links). The
classifier path is whatever loads here (bpf, or u32 if the object is missing).
Usage: .venv/bin/python bench/profile_switch.py [N]
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyroute2 import NetNS

from voipqos import config, probe
from voipqos.htb import HtbProfile
from voipqos.lab import netns
from voipqos.tc import Tc

PREFIX = "vqc-b"


def stats(xs: list[float]) -> str:
    xs = sorted(x * 1000 for x in xs)
    return f"median {statistics.median(xs):7.2f} ms  p90 {xs[int(len(xs) * 0.9) - 1]:7.2f} ms"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    pins = tempfile.mkdtemp(prefix="vqc-pins-")
    subprocess.run(["mount", "-t", "bpf", "bpf", pins], check=True)
    topo = netns.three_hosts(PREFIX)
    ns = NetNS(PREFIX + "router")
    try:
        feats = probe.probe(ns)
        base = []
        for _ in range(n):
            t0 = time.perf_counter()
            ns.get_links()
            base.append(time.perf_counter() - t0)
        print(f"machine: {platform.machine()} {os.cpu_count()} cpu, {platform.platform()}, "
              f"python {platform.python_version()}")
        print(f"baseline netlink get_links      {stats(base)}")
        for down in ("0", "50000"):
            cfg = config.from_options({"upload": "10000", "download": down})
            prof = HtbProfile(cfg, "wan0", pins, tc=Tc(ns), features=feats,
                              netns=PREFIX + "router")
            on, off = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                prof.apply()
                on.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                prof.remove()
                off.append(time.perf_counter() - t0)
            prof.apply()
            t0 = time.perf_counter()
            prof.apply()
            again = time.perf_counter() - t0
            kind = prof.classifier
            prof.remove()
            label = f"download {'on (IFB) ' if down != '0' else 'off      '}"
            print(f"{label} apply  [{kind:>4}] {stats(on)}")
            print(f"{label} remove        {stats(off)}")
            print(f"{label} re-apply (no-op) {again * 1000:.2f} ms")
    finally:
        ns.close()
        topo.close()
        subprocess.run(["umount", pins], check=False)
        Path(pins).rmdir()


if __name__ == "__main__":
    main()
