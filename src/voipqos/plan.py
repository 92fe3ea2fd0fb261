"""The HTB profile as plain data: what voipqos wants in the kernel, and the steps to get there.

Pure (no I/O): `build()` turns a Config, a device name and the kernel's features into a
`Plan` of IFBs, qdiscs, classes and u32 filter groups; `diff()` compares it with what the
adapter (`tc.py`) observed and yields ordered add/change/delete steps, so a rate change is
a `change` of the same handles and a second apply is empty.

Everything voipqos creates is recognisable without saved state: the HTB roots use major
0x5651 ("VQ"), the IFB is named `vqi-<dev>`, the ingress redirect sits at filter prio
REDIRECT_PRIO, and the u32 fallback filters hang off voipqos's own HTB roots.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .alerts import Alert
from .config import Config
from .conntrack import TCP, UDP
from .detect import FiveTuple
from .profile import ProfileError

MAJOR = 0x5651  # "VQ": the HTB root handle on the WAN device and on the IFB
LEAF_VOICE_MAJOR, LEAF_DEFAULT_MAJOR = 0x5652, 0x5653
ROOT, PARENT, VOICE, DEFAULT = 0, 0x1, 0x10, 0x20  # minors
TC_H_ROOT = 0xFFFFFFFF
CLSACT_HANDLE = 0xFFFF0000
TC_H_CLSACT = 0xFFFFFFF1  # parent of clsact/ingress qdiscs
TC_H_INGRESS = 0xFFFFFFF2  # clsact ingress hook (filter parent)
TC_H_EGRESS = 0xFFFFFFF3
REDIRECT_PRIO = 0x5651  # after the BPF classifier (pref 1), so its marks happen first
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
IFB_PREFIX = "vqi-"
IFNAMSIZ = 15
MIN_CLASS_KBIT = 8
# The pfifo fallback leaf (no fq_codel) holds about 50 ms at the class's ceiling: deep
# enough for TCP to keep the shaper busy, shallow enough that bulk TCP meets a drop before
# it refills the modem's buffer (1000 packets, the pfifo default, kept download p99 at the
# modem's 500 ms in the lab). 16 packets at least, for slow lines.
LEAF_QUEUE_S = 0.05
# The download (IFB) default leaf is shorter: download shaping sits after the bottleneck,
# and the sender's window, which this leaf bounds, lands in the modem's buffer whenever
# it bursts. bench/download_latency.py (18 Mbit/s, pure ACKs prioritised): 16 packets
# (~11 ms) p99 added 2.9 ms quiet / 5-7 ms on a busy CPU, 74 packets 3.4 / 16-19 ms,
# goodput 93-94 % for both (docs/perf.md). Cubic keeps the line busy with ~0.4 x rate x
# RTT of queue, so ~11 ms suits WAN round trips up to ~25 ms.
DOWN_LEAF_QUEUE_S = 0.011
MIN_PFIFO_LIMIT = 16
MTU_BYTES = 1514


def pfifo_limit(rate_kbit: int, queue_s: float = LEAF_QUEUE_S) -> int:
    return max(MIN_PFIFO_LIMIT, round(rate_kbit * 1000 * queue_s / 8 / MTU_BYTES))

# filter prio bands of the u32 fallback; the low 12 bits hash the group's content
BAND_STATIC4, BAND_STATIC6, BAND_FLOWS4, BAND_FLOWS6 = 0x1000, 0x2000, 0x3000, 0x4000
BAND_ACK4, BAND_ACK6 = 0x5000, 0x6000


def handle(minor: int, major: int = MAJOR) -> int:
    return (major << 16) | minor


VOICE_CLASSID = handle(VOICE)  # what the classifier puts in skb->priority


@dataclass(frozen=True)
class Features:
    """What the running kernel and tools can do (filled by probe.py, consumed here)."""

    htb: bool = True
    fq_codel: bool = True
    cake: bool = True
    ifb: bool = True
    clsact: bool = True
    u32: bool = True
    mirred: bool = True
    cls_bpf: bool = True
    bpffs: bool = True
    tc_bpf: bool = True
    conntrack_acct: bool = True


@dataclass(frozen=True)
class Ifb:
    name: str

    @property
    def key(self) -> tuple:
        return ("ifb", self.name)


@dataclass(frozen=True)
class Qdisc:
    dev: str
    parent: int
    handle: int
    kind: str
    opts: tuple[tuple[str, int], ...] = ()  # htb: default; pfifo: limit

    @property
    def key(self) -> tuple:
        return ("qdisc", self.dev, self.parent)


@dataclass(frozen=True)
class Class:
    dev: str
    handle: int
    parent: int
    rate: int  # kbit/s
    ceil: int  # kbit/s
    prio: int

    @property
    def key(self) -> tuple:
        return ("class", self.dev, self.handle)


@dataclass(frozen=True)
class Match:
    """One u32 key: the 32-bit word at `offset` from the network header, masked."""

    value: int
    mask: int
    offset: int


@dataclass(frozen=True)
class FilterGroup:
    """u32 filters sharing one (parent, prio, protocol): the kernel's unit of deletion.

    Its identity is its key; the fallback groups fold a hash of their rules into `prio`,
    so new content is a new group (added before the old one goes) and nothing has to be
    read back from the kernel's u32 selectors (which pyroute2 versions decode differently).
    """

    dev: str
    parent: int
    prio: int
    protocol: int
    rules: tuple[tuple[Match, ...], ...] = ()
    flowid: int = 0  # classify into this class, or
    redirect: str = ""  # mirred-redirect to this device

    @property
    def key(self) -> tuple:
        return ("filter", self.dev, self.parent, self.prio, self.protocol)


Obj = Ifb | Qdisc | Class | FilterGroup


@dataclass(frozen=True)
class Plan:
    """Desired (from build) or observed (from tc.observe) voipqos objects, in creation order.

    `protected` holds keys of observed objects that also carry someone else's work (a
    clsact with a foreign filter): never deleted.
    """

    objects: tuple[Obj, ...] = ()
    alerts: tuple[Alert, ...] = ()
    protected: frozenset[tuple] = field(default_factory=frozenset)

    def of(self, kind: type) -> list:
        return [o for o in self.objects if isinstance(o, kind)]


@dataclass(frozen=True)
class Step:
    op: Literal["add", "change", "delete"]
    obj: Obj
    old: Obj | None = None  # for change: what to restore on rollback


def ifb_name(dev: str) -> str:
    """`vqi-<dev>`, kept within IFNAMSIZ; long names get a hash suffix so two stay distinct."""
    name = IFB_PREFIX + dev
    if len(name) <= IFNAMSIZ:
        return name
    return f"{IFB_PREFIX}{dev[:6]}-{_fnv(dev.encode()) & 0xFFFF:04x}"


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Split the 16-bit range lo..hi into aligned (value, mask) blocks that cover it exactly."""
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"bad port range {lo}-{hi}")
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 0x10000
        while size > hi - lo + 1:
            size //= 2
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


