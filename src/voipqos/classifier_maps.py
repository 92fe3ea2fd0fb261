"""The classifier's maps: their names, and keys and values packed with the layouts that
bpf/voipqos.h declares, as read from the object's BTF (btf.py), not mirrored by hand.

Pure (no syscalls): the argument checks that name the bad field live here, so a bad
config is refused before anything touches the kernel.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from .btf import Btf, BtfError, Layout, MapDef
from .header_evidence import HeaderCounts, HeaderKey

FLOWS, CONFIG, PORTS, STATS = "voipqos_flows", "voipqos_config", "voipqos_ports", "voipqos_stats"
SEEN = "voipqos_seen"   # the observer's (observer.py)
MAP_NAMES = (FLOWS, CONFIG, PORTS, STATS)   # the classifier's
OBJECT_MAPS = (*MAP_NAMES, SEEN)
PERCPU_TYPES = {5, 6, 10}   # BPF_MAP_TYPE_PERCPU_HASH, _PERCPU_ARRAY, _LRU_PERCPU_HASH
FiveTuple = tuple[int, str, str, int, int]   # (ipproto, src, dst, sport, dport)


class LayoutError(ValueError):
    """A flow or rule that does not fit the maps; the message names the field."""


def _v6(addr: str) -> bytes:
    a = ipaddress.ip_address(addr)
    return (b"\0" * 10 + b"\xff\xff" + a.packed) if a.version == 4 else a.packed


@functools.lru_cache(maxsize=4096)
def _addr_text(raw: bytes) -> str:
    """A 16-byte key address as conntrack.py writes it (IPv4-mapped as IPv4)."""
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped or a)


class ClassifierMaps:
    """The layouts of one classifier object's maps."""

    def __init__(self, btf: Btf) -> None:
        maps = btf.maps()
        missing = [name for name in OBJECT_MAPS if name not in maps]
        if missing:
            raise BtfError(f"maps {', '.join(missing)} not in the object")
        self.defs: dict[str, MapDef] = {name: maps[name] for name in OBJECT_MAPS}
        self.flow_key_layout = self._struct(FLOWS, "key")
        self.config_layout = self._struct(CONFIG, "value")
        self.flow_state_layout = self._struct(FLOWS, "value")
        self.ports_layout = self._struct(PORTS, "value")
        self.stats_layout = self._struct(STATS, "value")
        self.seen_key_layout = self._struct(SEEN, "key")
        self.seen_layout = self._struct(SEEN, "value")
        self._seen_key, self._seen_counts = self._seen_structs()

    def _seen_structs(self) -> tuple[struct.Struct, struct.Struct]:
        """Fixed-offset readers of a voipqos_seen key (address, far port, near port) and
        of its value's counters (rtp out, in; stun out, in): the daemon reads the whole
        map every poll, which a field-by-field unpack would make cost milliseconds."""
        k = self.seen_key_layout.fields
        if k["far_addr"].size * k["far_addr"].count != 16 or \
                (k["far_port"].offset, k["near_port"].offset) != (16, 18):
            raise BtfError("struct seen_key: not (far_addr[16], far_port, near_port)")
        d = self.seen_layout.fields["dir"]
        rtp, stun = (d.layout.fields[n].offset for n in ("rtp", "stun"))
        offsets = [i * d.size + f for f in (rtp, stun) for i in (0, 1)]
        order = "<" if self.seen_layout.byteorder == "little" else ">"
        fmt, at = order, 0
        for off in sorted(offsets):
            fmt, at = fmt + f"{off - at}xI", off + 4
        # HeaderCounts' field i is the value at offsets[i]: its rank among the offsets
        self._seen_order = [sorted(offsets).index(off) for off in offsets]
        return struct.Struct("!16sHH"), struct.Struct(fmt)

    def _struct(self, name: str, part: str) -> Layout:
        t = getattr(self.defs[name], part)
        if not isinstance(t, Layout):
            raise BtfError(f"{name}: {part} is not a struct")
        return t

    def matches(self, name: str, typ: int, key_size: int, value_size: int,
                max_entries: int) -> bool:
        """Whether a map with this kernel definition has this object's layout (a pinned
        map left by another version of the program does not)."""
        d = self.defs[name]
        return (typ, key_size, value_size, max_entries) == (
            d.type, self.size(name, "key"), self.size(name, "value"), d.max_entries)

    def size(self, name: str, part: str) -> int:
        t = getattr(self.defs[name], part)
        return t.size if isinstance(t, Layout) else t

    def flow_key(self, flow: FiveTuple) -> bytes:
        """voipqos_flows key of (ipproto, src, dst, sport, dport); IPv4 as ::ffff:a.b.c.d."""
        proto, src, dst, sport, dport = flow
        try:
            return self.flow_key_layout.pack({"saddr": _v6(src), "daddr": _v6(dst),
                                              "sport": sport, "dport": dport, "proto": proto})
        except (ValueError, OverflowError) as e:
            raise LayoutError(f"bad flow {flow!r}: {e}") from None

    def config_value(self, voice_classid: int, dscp_mark: bool, trust_ef: bool) -> bytes:
        """voipqos_config[0] for the rules."""
        if not 0 <= voice_classid <= 0xFFFFFFFF:
            raise LayoutError(f"voice_classid {voice_classid:#x} out of range")
        if voice_classid and not voice_classid & 0xFFFF:
            raise LayoutError(f"voice_classid {voice_classid >> 16:x}:0 is HTB's unshaped "
                              "direct class")
        return self.config_layout.pack({"voice_prio": voice_classid,
                                        "dscp_mark": int(dscp_mark), "trust_ef": int(trust_ef)})

    def port_set(self, field: str, ports: Iterable[int]) -> bytes:
        """One bitmap of voipqos_ports: bit p % 64 of 64-bit word p / 64."""
        f = self.ports_layout.fields[field]
        words = [0] * f.count
        for p in ports:
            words[p >> 6] |= 1 << (p & 63)
        return b"".join(w.to_bytes(f.size, self.ports_layout.byteorder) for w in words)

    def ports_value(self, old: bytes | None, **sets: bytes) -> bytes:
        """voipqos_ports[0] with the given bitmaps replaced and the others kept."""
        raw = bytearray(old or bytes(self.ports_layout.size))
        for name, bits in sets.items():
            at = self.ports_layout.fields[name].offset
            raw[at:at + len(bits)] = bits
        return bytes(raw)

    def flow_tuple(self, key: bytes) -> FiveTuple:
        """The (ipproto, src, dst, sport, dport) of a voipqos_flows key."""
        k = self.flow_key_layout.unpack(key)
        addrs = []
        for raw in (key[:16], key[16:32]):
            addrs.append(_addr_text(raw))
        return (k["proto"], addrs[0], addrs[1], k["sport"], k["dport"])

    def seen_key(self, key: HeaderKey) -> bytes:
        """voipqos_seen key of (far address, far port, near port)."""
        addr, far_port, near_port = key
        try:
            return self.seen_key_layout.pack({"far_addr": _v6(addr), "far_port": far_port,
                                              "near_port": near_port})
        except (ValueError, OverflowError) as e:
            raise LayoutError(f"bad header key {key!r}: {e}") from None

    def seen_item(self, key: bytes, value: bytes) -> tuple[HeaderKey, HeaderCounts]:
        """One voipqos_seen entry as the detector takes it."""
        addr, far_port, near_port = self._seen_key.unpack_from(key)
        counts = self._seen_counts.unpack_from(value)
        return (_addr_text(addr), far_port, near_port), \
            HeaderCounts(*(counts[i] for i in self._seen_order))

    def flow_directions(self, value: bytes) -> list[dict[str, int]]:
        """The unpacked `struct rtp_dir`s of a voipqos_flows value, in DIR_* order."""
        return self.flow_state_layout.unpack(value)["dir"]

    def flow_ports(self, keys: Iterable[bytes]) -> set[int]:
        """Every port of these voipqos_flows keys."""
        out: set[int] = set()
        for key in keys:
            k = self.flow_key_layout.unpack(key)
            out |= {k["sport"], k["dport"]}
        return out

    @staticmethod
    def voice_ports(ranges: Sequence[tuple[int, int]]) -> set[int]:
        """The ports of static UDP voice ranges (lo, hi), checked."""
        out: set[int] = set()
        for lo, hi in ranges:
            if not 0 < lo <= hi <= 65535:
                raise LayoutError(f"voice_ports: bad range {lo}-{hi}")
            out.update(range(lo, hi + 1))
        return out

    def stats(self, per_cpu: bytes, ncpu: int) -> dict[str, dict[str, int]]:
        """voipqos_stats[0] summed over the CPUs' slots (each rounded up to 8 bytes)."""
        slot = -(-self.stats_layout.size // 8) * 8
        total: dict[str, dict[str, int]] = {}
        for cpu in range(ncpu):
            for name, counter in self.stats_layout.unpack(per_cpu, cpu * slot).items():
                into = total.setdefault(name, dict.fromkeys(counter, 0))
                for k, v in counter.items():
                    into[k] += v
        return total

    def memory(self, ncpu: int) -> dict[str, int]:
        """Bytes of key + value times max_entries per map (per-CPU values once per CPU):
        what the maps hold when full; the kernel adds its own per-element overhead."""
        out = {}
        for name, d in self.defs.items():
            value = self.size(name, "value") * (ncpu if d.type in PERCPU_TYPES else 1)
            out[name] = d.max_entries * (self.size(name, "key") + value)
        return out


@functools.lru_cache(maxsize=4)
def for_object(obj: Path) -> ClassifierMaps:
    return ClassifierMaps(Btf.from_object(obj))
