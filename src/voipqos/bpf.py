"""The tc-BPF call classifier: load it with iproute2 `tc`, attach it, fill its maps.

`tc ... bpf da obj FILE sec SEC` loads the object exactly as OpenWrt's tc-bpf/tc-full
does and pins the maps under `<pin_dir>/tc/globals/` (pin_dir must be, or is made, a
bpffs mount; `TC_BPF_MNT` points tc at it, which also survives `ip netns exec`
remounting /sys as long as pin_dir is not under /sys). The maps are then read and
written through bpf_syscall.py, with the layouts classifier_maps.py reads from the
object's BTF (declared once, in bpf/voipqos.h).

The object holds two programs that share the pin directory: the classifier (pref 1, while
the profile is on) and the observer (observer.py, its own pref, also while it is off).
`TcProgram` is what both do on a device; each owns (unpins) only its own maps.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from . import bpf_syscall, quality
from .btf import BtfError
from .classifier_maps import (
    CONFIG,
    FLOWS,
    MAP_NAMES,
    OBJECT_MAPS,
    PORTS,
    STATS,
    ClassifierMaps,
    FiveTuple,
    LayoutError,
    for_object,
)

log = logging.getLogger(__name__)

OBJECT_DIRS = ("/usr/lib/voipqos/bpf",)
HOOKS = ("egress", "ingress")
# root qdiscs the kernel sets up by itself: no place for a filter
DEFAULT_ROOTS = {"noqueue", "pfifo_fast", "mq", "fq_codel", "fq", "noop"}
PREF = 1          # our filter runs first; later filters (IFB redirect) still see the packet
HANDLE = 1
PROG_NAMES = ("voipqos_eth", "voipqos_l3")   # the entry functions in voipqos.c


class BpfError(RuntimeError):
    """One-line cause of a failed load, attach or map operation."""


def find_object(byteorder: str = sys.byteorder) -> Path:
    """The classifier object for this CPU's byte order ("little" -> bpfel)."""
    name = f"voipqos-bpf{'el' if byteorder == 'little' else 'eb'}.o"
    dirs = [os.environ.get("VOIPQOS_BPF_DIR", ""), *OBJECT_DIRS,
            str(Path(__file__).resolve().parents[2] / "build" / "bpf")]
    for d in filter(None, dirs):
        if (Path(d) / name).is_file():
            return Path(d) / name
    raise BpfError(f"{name} not found in {', '.join(filter(None, dirs))} (run make bpf)")


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
BPFFS_OWN = {"maps.debug", "progs.debug"}  # what a fresh bpffs holds (kernel bpf_preload)


def _mount_bpffs(path: Path) -> None:
    res = subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], capture_output=True, text=True)
    if res.returncode:
        raise BpfError(f"mount bpffs on {path}: {res.stderr.strip()}")


# (netns, device) where one of our programs added the clsact: whichever of them leaves it
# empty deletes it (the classifier and the observer share it, and either may go first)
_OWN_CLSACT: set[tuple[str | None, str]] = set()


