"""The observer: header evidence (RTP chains, STUN) for the detector, from the kernel.

`voipqos_obs_*` in bpf/voipqos.c counts, per UDP flow at the WAN device and per
direction, the packets that continue an RTP stream and the STUN messages, as
header_evidence.py specifies. It runs while the profile is off too (a call has to be
found before anything is shaped), so it never changes a packet and costs TCP only its
protocol check. It is loaded from the classifier's object with tc, like the classifier
(bpf.TcProgram), at its own pref on the same clsact hooks, so either can come and go
without the other; its one map, voipqos_seen, is an LRU table the daemon reads whole
each poll.
"""

from __future__ import annotations

from typing import Any

from .bpf import HOOKS, BpfError, TcProgram
from .bpf_syscall import map_items
from .classifier_maps import SEEN
from .header_evidence import HeaderCounts, HeaderKey

PREF = 2  # after the classifier (1), before the IFB redirect (0x5651) takes the packet


class Observer(TcProgram):
    """The observer on a device's egress and ingress, its map pinned with the classifier's."""

    what = "observer"
    pref = PREF
    sections = ("tc_observe", "tc_observe_l3")
    prog_names = ("voipqos_obs_eth", "voipqos_obs_l3")  # kernel names: 15 characters at most
    own_maps = (SEEN,)

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._index: dict[str, int] = {}  # ifindex of each device at attach

    def attach(self, dev: str, hook: str) -> None:
        super().attach(dev, hook)
        link = self._link(dev)
        if link is not None:
            self._index[dev] = link["ifindex"]

    def _now_named(self, dev: str) -> str | None:
        """The name the device we attached as `dev` has now (renamed), None if gone."""
        index = self._index.get(dev)
        return next((x["ifname"] for x in self._links() if x.get("ifindex") == index), None)

    def ensure(self, dev: str) -> None:
        """Attached on both hooks of dev, as the kernel says (a qdisc replaced under it,
        e.g. by sqm, takes its filter along), and nowhere else: not on the previous WAN
        device, nor on the old one renamed (a PPPoE device re-created takes its name)."""
        for old in sorted({d for d, _ in self.attached}):
            now = self._now_named(old)
            if now != dev or old != dev:
                self.attached -= {(old, hook) for hook in HOOKS}
                if now is not None:
                    self.remove_from(now)
        for hook in HOOKS:
            try:
                self.prog_id(dev, hook)
            except BpfError:
                self.attach(dev, hook)
            self.attached.add((dev, hook))

    def close(self) -> None:
        """Detach (from a renamed device too), unpin voipqos_seen."""
        self.attached = {(now, hook) for dev, hook in self.attached
                         if (now := self._now_named(dev)) is not None}
        super().close()

    def read(self) -> dict[HeaderKey, HeaderCounts]:
        """Every flow's cumulative counters, keyed (far address, far port, near port):
        conntrack's reply (src, sport, dport). One batch read of the whole map."""
        maps = self.maps
        key_size, value_size = maps.size(SEEN, "key"), maps.size(SEEN, "value")
        try:
            items = map_items(self._fd(SEEN), key_size, value_size,
                              maps.defs[SEEN].max_entries)
        except OSError as e:
            raise BpfError(f"{SEEN} read: {e.strerror}") from None
        return dict(maps.seen_item(k, v) for k, v in items)


def remove(pin_dir: str, device: str) -> None:
    """`voipqos remove`: the observer's filters on device and its pinned map, also what
    a killed daemon left (found by pref and program name, no state needed)."""
    o = Observer(pin_dir)
    o.remove_from(device)
    o.close()
