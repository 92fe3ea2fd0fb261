#!/usr/bin/env python3
"""Cost of the tc-BPF classifier on this machine (root; uses namespace vqb-bench).

- ns/packet via BPF_PROG_TEST_RUN (repeat >= 1e6) for a matching and a non-matching
  frame, next to an empty tc program (r0 = TC_ACT_UNSPEC; exit) loaded in the same run.
  The test run reuses one skb for all repetitions, so a matching frame is rewritten to EF
  on the first pass only: the figure is lookup + skb->priority, not the rewrite.
- a flow-table update through the bpf() syscall (ctypes) vs a `bpftool map update`
  subprocess, and attach/detach (tc loading the object) times.

    .venv/bin/python bench/bpf_classifier.py [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from voipqos import bpf, bpf_syscall

NS = "vqb-bench"
ROOT = Path(__file__).resolve().parents[1]
BPF_PROG_TYPE_SCHED_CLS = 3


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return (f"{model}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
            f"Python {platform.python_version()}")


def load_empty_prog() -> int:
    """A 2-instruction tc program: the baseline cost of BPF_PROG_TEST_RUN itself."""
    insns = struct.pack("=BBhi", 0xB7, 0, 0, -1) + struct.pack("=BBhi", 0x95, 0, 0, 0)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("=IIQQIIQII", BPF_PROG_TYPE_SCHED_CLS, 2, ctypes.addressof(code),
                       ctypes.addressof(lic), 0, 0, 0, 0, 0)
    return bpf_syscall.bpf(bpf_syscall.PROG_LOAD, attr)[0]


def frame(sport: int, proto: int = 17, dport: int = 5004, rtp: bool = False) -> bytes:
    """A 202-byte UDP/IPv4 frame (an RTP packet with `rtp`) or a 1514-byte TCP/IPv4 one."""
    eth = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x08\x00"
    if proto == 17:
        payload = (struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + b"v" * 148 if rtp
                   else b"v" * 160)
        l4 = struct.pack("!HHHH", sport, dport, 8 + 160, 0) + payload
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x10, 1000, 0, 0) + b"t" * 1460
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                     bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2]))
    return eth + ip + l4


@contextlib.contextmanager
def bench_namespace(ns: str) -> Iterator[tuple[Path, list[int]]]:
    """Objects built from the source, namespace `ns` with a veth d0, a path for a
    private bpffs of pins, and a list for program fds: all closed or removed after."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf"), f"OUT={ROOT / 'build' / 'bpf'}"],
                   check=True)
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{ns}-"))
    fds: list[int] = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name",
                        "d1"], check=True)
        yield tmp / "bpffs", fds
    finally:
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.rmdir()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def ns_per_packet(fd: int, data: bytes, repeat: int) -> float:
    """Best of five runs of `repeat` repetitions (mean ns per repetition)."""
    return min(bpf_syscall.prog_test_run(fd, data, repeat).duration_ns for _ in range(5))


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    args = ap.parse_args()
    with bench_namespace(NS) as (pin, fds):
        c = bpf.Classifier(str(pin), netns=NS)
        try:
            t0 = time.perf_counter()
            c.attach("d0", "egress")
            attach_ms = (time.perf_counter() - t0) * 1e3
            fds += [bpf_syscall.prog_fd_by_id(c.prog_id("d0", "egress")), load_empty_prog()]
            prog, empty = fds
            c.set_rules(0x00010010, True, False, [])
            flows = [(17, "198.51.100.1", "198.51.100.2", 40000 + i, 5004) for i in range(8)]
            c.set_flows(flows)
            ranges = [(10000 + 100 * i, 10050 + 100 * i) for i in range(16)]

            print(f"machine: {machine()}")
            print(f"BPF_PROG_TEST_RUN, {args.repeat} repetitions, 202-byte UDP/IPv4 frames "
                  "unless said, "
                  f"best of 5 (ns/packet):")
            rows = [("empty tc program (baseline)", empty, frame(40000)),
                    ("classifier, TCP non-call (1514 B)", prog, frame(50000, 6, 443)),
                    ("classifier, UDP non-call", prog, frame(50000)),
                    ("classifier, call match, not RTP", prog, frame(40000)),
                    ("classifier, call match, RTP", prog, frame(40000, rtp=True))]
            for label, fd, data in rows:
                print(f"  {label:42s} {ns_per_packet(fd, data, args.repeat):7.1f}")
            c.set_rules(0x00010010, True, False, ranges)
            print(f"  {'classifier, UDP non-call, 16 port ranges':42s} "
                  f"{ns_per_packet(prog, frame(50000), args.repeat):7.1f}")
            print(f"  {'empty tc program again (baseline)':42s} "
                  f"{ns_per_packet(empty, frame(40000), args.repeat):7.1f}")

            fd = c._fd("voipqos_flows")
            keys = [c.maps.flow_key((17, "192.0.2.1", "192.0.2.2", i, 1)) for i in range(1000)]
            value = bytes(c.maps.size("voipqos_flows", "value"))
            per_ctypes = timed(lambda i: bpf_syscall.map_update(fd, keys[i % 1000], value), 20000)
            path = str(c.globals_dir / "voipqos_flows")

            def by_bpftool(i: int) -> None:
                subprocess.run(["bpftool", "map", "update", "pinned", path, "key", "hex",
                                *(f"{b:02x}" for b in keys[i]), "value", "hex",
                                *(f"{b:02x}" for b in value)],
                               check=True, capture_output=True)
            per_tool = timed(by_bpftool, 100)
            many = [(17, "192.0.2.1", "192.0.2.2", i, 2) for i in range(100)]
            c.set_flows([])
            per_set = timed(lambda i: c.set_flows(many if i % 2 == 0 else many[50:]), 200)
            print("flow table update (one key):")
            print(f"  bpf() via ctypes   {per_ctypes * 1e6:9.2f} us")
            print(f"  bpftool subprocess {per_tool * 1e6:9.2f} us")
            print("set_flows: 100-flow table, 50 added or removed per call: "
                  f"{per_set * 1e3:.2f} ms")
            t0 = time.perf_counter()
            c.detach("d0", "egress")
            detach_ms = (time.perf_counter() - t0) * 1e3
            print(f"attach (tc loads the object, clsact created): {attach_ms:.0f} ms; "
                  f"detach: {detach_ms:.0f} ms")
            ncpu = bpf_syscall.possible_cpus()
            mem = c.maps.memory(ncpu)
            print(f"map memory when full (key + value x entries, {ncpu} possible CPUs): "
                  + ", ".join(f"{k} {v / 1024:.1f} KiB" for k, v in mem.items())
                  + f"; total {sum(mem.values()) / 1024:.1f} KiB")
        finally:
            c.close()


if __name__ == "__main__":
    main()