class TcProgram:
    """One of the object's programs on one or more (device, hook) pairs, its maps pinned
    by name in pin_dir. Subclasses say which filter slot, sections and maps are theirs."""

    what = "classifier"                  # in messages
    pref, handle = PREF, HANDLE
    sections = ("tc", "tc_l3")           # Ethernet devices, devices without a link header
    prog_names = PROG_NAMES
    own_maps: tuple[str, ...] = MAP_NAMES  # unpinned by close(); the others are left

    def __init__(self, pin_dir: str, obj: Path | None = None, netns: str | None = None) -> None:
        self.pin_dir = Path(pin_dir)
        self.obj = obj
        self.netns = netns
        self.attached: set[tuple[str, str]] = set()
        self._mounted = self._made_dir = False
        self._fds: dict[str, int] = {}
        if netns and self.pin_dir.resolve().is_relative_to("/sys"):
            raise BpfError(f"pin_dir {pin_dir} is under /sys, which ip netns exec remounts")

    @property
    def maps(self) -> ClassifierMaps:
        """The map layouts of the object (read once per object file)."""
        try:
            return for_object(self.obj or find_object())
        except BtfError as e:
            raise BpfError(f"BPF object: {e}") from None

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

    def _links(self, *which: str) -> list[dict]:
        """`ip -j link show [which]` in our namespace; [] when ip fails (no such device)."""
        cmd = ["ip", *(["-n", self.netns] if self.netns else []), "-j", "link", "show", *which]
        res = subprocess.run(cmd, capture_output=True, text=True)
        return json.loads(res.stdout or "[]") if res.returncode == 0 else []

    def _link(self, dev: str) -> dict | None:
        """`ip -j link show dev` of dev, None if there is no such device."""
        return next(iter(self._links("dev", dev)), None)

    def _section(self, dev: str) -> str:
        """The Ethernet section, or the L3 one for devices without a link header (PPPoE,
        tun)."""
        link = self._link(dev)
        if link is None:
            raise BpfError(f"device {dev} not found")
        return self.sections[0 if link.get("link_type") == "ether" else 1]

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
        """Our filter at our pref, None if the slot is free; BpfError if someone else's is
        there."""
        for f in self._json("filter", "show", "dev", dev, *where, "pref", str(self.pref)):
            opts = f.get("options")
            if opts is None:
                continue
            if f.get("kind") != "bpf" or opts.get("prog", {}).get("name") not in self.prog_names:
                raise BpfError(f"{dev} {' '.join(where)}: pref {self.pref} holds another filter "
                               f"({f.get('kind')})")
            return f
        return None

    def attach(self, dev: str, hook: str) -> None:
        """clsact on dev (an existing clsact or ingress qdisc is used as is), our filter at
        our pref returning TC_ACT_UNSPEC. Replaces an older copy of ours; idempotent."""
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
            self._drop_stale_pins()
            self._our_filter(dev, where)
            pinned = self._pinned()
            self._tc("filter", "replace", "dev", dev, *where, "pref", str(self.pref),
                     "handle", str(self.handle), "bpf", "da", "obj", str(obj),
                     "sec", self._section(dev))
            # tc creates and pins every map of the object: the other program's are left
            # for it to make, so a pin exists only while its owner runs
            for name in self._pinned() - pinned - set(self.own_maps):
                (self.globals_dir / name).unlink(missing_ok=True)
        except BpfError:
            if created:  # leave the device as we found it
                self._tc("qdisc", "del", "dev", dev, "clsact", check=False)
            raise
        if created:
            _OWN_CLSACT.add((self.netns, dev))
        self.attached.add((dev, hook))

    def _pinned(self) -> set[str]:
        return {name for name in OBJECT_MAPS if (self.globals_dir / name).exists()}

    def _drop_stale_pins(self) -> None:
        """Unpin maps another version of the program left (a crash before an upgrade):
        tc cannot reuse them ("Unable to load program") and would fail every attach.
        Programs still using them keep them until they are replaced."""
        maps = self.maps
        for name in OBJECT_MAPS:
            path = self.globals_dir / name
            if name in self._fds or not path.exists():
                continue
            try:
                fd = bpf_syscall.obj_get(path)
            except OSError:
                continue
            try:
                i = bpf_syscall.map_info(fd)
            finally:
                os.close(fd)
            if not maps.matches(name, i.type, i.key_size, i.value_size, i.max_entries):
                log.warning("pinned map %s is from another version of voipqos: replaced",
                            path)
                path.unlink()

    def detach(self, dev: str, hook: str) -> None:
        """Remove our filter, and the clsact if we added it and it is now empty. A device
        that is gone counts as detached."""
        self.attached.discard((dev, hook))
        try:
            where = self._where(dev, hook)
            if self._our_filter(dev, where):
                self._tc("filter", "del", "dev", dev, *where, "pref", str(self.pref),
                         "handle", str(self.handle), "bpf")
            if (self.netns, dev) in _OWN_CLSACT and not any(
                    self._json("filter", "show", "dev", dev, h) for h in HOOKS):
                if any(q.get("kind") == "clsact"
                       for q in self._json("qdisc", "show", "dev", dev)):
                    self._tc("qdisc", "del", "dev", dev, "clsact")
                _OWN_CLSACT.discard((self.netns, dev))
        except BpfError:
            if self._link(dev) is not None:
                raise

    def remove_from(self, dev: str) -> None:
        """Detach from both hooks, and delete the clsact if that left it empty: what a
        killed run left, of which no record says the clsact was ours."""
        _OWN_CLSACT.add((self.netns, dev))
        try:
            for hook in HOOKS:
                self.detach(dev, hook)
        finally:
            _OWN_CLSACT.discard((self.netns, dev))

    def prog_id(self, dev: str, hook: str) -> int:
        """Kernel id of our program on (dev, hook), for bpftool and BPF_PROG_TEST_RUN."""
        f = self._our_filter(dev, self._where(dev, hook))
        if f is None:
            raise BpfError(f"{dev} {hook}: {self.what} not attached")
        return int(f["options"]["prog"]["id"])

    def _fd(self, name: str) -> int:
        if name not in self._fds:
            try:
                self._fds[name] = bpf_syscall.obj_get(self.globals_dir / name)
            except OSError as e:
                raise BpfError(f"map {name} not pinned in {self.globals_dir} "
                               f"(attach first): {e.strerror}") from None
        return self._fds[name]

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
        for name in self.own_maps:
            (self.globals_dir / name).unlink(missing_ok=True)
        self._remove_empty_tc_dirs()
        # a bpffs mounted for the pins (by this program or the other one) goes when the
        # last pin does; the system's /sys/fs/bpf is not a mount on pin_dir itself
        mounted = self._mounted or (os.path.ismount(self.pin_dir) and _is_bpffs(self.pin_dir))
        if mounted and not set(os.listdir(self.pin_dir)) - BPFFS_OWN:
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


