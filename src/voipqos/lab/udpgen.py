"""A paced UDP sender for tests: call-like media (50 pps, small packets), floods and bulk.

`--answer` makes it symmetric-RTP style: it waits for the first packet and sends back to
wherever that came from, so it works behind the router's NAT. Stops by itself after
`--duration` seconds; traffic only goes to the address it is given.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="udpgen")
    p.add_argument("--bind", default="0.0.0.0:0", help="local ADDR:PORT ([v6]:PORT)")
    p.add_argument("--to", help="peer ADDR:PORT to send to")
    p.add_argument("--answer", action="store_true", help="send to whoever sends first")
    p.add_argument("--pps", type=float, default=50)
    p.add_argument("--size", type=int, default=160, help="UDP payload bytes")
    p.add_argument("--duration", type=float, default=10)
    a = p.parse_args(argv)

    def split(hp: str) -> tuple[str, int]:
        host, _, port = hp.rpartition(":")
        return host.strip("[]"), int(port)

    host, port = split(a.bind)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, port))
    peer = split(a.to) if a.to else None
    end = time.monotonic() + a.duration
    if a.answer:
        s.settimeout(max(0.1, end - time.monotonic()))
        try:
            _, peer = s.recvfrom(65535)
        except TimeoutError:
            return 0
    if peer is None:
        p.error("--to or --answer is required")
    s.setblocking(False)
    payload = bytes(a.size)
    interval = 1.0 / a.pps
    n = 0
    start = time.monotonic()
    while (now := time.monotonic()) < end:
        due = start + n * interval
        if now >= due:
            with contextlib.suppress(OSError):  # full queue, unreachable peer: keep pacing
                s.sendto(payload, peer)
            n += 1
            continue
        with contextlib.suppress(OSError):
            while True:
                s.recv(65535)  # drain, so the socket buffer never fills
        time.sleep(min(due - now, 0.005))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
