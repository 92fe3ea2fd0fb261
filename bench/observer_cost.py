#!/usr/bin/env python3
"""Cost of the observer (header evidence, bpf/voipqos.c voipqos_obs_*) on this machine
(root; uses namespace vqo-bench).

- ns/packet via BPF_PROG_TEST_RUN for TCP, UDP that is neither RTP nor STUN (QUIC-like),
  RTP of a flow already in the map, next to an empty tc program (r0 = TC_ACT_UNSPEC;
  exit) in the same run; best of five runs of --repeat repetitions.
- the first packet of a new flow (map insert) cannot repeat (the second repetition finds
  the entry), so it is timed one run of one repetition each, with a new port every time,
  next to one-repetition runs of the existing-entry packet and of the empty program
  (medians: a single run's figure includes the kernel's timer reads); once with the map
  nearly empty and once full (every insert evicts the least recently used entry).
- the map's memory: key + value x entries, and the kernel's own figure (fdinfo memlock).
- the daemon's `Observer.read()` of the whole map with 10 entries and with it full.

    .venv/bin/python bench/observer_cost.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from pathlib import Path

from bpf_classifier import bench_namespace, frame, load_empty_prog, machine, ns_per_packet

from voipqos import bpf_syscall
from voipqos.classifier_maps import SEEN
from voipqos.observer import Observer

NS = "vqo-bench"


def udp(sport: int, payload: bytes) -> bytes:
    """A 202-byte UDP/IPv4 frame with this payload start (bpf_classifier.frame's shape)."""
    base = frame(sport)
    return base[:42] + payload + base[42 + len(payload):]


RTP = struct.pack("!BBHII", 0x80, 111, 1, 160, 0x1234)
QUIC = b"\x43" + bytes(11)  # a short-header QUIC packet: first bits 01


def single_runs(fd: int, frames: list[bytes]) -> float:
    """Median ns of one-repetition runs, one per frame."""
    return statistics.median(bpf_syscall.prog_test_run(fd, f, 1).duration_ns for f in frames)


def memlock(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def read_ms(o: Observer, n: int = 50) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        o.read()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--singles", type=int, default=3000)
    args = ap.parse_args()
    with bench_namespace(NS) as (pin, fds):
        o = Observer(str(pin), netns=NS)
        try:
            o.attach("d0", "egress")
            fds += [bpf_syscall.prog_fd_by_id(o.prog_id("d0", "egress")), load_empty_prog()]
            prog, empty = fds
            seen = o._fd(SEEN)
            size = o.maps.defs[SEEN].max_entries
            bpf_syscall.prog_test_run(prog, udp(40000, RTP))  # the RTP flow's entry

            print(f"machine: {machine()}")
            print(f"BPF_PROG_TEST_RUN, {args.repeat} repetitions, 202-byte UDP/IPv4 frames "
                  "unless said, best of 5 (ns/packet):")
            rows = [("empty tc program (baseline)", empty, frame(40000)),
                    ("observer, TCP (1514 B)", prog, frame(50000, 6, 443)),
                    ("observer, UDP QUIC-like (no entry)", prog, udp(50000, QUIC)),
                    ("observer, UDP RTP, flow in the map", prog, udp(40000, RTP)),
                    ("empty tc program again (baseline)", empty, frame(40000))]
            for label, fd, data in rows:
                print(f"  {label:42s} {ns_per_packet(fd, data, args.repeat):7.1f}")

            n = args.singles
            print(f"one repetition per run, median of {n} runs (ns/packet, timer reads included):")
            print(f"  {'empty tc program (baseline)':42s} "
                  f"{single_runs(empty, [frame(40000)] * n):7.1f}")
            print(f"  {'observer, UDP RTP, flow in the map':42s} "
                  f"{single_runs(prog, [udp(40000, RTP)] * n):7.1f}")
            print(f"  {'observer, UDP RTP, new flow, map empty':42s} "
                  f"{single_runs(prog, [udp(1024 + i, RTP) for i in range(n)]):7.1f}")
            for i in range(size):  # fill it: every further new flow evicts one
                bpf_syscall.prog_test_run(prog, udp(10000 + i, RTP))
            print(f"  {'observer, UDP RTP, new flow, map full':42s} "
                  f"{single_runs(prog, [udp(20000 + i, RTP) for i in range(n)]):7.1f}")

            key, value = o.maps.size(SEEN, "key"), o.maps.size(SEEN, "value")
            print(f"map {SEEN}: LRU hash, {size} entries of key {key} + value {value} B = "
                  f"{size * (key + value) / 1024:.0f} KiB; kernel memlock (fdinfo) "
                  f"{memlock(seen) / 1024:.0f} KiB, allocated when the map is created")

            full = len(o.read())
            full_ms = read_ms(o)
            for k in list(o.read())[10:]:
                bpf_syscall.map_delete(seen, o.maps.seen_key(k))
            print(f"Observer.read() (one batch lookup + unpack), best of 50: "
                  f"{len(o.read())} entries {read_ms(o):.3f} ms; {full} entries (full) "
                  f"{full_ms:.3f} ms")
        finally:
            o.close()


if __name__ == "__main__":
    main()
