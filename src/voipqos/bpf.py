"""The tc-BPF call classifier: load it with iproute2 `tc`, fill its maps through bpf(2).

`tc ... bpf da obj FILE sec SEC` loads the object exactly as OpenWrt's tc-bpf/tc-full
does and pins the three maps under `<pin_dir>/tc/globals/` (pin_dir must be, or is
made, a bpffs mount; `TC_BPF_MNT` points tc at it, which also survives `ip netns exec`
remounting /sys as long as pin_dir is not under /sys). Maps are then read and written
with the bpf() syscall through ctypes: microseconds per update, where a `bpftool`
subprocess costs about a millisecond (bench/bpf_classifier.py). The data layouts here
mirror bpf/voipqos.c.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import json
import logging
import os
import struct
import subprocess
import sys
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OBJECT_DIRS = ("/usr/lib/voipqos/bpf",)
HOOKS = ("egress", "ingress")
# root qdiscs the kernel sets up by itself: no place for a filter
DEFAULT_ROOTS = {"noqueue", "pfifo_fast", "mq", "fq_codel", "fq", "noop"}
PREF = 1          # our filter runs first; later filters (IFB redirect) still see the packet
HANDLE = 1
MAX_RANGES = 16   # VOIPQOS_MAX_RANGES in voipqos.c
MAP_NAMES = ("voipqos_flows", "voipqos_config", "voipqos_stats")
PROG_NAMES = ("voipqos_eth", "voipqos_l3")   # the entry functions in voipqos.c
SKB_PRIORITY_OFFSET = 32   # offsetof(struct __sk_buff, priority)
SK_BUFF_SIZE = 192         # sizeof(struct __sk_buff) (kernel 5.16+; older copy less)

# bpf(2) syscall numbers. MIPS differs per ABI (o32 / n64); the rest per architecture.
_NR_BPF = {
    "x86_64": 321, "i386": 357, "i686": 357, "aarch64": 280, "arm": 386,
    "mips": 4355, "mips64": 5315, "riscv64": 280, "loongarch64": 280,
    "ppc": 361, "ppc64": 361, "ppc64le": 361, "s390x": 351,
}
(BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY,
 BPF_OBJ_GET, BPF_PROG_TEST_RUN, BPF_PROG_GET_FD_BY_ID) = (1, 2, 3, 4, 7, 10, 13)

_FLOW_KEY = struct.Struct("!16s16sHHB3x")       # struct flow_key, network byte order
_CONFIG = struct.Struct("=IBBBx" + "HH" * MAX_RANGES)   # struct voipqos_config, host order
_COUNTER = struct.Struct("=QQ")                  # struct counter, per CPU
_STATS = ("voice", "other")                      # COUNT_VOICE, COUNT_OTHER


class BpfError(RuntimeError):
    """One-line cause of a failed load, attach or map operation."""


def syscall_nr(machine: str, pointer_size: int) -> int:
    """bpf(2)'s number for `uname -m` and the userland's pointer size (MIPS o32/n64)."""
    if machine.startswith("arm") and machine != "arm64":
        machine = "arm"
    elif machine.startswith("mips"):
        machine = "mips64" if pointer_size == 8 else "mips"
    elif machine == "x86_64" and pointer_size == 4:
        machine = "i386"
    try:
        return _NR_BPF[machine]
    except KeyError:
        raise BpfError(f"bpf() syscall number unknown for {machine}") from None


_libc: ctypes.CDLL | None = None
_nr = 0


def bpf_syscall(cmd: int, attr: bytes) -> tuple[int, bytes]:
    """bpf(cmd, attr): returns (result, attr as the kernel left it); OSError on failure."""
    global _libc, _nr
    if _libc is None:
        _nr = syscall_nr(os.uname().machine, struct.calcsize("P"))
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = _libc.syscall(_nr, ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret, buf.raw


def _addr(buf: ctypes.Array | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def obj_get(path: str | Path) -> int:
    """fd of a pinned BPF object."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    return bpf_syscall(BPF_OBJ_GET, struct.pack("=QII", _addr(p), 0, 0))[0]