def _fnv(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def _band_prio(band: int, rules: Sequence[tuple[Match, ...]]) -> int:
    words = b"".join(
        m.value.to_bytes(4, "big") + m.mask.to_bytes(4, "big") + m.offset.to_bytes(2, "big")
        + b";" for rule in rules for m in rule)
    return band | (_fnv(words) & 0xFFF)


# u32 offsets from the network header (no IPv4 options / IPv6 extension headers assumed:
# the fallback is best effort, the BPF classifier parses properly)
def _proto4(proto: int) -> Match:
    return Match(proto << 16, 0x00FF0000, 8)


def _proto6(proto: int) -> Match:
    return Match(proto << 8, 0x0000FF00, 4)


EF4 = Match(46 << 18, 0x3F << 18, 0)  # DSCP bits of the TOS byte
EF6 = Match(46 << 22, 0x3F << 22, 0)  # DSCP bits of the traffic class


def static_rules(voice_ports: Iterable[tuple[int, int]], trust_ef: bool,
                 v6: bool) -> tuple[tuple[Match, ...], ...]:
    """u32 rules for the configured voice port ranges (either port) and trusted EF."""
    proto, ports = (_proto6(UDP), 40) if v6 else (_proto4(UDP), 20)
    rules: list[tuple[Match, ...]] = []
    for lo, hi in voice_ports:
        for value, mask in port_blocks(lo, hi):
            rules.append((proto, Match(value << 16, mask << 16, ports)))
            rules.append((proto, Match(value, mask, ports)))
    if trust_ef:
        rules.append((EF6 if v6 else EF4,))
    return tuple(dict.fromkeys(rules))


# Pure TCP ACKs (ACK flag only, IPv4 total / IPv6 payload length under 128: timestamps
# and SACK blocks fit, data segments do not) go to the voice class with the pfifo
# fallback: behind bulk upload in one FIFO they leave in bunches and the download's
# sender answers each bunch with a burst into the modem's buffer (and its window grows
# with the longer round trip). fq_codel leaves keep such sparse flows ahead by themselves.
# pyroute2 mangles a u32 key whose mask has a gap: one key per field.
ACK4 = ((_proto4(TCP), Match(0x05000000, 0x0F000000, 0), Match(0, 0xFF80, 0),
         Match(0x10 << 16, 0xFF << 16, 32)),)
ACK6 = ((_proto6(TCP), Match(0, 0xFF800000, 4), Match(0x10 << 16, 0xFF << 16, 52)),)


def flow_rules(flows: Iterable[FiveTuple], v6: bool) -> tuple[tuple[Match, ...], ...]:
    """Exact u32 matches for call 5-tuples of one address family."""
    rules = []
    for proto, src, dst, sport, dport in sorted(set(flows)):
        a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if (a.version == 6) != v6 or a.version != b.version:
            continue
        if v6:
            keys = [_proto6(proto)]
            for base, addr in ((8, a), (24, b)):
                raw = addr.packed
                keys += [Match(int.from_bytes(raw[i:i + 4], "big"), 0xFFFFFFFF, base + i)
                         for i in range(0, 16, 4)]
            keys.append(Match((sport << 16) | dport, 0xFFFFFFFF, 40))
        else:
            keys = [_proto4(proto), Match(int(a), 0xFFFFFFFF, 12), Match(int(b), 0xFFFFFFFF, 16),
                    Match((sport << 16) | dport, 0xFFFFFFFF, 20)]
        rules.append(tuple(keys))
    return tuple(rules)


def _groups(dev: str, cfg: Config, flows: Collection[FiveTuple]) -> list[FilterGroup]:
    out = []
    for band, proto, rules in (
        (BAND_STATIC4, ETH_P_IP, static_rules(cfg.voice_ports, cfg.trust_ef, False)),
        (BAND_STATIC6, ETH_P_IPV6, static_rules(cfg.voice_ports, cfg.trust_ef, True)),
        (BAND_FLOWS4, ETH_P_IP, flow_rules(flows, False)),
        (BAND_FLOWS6, ETH_P_IPV6, flow_rules(flows, True)),
    ):
        if rules:
            out.append(FilterGroup(dev, handle(ROOT), _band_prio(band, rules), proto, rules,
                                   flowid=VOICE_CLASSID))
    return out


def _tree(dev: str, rate: int, voice: int, leaf: str, queue_s: float = LEAF_QUEUE_S
          ) -> list[Obj]:
    """HTB root → parent class at `rate` → voice (prio 0) and default (prio 1) leaves;
    with pfifo leaves, pure ACKs in the voice class too."""
    voice = min(voice, rate)
    voice_opts = (("limit", pfifo_limit(rate)),) if leaf == "pfifo" else ()
    default_opts = (("limit", pfifo_limit(rate, queue_s)),) if leaf == "pfifo" else ()
    acks = [FilterGroup(dev, handle(ROOT), _band_prio(band, rules), proto, rules,
                        flowid=VOICE_CLASSID)
            for band, proto, rules in ((BAND_ACK4, ETH_P_IP, ACK4),
                                       (BAND_ACK6, ETH_P_IPV6, ACK6))] if leaf == "pfifo" else []
    return [
        Qdisc(dev, TC_H_ROOT, handle(ROOT), "htb", (("default", DEFAULT),)),
        Class(dev, handle(PARENT), handle(ROOT), rate, rate, 0),
        Class(dev, handle(VOICE), handle(PARENT), voice, rate, 0),
        Class(dev, handle(DEFAULT), handle(PARENT), max(rate - voice, min(MIN_CLASS_KBIT, rate)),
              rate, 1),
        Qdisc(dev, handle(VOICE), handle(0, LEAF_VOICE_MAJOR), leaf, voice_opts),
        Qdisc(dev, handle(DEFAULT), handle(0, LEAF_DEFAULT_MAJOR), leaf, default_opts),
        *acks,
    ]


def build(cfg: Config, dev: str, features: Features, classifier: str = "bpf",
          flows: Collection[FiveTuple] = ()) -> Plan:
    """The desired objects; `classifier` "u32" adds the fallback filters for `flows`.

    Raises ProfileError (one line) when the kernel lacks something the plan cannot do
    without; missing niceties (fq_codel) become alerts.
    """
    missing = [name for name, have, needed in (
        ("htb (kmod-sched-core)", features.htb, True),
        ("ifb (kmod-ifb)", features.ifb, cfg.download > 0),
        ("clsact (kmod-sched-core)", features.clsact, cfg.download > 0),
        ("mirred (kmod-sched-core)", features.mirred, cfg.download > 0),
        ("u32 (kmod-sched-core)", features.u32, cfg.download > 0 or classifier == "u32"),
    ) if needed and not have]
    if missing:
        raise ProfileError(f"kernel lacks {', '.join(missing)}: cannot build the HTB profile")
    if cfg.upload <= 0:
        raise ProfileError("upload: must be above 0 kbit/s for the HTB profile")
    alerts = []
    leaf = "fq_codel" if features.fq_codel else "pfifo"
    if leaf == "pfifo":
        alerts.append(Alert("leaf_fallback", "fq_codel is missing: the classes use pfifo, "
                            "so bulk traffic queues longer behind itself",
                            "use a kernel with fq_codel (CONFIG_NET_SCH_FQ_CODEL)"))
    objs: list[Obj] = _tree(dev, cfg.upload, cfg.voice_rate, leaf)
    if classifier == "u32":
        objs += _groups(dev, cfg, flows)
    if cfg.download > 0:
        ifb = ifb_name(dev)
        objs += [Ifb(ifb), *_tree(ifb, cfg.download, cfg.voice_rate, leaf, DOWN_LEAF_QUEUE_S)]
        if classifier == "u32":
            objs += _groups(ifb, cfg, flows)
        objs += [Qdisc(dev, TC_H_CLSACT, CLSACT_HANDLE, "clsact"),
                 FilterGroup(dev, TC_H_INGRESS, REDIRECT_PRIO, ETH_P_ALL, ((),), redirect=ifb)]
    return Plan(tuple(objs), tuple(alerts))


def _same(a: Obj, b: Obj) -> bool:
    # filter groups are identified by key alone (their content is folded into prio)
    return isinstance(a, FilterGroup) or a == b


def _depth(obj: Obj, parents: dict[tuple[str, int], int]) -> int:
    if not isinstance(obj, Class):
        return 0
    depth, up = 0, obj.parent
    while (obj.dev, up) in parents and depth < 16:
        depth, up = depth + 1, parents[(obj.dev, up)]
    return depth


def diff(desired: Plan, observed: Plan) -> list[Step]:
    """Ordered steps turning `observed` into `desired`: adds and changes in creation order,
    then deletes (filters, leaves, classes deepest first, roots, IFBs); objects that go
    with a deleted root qdisc or IFB are not deleted one by one."""
    have = {o.key: o for o in observed.objects}
    want = {o.key for o in desired.objects}
    steps: list[Step] = []
    for obj in desired.objects:
        old = have.get(obj.key)
        if old is None:
            steps.append(Step("add", obj))
        elif not _same(obj, old):
            steps.append(Step("change", obj, old))
    gone = [o for o in observed.objects
            if o.key not in want and o.key not in observed.protected]
    dead_ifbs = {o.name for o in gone if isinstance(o, Ifb)}
    dead_roots = {o.dev for o in gone if isinstance(o, Qdisc) and o.parent == TC_H_ROOT}

    def implied(o: Obj) -> bool:
        if isinstance(o, Ifb):
            return False
        if o.dev in dead_ifbs:
            return True
        under_root = o.parent not in (TC_H_ROOT, TC_H_CLSACT, TC_H_INGRESS, TC_H_EGRESS)
        return o.dev in dead_roots and under_root

    parents = {(c.dev, c.handle): c.parent for c in observed.of(Class)}

    def order(o: Obj) -> tuple[int, int]:
        if isinstance(o, FilterGroup):
            return (0, 0)
        if isinstance(o, Qdisc) and o.parent not in (TC_H_ROOT, TC_H_CLSACT):
            return (1, 0)
        if isinstance(o, Class):
            return (2, -_depth(o, parents))
        return (4, 0) if isinstance(o, Ifb) else (3, 0)

    steps += [Step("delete", o) for o in sorted((o for o in gone if not implied(o)), key=order)]
    return steps
