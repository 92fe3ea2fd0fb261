#!/usr/bin/env python3
"""A minimal RTP endpoint for bench/call_quality_accuracy.py, run inside a lab namespace:
20 ms PCMU-like packets out, and every RTP packet in with its KERNEL receive timestamp
(SO_TIMESTAMPNS), so the reference loss and jitter do not depend on when this process
gets scheduled (baresip's do). Prints the received packets as JSON [[seq, ts, t], ...].

    rtp_endpoint.py call SRC SPORT DST DPORT PACKETS   # phone: opens the flow, sends, receives
    rtp_endpoint.py answer PORT PACKETS                # far end: answers whoever says hello
    rtp_endpoint.py tap DEV DPORT SECONDS              # AF_PACKET: the stream as it crosses DEV
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import sys
import threading
import time

SO_TIMESTAMPNS = 35      # not in the socket module
FLOWS_SET_S = 2.0        # the bench reads conntrack and sets the router's flows meanwhile
IDLE_END_S = 3.0         # a receiver stops after this long without a packet


def stream(s: socket.socket, dst: tuple[str, int], n: int, ssrc: int) -> None:
    """n packets on an absolute 20 ms schedule (seq, timestamp +160 at 8 kHz)."""
    t0 = time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, t0 + 0.02 * i - time.monotonic()))
        with contextlib.suppress(OSError):   # EPERM (nft drop), ENOBUFS (full qdisc): lost
            s.sendto(struct.pack("!BBHII", 0x80, 0, i, 160 * i, ssrc) + bytes(160), dst)


def timestamp(anc: list) -> float:
    sec, nsec = struct.unpack("=qq", anc[0][2][:16])
    return sec + nsec / 1e9


def receive_one(data: bytes, anc: list, rtp_at: int = 0) -> tuple[int, int, float] | None:
    if len(data) >= rtp_at + 12 and data[rtp_at] >> 6 == 2 and anc:
        seq, ts = struct.unpack_from("!HI", data, rtp_at + 2)
        return seq, ts, timestamp(anc)
    return None


def receive(s: socket.socket) -> list[tuple[int, int, float]]:
    """RTP packets with kernel receive times, until idle."""
    s.settimeout(IDLE_END_S)
    got = []
    try:
        while True:
            if pkt := receive_one(*s.recvmsg(2048, 1024)[:2]):
                got.append(pkt)
    except TimeoutError:
        pass
    return got


def udp_socket(addr: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind((addr, port))
    return s


def call(src: str, sport: str, dst: str, dport: str, n: str) -> list:
    s, peer = udp_socket(src, int(sport)), (dst, int(dport))
    for _ in range(3):   # not RTP: opens the conntrack entry (the far end answers the first)
        s.sendto(b"hello", peer)
        time.sleep(0.1)
    time.sleep(FLOWS_SET_S)
    threading.Thread(target=stream, args=(s, peer, int(n), 1111), daemon=True).start()
    return receive(s)


def answer(port: str, n: str) -> list:
    """Streams back to whoever sends first (a hello, or the first RTP packet when a
    queue dropped the hellos), from then on receiving as the phone does."""
    s = udp_socket("0.0.0.0", int(port))
    s.settimeout(30)
    data, anc, _, peer = s.recvmsg(2048, 1024)
    first = receive_one(data, anc)
    threading.Thread(target=lambda: (time.sleep(FLOWS_SET_S), stream(s, peer, int(n), 2222)),
                     daemon=True).start()
    return ([first] if first else []) + receive(s)


def tap(dev: str, dport: str, seconds: str) -> list:
    """IPv4/UDP packets to dport as they arrive on dev (a packet socket's timestamps are
    the kernel's too): the stream just past the router, before the next hop's queue."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind((dev, 0))
    end, got = time.monotonic() + float(seconds), []
    s.settimeout(1)
    while time.monotonic() < end:
        try:
            data, anc, _, _ = s.recvmsg(2048, 1024)
        except TimeoutError:
            continue
        ihl = (data[0] & 0x0F) * 4
        if (data[9] == 17 and len(data) >= ihl + 8
                and struct.unpack_from("!H", data, ihl + 2)[0] == int(dport)
                and (pkt := receive_one(data, anc, ihl + 8))):
            got.append(pkt)
    return got


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    print(json.dumps({"call": call, "answer": answer, "tap": tap}[mode](*rest)), flush=True)
