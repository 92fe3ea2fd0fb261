"""The observer program against its specification on real captures of real apps: every
UDP packet of each corpus capture (tests/data/captures/corpus.json) to or from the
capture's LAN host goes through the real program (BPF_PROG_TEST_RUN: leaving = egress,
arriving = ingress) and through header_evidence.FlowHeaders; the kernel's map must hold
exactly the model's counters for every flow that took an entry.

Not collected by pytest (CI has no copies of the captures, which are not committed):
run as root with the captures' source repositories mirrored under /work/.mirror
(the `fetch` tool; the corpus names repository, commit and path):

    .venv/bin/python -m tests.check_observer_captures [NAME ...]
"""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.test_bpf_prog import on_test_devices

from voipqos import bpf_syscall
from voipqos.classifier_maps import SEEN
from voipqos.header_evidence import IN, OUT, FlowHeaders, HeaderKey, worth_tracking
from voipqos.lab.replay_pcap import _ip, _link_offset, _records
from voipqos.observer import Observer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests/data/captures/corpus.json"
MIRROR = Path("/work/.mirror")


def capture_bytes(source: dict) -> bytes | None:
    repo = MIRROR / source["repo"].replace("/", "+") / "repo"
    res = subprocess.run(["git", "--git-dir", str(repo), "show",
                          f"{source['commit']}:{source['path']}"], capture_output=True)
    return res.stdout if res.returncode == 0 else None


def packets(raw: bytes, lan: str):
    """(direction, key, IP packet, UDP payload) of each UDP datagram of the LAN host."""
    for linktype, _, frame in _records(raw):
        off = _link_offset(linktype, frame)
        d = _ip(frame, off) if off is not None else None
        if d is None or lan not in (d.src, d.dst):
            continue
        ip = frame[off:off + d.ip_len]
        l4 = (ip[0] & 15) * 4 if d.version == 4 else 40
        ulen = struct.unpack_from("!H", ip, l4 + 4)[0] if len(ip) >= l4 + 8 else 0
        payload = ip[l4 + 8:l4 + max(ulen, 8)]
        src, dst = (ipaddress.ip_address(a).compressed for a in (d.src, d.dst))
        if src == ipaddress.ip_address(lan).compressed:
            yield OUT, (dst, d.dport, d.sport), ip, payload
        else:
            yield IN, (src, d.sport, d.dport), ip, payload


def check(o: Observer, fd: int, raw: bytes, lan: str) -> tuple[bool, str]:
    seen = o._fd(SEEN)
    for key in list(bpf_syscall.map_keys(seen, o.maps.size(SEEN, "key"))):
        bpf_syscall.map_delete(seen, key)
    model: dict[HeaderKey, FlowHeaders] = {}
    tracked: set[HeaderKey] = set()
    n = 0
    for direction, key, ip, payload in packets(raw, lan):
        ethertype = 0x0800 if ip[0] >> 4 == 4 else 0x86DD
        frame = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02" + struct.pack("!H", ethertype) + ip
        bpf_syscall.prog_test_run(fd, frame, ingress=direction == IN)
        if key in tracked or worth_tracking(payload, key[1:]):
            tracked.add(key)
            model.setdefault(key, FlowHeaders()).packet(direction, payload)
        n += 1
    want = {k: f.counts() for k, f in model.items()}
    got = o.read()
    size = o.maps.defs[SEEN].max_entries
    ok = got == want
    totals = [sum(getattr(c, f) for c in want.values())
              for f in ("rtp_out", "rtp_in", "stun_out", "stun_in")]
    detail = (f"{n} packets, {len(want)} flows with an entry (map {size}), rtp out/in "
              f"{totals[0]}/{totals[1]}, stun out/in {totals[2]}/{totals[3]}")
    if not ok:
        bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        detail += f"; {len(bad)} flows differ, e.g. {bad[0]}: {got.get(bad[0])} vs " \
                  f"{want.get(bad[0])}"
    return ok, detail


def main(names: list[str]) -> int:
    caps = json.loads(CORPUS.read_text())["captures"]
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf"), f"OUT={ROOT / 'build/bpf'}"],
                   check=True)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="vqo-caps-") as tmp, on_test_devices(
            Observer(f"{tmp}/bpffs", ROOT / "build/bpf/voipqos-bpfel.o",
                     netns="vqo-caps")) as (o, fd, _):
        for cap in caps:
            if names and cap["name"] not in names:
                continue
            raw = capture_bytes(cap["source"])
            if raw is None:
                print(f"SKIP {cap['name']}: {cap['source']['repo']} not mirrored")
                continue
            ok, detail = check(o, fd, raw, cap["lan"])
            failed += not ok
            print(f"{'SAME' if ok else 'DIFF'} {cap['name']:26s} {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