def prog_fd_by_id(prog_id: int) -> int:
    return bpf_syscall(BPF_PROG_GET_FD_BY_ID, struct.pack("=III", prog_id, 0, 0))[0]


def _map_op(cmd: int, fd: int, key: bytes, value: ctypes.Array | None, flags: int = 0) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    bpf_syscall(cmd, struct.pack("=IIQQQ", fd, 0, _addr(k), _addr(value), flags))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    value = ctypes.create_string_buffer(value_size)
    try:
        _map_op(BPF_MAP_LOOKUP_ELEM, fd, key, value)
    except FileNotFoundError:
        return None
    return value.raw


def map_update(fd: int, key: bytes, value: bytes) -> None:
    _map_op(BPF_MAP_UPDATE_ELEM, fd, key, ctypes.create_string_buffer(value, len(value)))


def map_delete(fd: int, key: bytes) -> None:
    _map_op(BPF_MAP_DELETE_ELEM, fd, key, None)


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a hash map (GET_NEXT_KEY from no key = the first)."""
    nxt = ctypes.create_string_buffer(key_size)
    cur: ctypes.Array | None = None
    while True:
        try:
            bpf_syscall(BPF_MAP_GET_NEXT_KEY,
                        struct.pack("=IIQQ", fd, 0, _addr(cur), _addr(nxt)))
        except FileNotFoundError:
            return
        yield nxt.raw
        cur = ctypes.create_string_buffer(nxt.raw, key_size)


@dataclass(frozen=True)
class RunResult:
    retval: int
    data: bytes       # the packet as the program left it
    priority: int     # skb->priority after the run
    duration_ns: int  # mean per repetition


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1) -> RunResult:
    """Run a tc program on one Ethernet frame with BPF_PROG_TEST_RUN."""
    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(len(data) + 256)
    ctx = ctypes.create_string_buffer(SK_BUFF_SIZE)
    attr = struct.pack("=IIIIQQIIIIQQIII", prog_fd, 0, len(data), len(dout), _addr(din),
                       _addr(dout), repeat, 0, 0, SK_BUFF_SIZE, 0, _addr(ctx), 0, 0, 0)
    _, out = bpf_syscall(BPF_PROG_TEST_RUN, attr)
    _, retval, _, size_out, _, _, _, duration = struct.unpack_from("=IIIIQQII", out)
    priority = struct.unpack_from("=I", ctx.raw, SKB_PRIORITY_OFFSET)[0]
    return RunResult(ctypes.c_int32(retval).value, dout.raw[:size_out], priority, duration)


def find_object(byteorder: str = sys.byteorder) -> Path:
    """The classifier object for this CPU's byte order ("little" -> bpfel)."""
    name = f"voipqos-bpf{'el' if byteorder == 'little' else 'eb'}.o"
    dirs = [os.environ.get("VOIPQOS_BPF_DIR", ""), *OBJECT_DIRS,
            str(Path(__file__).resolve().parents[2] / "build" / "bpf")]
    for d in filter(None, dirs):
        if (Path(d) / name).is_file():
            return Path(d) / name
    raise BpfError(f"{name} not found in {', '.join(filter(None, dirs))} (run make bpf)")


def flow_key(flow: tuple[int, str, str, int, int]) -> bytes:
    """voipqos_flows key of (ipproto, src, dst, sport, dport); IPv4 as ::ffff:a.b.c.d."""
    proto, src, dst, sport, dport = flow
    try:
        addrs = [ipaddress.ip_address(a) for a in (src, dst)]
        packed = [(ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed)
                   if a.version == 4 else a).packed for a in addrs]
        return _FLOW_KEY.pack(packed[0], packed[1], sport, dport, proto)
    except (ValueError, struct.error) as e:
        raise BpfError(f"bad flow {flow!r}: {e}") from None