class Classifier(TcProgram):
    """The call classifier: pref 1, its rules and flow table."""

    def set_rules(self, voice_classid: int, dscp_mark: bool, trust_ef: bool,
                  voice_ports: Sequence[tuple[int, int]]) -> None:
        """voice_classid: full HTB classid (0x00010010 = 1:10) put in skb->priority, or 0
        to only mark DSCP; voice_ports: static UDP (lo, hi) ranges, either port matches."""
        maps = self.maps
        try:
            value = maps.config_value(voice_classid, dscp_mark, trust_ef)
            voice = maps.port_set("voice", maps.voice_ports(voice_ports))
        except LayoutError as e:
            raise BpfError(str(e)) from None
        self._update_ports(voice=voice)
        try:
            bpf_syscall.map_update(self._fd(CONFIG), bytes(maps.size(CONFIG, "key")), value)
        except OSError as e:
            raise BpfError(f"{CONFIG} update: {e.strerror}") from None

    def _update_ports(self, **sets: bytes) -> None:
        maps, fd, key = self.maps, self._fd(PORTS), bytes(4)
        try:
            old = bpf_syscall.map_lookup(fd, key, maps.size(PORTS, "value"))
            bpf_syscall.map_update(fd, key, maps.ports_value(old, **sets))
        except OSError as e:
            raise BpfError(f"{PORTS} update: {e.strerror}") from None

    def set_flows(self, flows: Collection[FiveTuple]) -> None:
        """Make the flow table hold exactly these directed 5-tuples; the program also
        matches each reversed, so orig + reply tuples cover both directions and NAT.
        Entries that stay keep their value; new ones start from zero. The flows' port
        set covers old and new keys while the table changes, so no call packet misses."""
        maps = self.maps
        try:
            want = {maps.flow_key(f) for f in flows}
        except LayoutError as e:
            raise BpfError(str(e)) from None
        fd = self._fd(FLOWS)
        fresh = bytes(maps.size(FLOWS, "value"))
        try:
            have = set(bpf_syscall.map_keys(fd, maps.size(FLOWS, "key")))
            if want == have:
                return
            self._update_ports(flows=maps.port_set("flows", maps.flow_ports(want | have)))
            for key in have - want:
                bpf_syscall.map_delete(fd, key)
            for key in want - have:
                bpf_syscall.map_update(fd, key, fresh, bpf_syscall.NOEXIST)
        except OSError as e:
            cause = "table full" if e.errno == errno.E2BIG else e.strerror
            raise BpfError(f"{FLOWS} update: {cause}") from None
        self._update_ports(flows=maps.port_set("flows", maps.flow_ports(want)))

    def counters(self) -> dict[str, dict[str, int]]:
        """{"voice"|"other": {"packets", "bytes"}} summed over CPUs; packets count GSO
        segments, i.e. packets on the wire."""
        maps, ncpu = self.maps, bpf_syscall.possible_cpus()
        slot = -(-maps.size(STATS, "value") // 8) * 8
        try:
            raw = bpf_syscall.map_lookup(self._fd(STATS), bytes(4), slot * ncpu)
        except OSError as e:
            raise BpfError(f"{STATS} lookup: {e.strerror}") from None
        return maps.stats(raw or bytes(slot * ncpu), ncpu)

    def flow_quality(self) -> dict[FiveTuple, dict[str, quality.Direction]]:
        """Per flow-table entry (a call's orig or reply tuple), per direction at the WAN
        device ("egress" leaving, "ingress" arriving): packets and RTP quality counters.
        One batch read of the table; `quality.call_quality` combines a call's entries."""
        maps = self.maps
        key_size, value_size = maps.size(FLOWS, "key"), maps.size(FLOWS, "value")
        try:
            items = bpf_syscall.map_items(self._fd(FLOWS), key_size, value_size,
                                          maps.defs[FLOWS].max_entries)
        except OSError as e:
            raise BpfError(f"{FLOWS} read: {e.strerror}") from None
        return {maps.flow_tuple(key): {name: quality.direction(raw) for name, raw in
                                       zip(quality.DIRECTIONS, maps.flow_directions(value),
                                           strict=True)}
                for key, value in items}


def start(clf: Classifier, device: str, hooks: Sequence[str], voice_classid: int,
          dscp_mark: bool, trust_ef: bool, voice_ports: Sequence[tuple[int, int]],
          flows: Collection[FiveTuple]) -> Classifier:
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
