"""Parse the kernel's connection table (/proc/net/nf_conntrack text) into a Snapshot.

Pure over text: reading the file is `read_proc`, the only I/O here. Only UDP lines and
TCP lines on SIP ports are parsed; everything else is skipped with a cheap prefix test
so a 20k-entry table of mostly TCP costs little more than reading it. Malformed or
truncated lines are counted, never fatal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

PROC_PATH = "/proc/net/nf_conntrack"
ACCT_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_acct"
FLAGS = frozenset({"ASSURED", "UNREPLIED", "OFFLOAD", "HW_OFFLOAD", "SEEN_REPLY"})


@dataclass(frozen=True, slots=True)
class Tuple:
    """One direction of a flow as the kernel saw it."""

    src: str
    dst: str
    sport: int
    dport: int


# (proto, orig src, orig dst, orig sport, orig dport, zone): stable across polls
Key = tuple[str, str, str, int, int, int]


@dataclass(frozen=True, slots=True)
class Entry:
    """A conntrack entry; counters are None when accounting is off."""

    family: int
    proto: str
    orig: Tuple
    reply: Tuple
    orig_packets: int | None
    orig_bytes: int | None
    reply_packets: int | None
    reply_bytes: int | None
    timeout: int
    flags: frozenset[str] = frozenset()
    state: str = ""
    mark: int = 0
    zone: int = 0

    @property
    def key(self) -> Key:
        o = self.orig
        return (self.proto, o.src, o.dst, o.sport, o.dport, self.zone)

    @property
    def offloaded(self) -> bool:
        return "OFFLOAD" in self.flags or "HW_OFFLOAD" in self.flags


@dataclass(slots=True)
class Snapshot:
    """The parsed table at one moment; `taken_at` is a monotonic time in seconds."""

    entries: dict[Key, Entry] = field(default_factory=dict)
    taken_at: float = 0.0
    lines: int = 0
    malformed: int = 0
    skipped: int = 0  # well-formed lines of no interest (other protocols, non-SIP TCP)

    @property
    def accounting(self) -> bool | None:
        """Whether entries carry counters (None when there are no entries to tell)."""
        for e in self.entries.values():
            return e.orig_packets is not None
        return None


class MalformedLine(ValueError):
    pass


@lru_cache(maxsize=4096)
def _v6(addr: str) -> str:
    # the kernel prints IPv6 in full (%pI6); compress so addresses compare with `ip addr`
    return ipaddress.IPv6Address(addr).compressed


def _tuple(kv: dict[str, str], family: int) -> Tuple:
    src, dst = kv["src"], kv["dst"]
    if family == 6:
        src, dst = _v6(src), _v6(dst)
    return Tuple(src, dst, int(kv["sport"]), int(kv["dport"]))


def parse_line(line: str) -> Entry:
    """Parse one UDP or TCP line; raise MalformedLine (with the cause) on anything odd."""
    tok = line.split()
    try:
        fam_name, proto, timeout = tok[0], tok[2], int(tok[4])
    except (IndexError, ValueError):
        raise MalformedLine("short header") from None
    if fam_name not in ("ipv4", "ipv6") or proto not in ("udp", "tcp"):
        raise MalformedLine(f"not a udp/tcp line: {fam_name} {proto}")
    family = 4 if fam_name == "ipv4" else 6
    state = ""
    i = 5
    if proto == "tcp" and i < len(tok) and "=" not in tok[i]:
        state = tok[i]
        i += 1
    dirs: list[dict[str, str]] = [{}, {}]
    d = -1
    flags: set[str] = set()
    extra: dict[str, str] = {}
    for t in tok[i:]:
        if t[0] == "[":
            flags.add(t.strip("[]"))
            continue
        k, sep, v = t.partition("=")
        if not sep:
            raise MalformedLine(f"unexpected token {t!r}")
        if k == "src":
            d += 1
            if d > 1:
                raise MalformedLine("more than two tuples")
        if k in ("src", "dst", "sport", "dport", "packets", "bytes") and d >= 0:
            dirs[d][k] = v
        else:
            extra[k] = v
    if d != 1:
        raise MalformedLine("missing reply tuple")
    try:
        orig, reply = _tuple(dirs[0], family), _tuple(dirs[1], family)
        counters = [
            int(dirs[j][k]) if k in dirs[j] else None
            for j in (0, 1)
            for k in ("packets", "bytes")
        ]
        mark = int(extra.get("mark", "0"))
        zone = int(extra.get("zone", "0"))
    except (KeyError, ValueError) as exc:
        raise MalformedLine(f"bad tuple field {exc}") from None
    return Entry(family, proto, orig, reply, *counters, timeout, frozenset(flags), state,
                 mark, zone)


def parse(lines: Iterable[str], sip_ports: Iterable[int] = (5060, 5061),
          taken_at: float = 0.0) -> Snapshot:
    """Parse table text lines; UDP always, TCP only on SIP ports, the rest skipped."""
    sip_needles = tuple(f"port={p} " for p in sip_ports)
    snap = Snapshot(taken_at=taken_at)
    entries = snap.entries
    for line in lines:
        if not line or line.isspace():
            continue
        snap.lines += 1
        head = line[:24]
        if " udp " not in head:
            if " tcp " not in head or not any(n in line for n in sip_needles):
                if line.startswith(("ipv4 ", "ipv6 ")):
                    snap.skipped += 1
                else:
                    snap.malformed += 1
                continue
        try:
            e = parse_line(line)
        except MalformedLine:
            snap.malformed += 1
            continue
        entries[e.key] = e
    return snap


def read_proc(path: str = PROC_PATH, sip_ports: Iterable[int] = (5060, 5061),
              taken_at: float = 0.0) -> Snapshot:
    """Read and parse the table in one read (the file is a seq_file: read it whole)."""
    with open(path, encoding="ascii", errors="replace") as f:
        text = f.read()
    return parse(text.splitlines(), sip_ports, taken_at)


def read_accounting(path: str = ACCT_SYSCTL) -> bool | None:
    """nf_conntrack_acct as a bool, None when the sysctl is absent (module not loaded)."""
    try:
        with open(path) as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def enable_accounting(path: str = ACCT_SYSCTL) -> None:
    """Turn counters on; the kernel only gives them to flows created afterwards."""
    with open(path, "w") as f:
        f.write("1\n")