def config_value(voice_classid: int, dscp_mark: bool, trust_ef: bool,
                 voice_ports: Sequence[tuple[int, int]]) -> bytes:
    """struct voipqos_config for the rules; BpfError names the bad field."""
    if not 0 <= voice_classid <= 0xFFFFFFFF:
        raise BpfError(f"voice_classid {voice_classid:#x} out of range")
    if voice_classid and not voice_classid & 0xFFFF:
        raise BpfError(f"voice_classid {voice_classid >> 16:x}:0 is HTB's unshaped direct class")
    if len(voice_ports) > MAX_RANGES:
        raise BpfError(f"voice_ports: {len(voice_ports)} ranges, at most {MAX_RANGES}")
    flat: list[int] = []
    for lo, hi in voice_ports:
        if not 0 < lo <= hi <= 65535:
            raise BpfError(f"voice_ports: bad range {lo}-{hi}")
        flat += (lo, hi)
    flat += [0] * (2 * MAX_RANGES - len(flat))
    return _CONFIG.pack(voice_classid, dscp_mark, trust_ef, len(voice_ports), *flat)


def cpu_count(cpu_list: str) -> int:
    """CPUs in a kernel CPU list such as "0-3,6"."""
    n = 0
    for part in cpu_list.strip().split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def possible_cpus() -> int:
    """Per-CPU map values hold one slot for each possible CPU."""
    return cpu_count(Path("/sys/devices/system/cpu/possible").read_text())


def _is_bpffs(path: Path) -> bool:
    """Whether path lies on a bpffs mount: the longest mount point above it is bpf."""
    path = path.resolve()
    best, fstype = "", ""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1].replace("\\040", " ")
        if path.is_relative_to(point) and len(point) >= len(best):
            best, fstype = point, fields[2]
    return fstype == "bpf"


SYSTEM_BPFFS = Path("/sys/fs/bpf")


def _mount_bpffs(path: Path) -> None:
    res = subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], capture_output=True, text=True)
    if res.returncode:
        raise BpfError(f"mount bpffs on {path}: {res.stderr.strip()}")


