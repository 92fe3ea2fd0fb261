"""Parse the kernel's connection table (/proc/net/nf_conntrack text) into a Snapshot.

Pure over text: reading the file is `read_proc`, the only I/O here. Only UDP lines and
TCP lines on SIP ports are parsed; everything else is skipped with a cheap prefix test
so a 20k-entry table of mostly TCP costs little more than reading it. Malformed or
truncated lines are counted, never fatal.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

PROC_PATH = "/proc/net/nf_conntrack"
UDP, TCP = 17, 6  # IP protocol numbers, as the classifier's tuples and ctnetlink carry them
ACCT_SYSCTL = "/proc/sys/net/netfilter/nf_conntrack_acct"


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
    timeout: int  # seconds left; 0 when the kernel omits it (offloaded entries)
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
    lines: int = 0  # non-blank lines seen
    parsed: int = 0  # lines that became entries (a repeated key keeps the last one)
    malformed: int = 0
    skipped: int = 0  # well-formed lines of no interest (other protocols, non-SIP TCP)
    note: str = ""  # why the reader may miss something (a table too large to scan)

    @property
    def accounting(self) -> bool | None:
        """Whether entries carry counters (None when there are no entries to tell)."""
        for e in self.entries.values():
            return e.orig_packets is not None
        return None


class MalformedLine(ValueError):
    pass


@lru_cache(maxsize=8192)
def _addr(family: str, text: str) -> str:
    """Validated address; IPv6 compressed (the kernel prints it in full, %pI6) so it
    compares with `ip addr` and with what ctnetlink gives."""
    try:
        ip = ipaddress.IPv4Address(text) if family == "ipv4" else ipaddress.IPv6Address(text)
    except ValueError:
        raise MalformedLine(f"bad address {text!r}") from None
    return ip.compressed


_U16 = 1 << 16
# ct_seq_show() in net/netfilter/nf_conntrack_standalone.c, UDP and TCP only: family and
# proto padded (%-8s), timeout (absent while offloaded), TCP state, original tuple,
# [zone-orig=], [counters], [UNREPLIED], reply tuple, [zone-reply=], [counters],
# [ASSURED|OFFLOAD|HW_OFFLOAD], then key=value fields (mark=, secctx=, zone=,
# delta-time=; unknown ones tolerated) and use= always last: without it the line was
# cut short. Counters are absent when accounting was off at creation; labels are never
# printed here.
_LINE = re.compile(
    r"(ipv4 +2|ipv6 +10) +(udp +17|tcp +6) +(?:(\d+) +)?(?:([A-Z_]+) +)?"
    r"src=(\S+) dst=(\S+) sport=(\d{1,5}) dport=(\d{1,5}) (?:zone-orig=(\d+) )?"
    r"(?:packets=(\d+) bytes=(\d+) )?(\[UNREPLIED\] )?"
    r"src=(\S+) dst=(\S+) sport=(\d{1,5}) dport=(\d{1,5}) (?:zone-reply=(\d+) )?"
    r"(?:packets=(\d+) bytes=(\d+) )?((?:\[[A-Z_]+\] )*)"
    r"((?:(?!src=|dst=|sport=|dport=|packets=|bytes=)[a-z-]+=\S* )*)use=\d+\s*",
    re.ASCII,
)


def _num(text: str, limit: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) >= limit:
        raise MalformedLine(f"bad number {text!r}")
    return int(text)


@lru_cache(maxsize=64)
def _flags(unreplied: str | None, status: str) -> frozenset[str]:
    return frozenset(f[1:-1] for f in [*(unreplied or "").split(), *status.split()])


def parse_line(line: str) -> Entry:
    """Parse one UDP or TCP line; raise MalformedLine (with the cause) on anything odd."""
    m = _LINE.fullmatch(line)
    if m is None:
        words = line.split()
        if not words or not words[-1].startswith("use="):
            raise MalformedLine("truncated: no use= at the end")
        raise MalformedLine(f"not a udp/tcp line in the kernel's layout: {line[:40]!r}")
    (fam, proto, timeout, state, osrc, odst, osp, odp, ozone, opk, oby, unreplied,
     rsrc, rdst, rsp, rdp, rzone, rpk, rby, status, tail) = m.groups()
    family = "ipv4" if fam[3] == "4" else "ipv6"
    proto = proto[:3]
    if state and proto == "udp":
        raise MalformedLine(f"udp line with a state: {state}")
    ports = int(osp), int(odp), int(rsp), int(rdp)
    if max(ports) >= _U16:
        raise MalformedLine(f"port out of range: {ports}")
    fields = dict(t.partition("=")[::2] for t in tail.split())
    counted = opk is not None
    if counted != (rpk is not None):
        raise MalformedLine("counters on one direction only")
    return Entry(
        4 if family == "ipv4" else 6, proto,
        Tuple(_addr(family, osrc), _addr(family, odst), ports[0], ports[1]),
        Tuple(_addr(family, rsrc), _addr(family, rdst), ports[2], ports[3]),
        int(opk) if counted else None, int(oby) if counted else None,
        int(rpk) if counted else None, int(rby) if counted else None,
        int(timeout or 0), _flags(unreplied, status), state or "",
        _num(fields.get("mark", "0"), 1 << 32),
        _num(ozone or rzone or fields.get("zone", "0"), _U16),
    )


@lru_cache(maxsize=16)
def _sip_search(sip_ports: tuple[int, ...]):
    """`search` of a regex finding a SIP port in either tuple ("sport=5060 ", "dport=...")."""
    alts = "|".join(str(p) for p in sip_ports) or "(?!)"
    return re.compile(f"port=(?:{alts}) ").search


def parse(lines: Iterable[str], sip_ports: Iterable[int] = (5060, 5061),
          taken_at: float = 0.0) -> Snapshot:
    """Parse table text lines; UDP always, TCP only on SIP ports, the rest skipped.

    The skip test looks only at the line's head (and, for TCP, one regex search), so a
    table of mostly TCP costs little more than splitting it into lines.
    """
    sip = _sip_search(tuple(sorted(set(sip_ports))))
    snap = Snapshot(taken_at=taken_at)
    entries = snap.entries
    wanted: list[str] = []
    skipped = malformed = 0
    for line in lines:
        head = line[:24]
        if " udp " in head or (" tcp " in head and sip(line)):
            wanted.append(line)
        elif head.startswith(("ipv4 ", "ipv6 ")):
            skipped += 1
        elif line and not line.isspace():
            malformed += 1
    for line in wanted:
        try:
            e = parse_line(line)
        except MalformedLine:
            malformed += 1
            continue
        entries[e.key] = e
        snap.parsed += 1
    snap.skipped, snap.malformed = skipped, malformed
    snap.lines = snap.parsed + skipped + malformed
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