class Classifier:
    """The classifier on one or more (device, hook) pairs sharing one set of pinned maps."""

    def __init__(self, pin_dir: str, obj: Path | None = None, netns: str | None = None) -> None:
        self.pin_dir = Path(pin_dir)
        self.obj = obj
        self.netns = netns
        self.attached: set[tuple[str, str]] = set()
        self._own_clsact: set[str] = set()
        self._mounted = self._made_dir = False
        self._fds: dict[str, int] = {}
        if netns and self.pin_dir.resolve().is_relative_to("/sys"):
            raise BpfError(f"pin_dir {pin_dir} is under /sys, which ip netns exec remounts")

    @property
    def globals_dir(self) -> Path:
        return self.pin_dir / "tc" / "globals"

    def _tc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["tc", *args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        env = {**os.environ, "TC_BPF_MNT": str(self.pin_dir)}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)
        if check and res.returncode:
            lines = (res.stderr or res.stdout).strip().splitlines() or [f"exit {res.returncode}"]
            raise BpfError(f"tc {' '.join(args)}: {lines[-1]}")
        return res

    def _json(self, *args: str) -> list[dict]:
        return json.loads(self._tc("-j", *args).stdout or "[]")

    def _ensure_bpffs(self) -> None:
        if _is_bpffs(self.pin_dir):
            return
        if not self.pin_dir.exists():
            parent = self.pin_dir.parent
            if parent == SYSTEM_BPFFS and parent.is_dir() and not _is_bpffs(parent):
                # the system's bpffs is not mounted (no systemd/procd mount, or a fresh
                # /sys from `ip netns exec`): mount it where they would, and leave it
                _mount_bpffs(parent)
                if _is_bpffs(self.pin_dir):
                    return
            try:
                self.pin_dir.mkdir(parents=True)
            except OSError as exc:
                raise BpfError(f"cannot create pin dir {self.pin_dir}: {exc.strerror}") from None
            self._made_dir = True
        _mount_bpffs(self.pin_dir)
        self._mounted = True

    def _link(self, dev: str) -> dict | None:
        """`ip -j link show dev` of dev, None if there is no such device."""
        cmd = ["ip", "-j", "link", "show", "dev", dev]
        if self.netns:
            cmd[1:1] = ["-n", self.netns]
        res = subprocess.run(cmd, capture_output=True, text=True)
        return json.loads(res.stdout)[0] if res.returncode == 0 else None

    def _section(self, dev: str) -> str:
        """tc for Ethernet devices, tc_l3 for those without a link header (PPPoE, tun)."""
        link = self._link(dev)
        if link is None:
            raise BpfError(f"device {dev} not found")
        return "tc" if link.get("link_type") == "ether" else "tc_l3"

    def _where(self, dev: str, hook: str, qdiscs: list[dict] | None = None) -> list[str]:
        """Where the hook's filter sits: clsact's (or an ingress qdisc's) hook, or, for
        egress next to a plain `ingress` qdisc (sqm's download redirect; clsact cannot be
        added then), a filter on the device's root qdisc: cake and sqm's HTB run their
        filters before picking a tin/class, so the EF mark still counts."""
        if qdiscs is None:
            qdiscs = self._json("qdisc", "show", "dev", dev)
        kinds = {q.get("kind") for q in qdiscs}
        if hook != "egress" or "clsact" in kinds or "ingress" not in kinds:
            return [hook]
        root = next((q for q in qdiscs if q.get("root")), None)
        if root is None or root.get("kind") in DEFAULT_ROOTS:
            raise BpfError(f"{dev} has an ingress qdisc, not clsact, and no root qdisc to "
                           "hold the egress classifier")
        return ["parent", root["handle"]]

    def _our_filter(self, dev: str, where: list[str]) -> dict | None:
        """Our filter at PREF, None if the slot is free; BpfError if someone else's is there."""
        for f in self._json("filter", "show", "dev", dev, *where, "pref", str(PREF)):
            opts = f.get("options")
            if opts is None:
                continue
            if f.get("kind") != "bpf" or opts.get("prog", {}).get("name") not in PROG_NAMES:
                raise BpfError(f"{dev} {' '.join(where)}: pref {PREF} holds another filter "
                               f"({f.get('kind')})")
            return f
        return None

    def attach(self, dev: str, hook: str) -> None:
        """clsact on dev (an existing clsact or ingress qdisc is used as is), our filter at
        pref 1 returning TC_ACT_UNSPEC. Replaces an older copy of ours; idempotent."""
        if hook not in HOOKS:
            raise BpfError(f"hook {hook!r}: must be egress or ingress")
        obj = self.obj or find_object()
        qdiscs = self._json("qdisc", "show", "dev", dev)
        where = self._where(dev, hook, qdiscs)
        created = False
        if not {q.get("kind") for q in qdiscs} & {"clsact", "ingress"}:
            self._tc("qdisc", "add", "dev", dev, "clsact")
            created = True
        try:
            self._ensure_bpffs()
            self._our_filter(dev, where)
            self._tc("filter", "replace", "dev", dev, *where, "pref", str(PREF), "handle",
                     str(HANDLE), "bpf", "da", "obj", str(obj), "sec", self._section(dev))
        except BpfError:
            if created:  # leave the device as we found it
                self._tc("qdisc", "del", "dev", dev, "clsact", check=False)
            raise
        if created:
            self._own_clsact.add(dev)
        self.attached.add((dev, hook))

    def detach(self, dev: str, hook: str) -> None:
        """Remove our filter, and the clsact if we added it and it is now empty. A device
        that is gone counts as detached."""
        self.attached.discard((dev, hook))
        try:
            where = self._where(dev, hook)
            if self._our_filter(dev, where):
                self._tc("filter", "del", "dev", dev, *where, "pref", str(PREF),
                         "handle", str(HANDLE), "bpf")
            if dev in self._own_clsact and not any(
                    self._json("filter", "show", "dev", dev, h) for h in HOOKS):
                self._tc("qdisc", "del", "dev", dev, "clsact")
                self._own_clsact.discard(dev)
        except BpfError:
            if self._link(dev) is not None:
                raise

    def prog_id(self, dev: str, hook: str) -> int:
        """Kernel id of our program on (dev, hook), for bpftool and BPF_PROG_TEST_RUN."""
        f = self._our_filter(dev, self._where(dev, hook))
        if f is None:
            raise BpfError(f"{dev} {hook}: classifier not attached")
        return int(f["options"]["prog"]["id"])

    def _fd(self, name: str) -> int:
        if name not in self._fds:
            try:
                self._fds[name] = obj_get(self.globals_dir / name)
            except OSError as e:
                raise BpfError(f"map {name} not pinned in {self.globals_dir} "
                               f"(attach first): {e.strerror}") from None
        return self._fds[name]

    def set_rules(self, voice_classid: int, dscp_mark: bool, trust_ef: bool,
                  voice_ports: Sequence[tuple[int, int]]) -> None:
        """voice_classid: full HTB classid (0x00010010 = 1:10) put in skb->priority, or 0
        to only mark DSCP; voice_ports: static UDP (lo, hi) ranges, either port matches."""
        value = config_value(voice_classid, dscp_mark, trust_ef, voice_ports)
        try:
            map_update(self._fd("voipqos_config"), struct.pack("=I", 0), value)
        except OSError as e:
            raise BpfError(f"voipqos_config update: {e.strerror}") from None

    def set_flows(self, flows: Collection[tuple[int, str, str, int, int]]) -> None:
        """Make the flow table hold exactly these directed 5-tuples; the program also
        matches each reversed, so orig + reply tuples cover both directions and NAT."""
        want = {flow_key(f) for f in flows}
        fd = self._fd("voipqos_flows")
        try:
            have = set(map_keys(fd, _FLOW_KEY.size))
            for key in have - want:
                map_delete(fd, key)
            for key in want - have:
                map_update(fd, key, b"\x01")
        except OSError as e:
            cause = "table full" if e.errno == errno.E2BIG else e.strerror
            raise BpfError(f"voipqos_flows update: {cause}") from None

    def counters(self) -> dict[str, dict[str, int]]:
        """{"voice"|"other": {"packets", "bytes"}} summed over CPUs."""
        fd, ncpu = self._fd("voipqos_stats"), possible_cpus()
        out = {}
        for idx, name in enumerate(_STATS):
            raw = map_lookup(fd, struct.pack("=I", idx), _COUNTER.size * ncpu) or b""
            per_cpu = [_COUNTER.unpack_from(raw, i * _COUNTER.size) for i in range(ncpu)]
            out[name] = {"packets": sum(p for p, _ in per_cpu),
                         "bytes": sum(b for _, b in per_cpu)}
        return out

    def close(self) -> None:
        """Detach everywhere, unpin the maps (also a crashed run's), unmount what we
        mounted. The first error is raised after everything was tried."""
        errors: list[BpfError] = []
        for dev, hook in sorted(self.attached):
            try:
                self.detach(dev, hook)
            except BpfError as e:
                errors.append(e)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for name in MAP_NAMES:
            (self.globals_dir / name).unlink(missing_ok=True)
        self._remove_empty_tc_dirs()
        if self._mounted:
            subprocess.run(["umount", str(self.pin_dir)], capture_output=True)
            self._mounted = False
        if self._made_dir:
            self.pin_dir.rmdir()
            self._made_dir = False
        if errors:
            raise errors[0]

    def _remove_empty_tc_dirs(self) -> None:
        """tc makes tc/globals plus ip and xdp symlinks to tc/: remove them when empty."""
        try:
            self.globals_dir.rmdir()
            (self.pin_dir / "tc").rmdir()
        except OSError:
            return
        for link in ("ip", "xdp"):
            p = self.pin_dir / link
            if p.is_symlink() and os.readlink(p).rstrip("/").endswith("/tc"):
                p.unlink()


def start(clf: Classifier, device: str, hooks: Sequence[str], voice_classid: int,
          dscp_mark: bool, trust_ef: bool, voice_ports: Sequence[tuple[int, int]],
          flows: Collection[tuple[int, str, str, int, int]]) -> Classifier:
    """Attach `clf` on the hooks and fill its maps; on BpfError nothing is left behind."""
    try:
        for hook in hooks:
            clf.attach(device, hook)
        clf.set_rules(voice_classid, dscp_mark, trust_ef, voice_ports)
        clf.set_flows(flows)
    except BpfError:
        try:
            clf.close()
        except BpfError as again:
            log.warning("classifier cleanup: %s", again)
        raise
    return clf
