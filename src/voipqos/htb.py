"""The built-in HTB profile: plan.py's tree made real by tc.py, calls classified by bpf.py.

Every apply() reconciles from what is in the kernel, so a tree left by a crashed or
killed daemon is adopted and only its differences are changed; `check()` says what of an
applied profile the kernel lost (device re-created or renamed, IFB or tree deleted,
classifier detached), so the daemon can restore it. The BPF classifier sets
skb->priority to the voice class (plan.VOICE_CLASSID) on the WAN device's egress and
ingress (before the IFB redirect); when it cannot load, u32 filters on the HTB roots do
the same job from ports, EF marks and the call 5-tuples, and status says `u32`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import plan as P
from . import probe
from .alerts import Alert
from .config import Config
from .detect import FiveTuple
from .profile import ProfileError, classifier_hooks, classifier_quality
from .tc import Tc

log = logging.getLogger(__name__)

DEFAULT_PIN_DIR = "/sys/fs/bpf/voipqos"


class HtbProfile:
    name = "htb"

    def __init__(self, cfg: Config, device: str, pin_dir: str = DEFAULT_PIN_DIR, *,
                 tc: Tc | None = None, features: P.Features | None = None,
                 netns: str | None = None, bpf_obj: Path | None = None,
                 ifname: Callable[[int], str | None] | None = None) -> None:
        """`tc`, `netns` (for bpf's `ip netns exec`), `features` and `ifname` (a device's
        name from its index) let tests work in a namespace; `bpf_obj` overrides the
        classifier object (a bad one forces u32)."""
        self.cfg, self.device, self.pin_dir = cfg, device, pin_dir
        self.tc = tc if tc is not None else Tc()
        self.netns, self.bpf_obj = netns, bpf_obj
        self.ifname = ifname or _ifname
        self._features = features
        self.flows: frozenset[FiveTuple] = frozenset()
        self.applied = False
        self.classifier = "none"  # bpf | u32 | none
        self.leaf = ""
        self.rate_scale = 1.0
        self._clf: Any = None  # bpf.Classifier while the BPF path runs
        self._alerts: dict[str, Alert] = {}
        self._index: int | None = None  # the device's ifindex at the last apply
        self._ifb_index: int | None = None

    @property
    def features(self) -> P.Features:
        if self._features is None:
            self._features = probe.probe()
        return self._features

    def _hooks(self) -> tuple[str, ...]:
        return ("egress", "ingress") if self.cfg.download > 0 else ("egress",)

    def _observe(self, dev: str) -> P.Plan:
        # a kernel refusal (e.g. the device went away between two dumps) is ProfileError
        # already: Tc says so without this process importing pyroute2
        return self.tc.observe(dev)

    def _want(self, classifier: str) -> P.Plan:
        cfg = self.cfg
        if self.rate_scale < 1:
            cfg = replace(cfg, upload=max(1, int(cfg.upload * self.rate_scale)),
                          download=int(cfg.download * self.rate_scale))
        return P.build(cfg, self.device, self.features, classifier, self.flows)

    def _steps(self, classifier: str) -> list[P.Step]:
        """What turns the kernel into the profile. A download redirect whose IFB is gone
        or was re-created still names the old device (mirred keeps the ifindex, so every
        packet is dropped): it is deleted first and added again."""
        want, have = self._want(classifier), self._observe(self.device)
        ifb = P.ifb_name(self.device)
        stale = [o for o in have.of(P.FilterGroup) if o.redirect and (
            P.Ifb(ifb) not in have.objects or self.tc.index(ifb) != self._ifb_index)]
        if stale:
            have = replace(have, objects=tuple(o for o in have.objects if o not in stale))
        return [P.Step("delete", o) for o in stale] + P.diff(want, have)

    def _reconcile(self, classifier: str) -> None:
        want = self._want(classifier)
        self.tc.apply(self._steps(classifier))
        self._alerts.pop("leaf_fallback", None)
        self._alerts.update((a.code, a) for a in want.alerts)
        self.leaf = "fq_codel" if self.features.fq_codel else "pfifo"
        self._ifb_index = self.tc.index(P.ifb_name(self.device))

    def _start_bpf(self) -> bool:
        """Load and fill the classifier; False (with a bpf_fallback warning) if it cannot."""
        try:
            from . import bpf
        except ImportError as exc:  # e.g. ctypes missing on a trimmed router
            return self._fallback(f"bpf module unavailable: {exc}")
        try:
            self._clf = bpf.start(bpf.Classifier(self.pin_dir, self.bpf_obj, self.netns),
                                  self.device, self._hooks(), P.VOICE_CLASSID,
                                  self.cfg.dscp_mark, self.cfg.trust_ef, self.cfg.voice_ports,
                                  self.flows)
        except bpf.BpfError as exc:
            return self._fallback(str(exc))
        self._alerts.pop("bpf_fallback", None)
        return True

    def _fallback(self, why: str) -> bool:
        log.warning("BPF classifier unavailable (%s): falling back to u32 port/EF rules", why)
        self._alerts["bpf_fallback"] = Alert(
            "bpf_fallback", f"BPF classifier unavailable, using u32 rules: {why}",
            "install kmod-sched-bpf and tc-bpf (or tc-full)")
        return False

    def apply(self, rate_scale: float = 1.0) -> None:
        """Make the kernel hold the profile. Whether this builds it or repairs it is read
        from the kernel (a failed or lost earlier apply leaves no trustworthy record): a
        failure removes what this call built, or keeps the tree that was there."""
        self.rate_scale = rate_scale
        self._follow_device()
        refusal = probe.foreign_shaper(self.device, self.tc.foreign(self.device))
        if refusal:
            self._alerts["other_shaper"] = Alert("other_shaper", refusal,
                                                 "remove the other shaper or use backend sqm")
            raise ProfileError(refusal)
        self._alerts.pop("other_shaper", None)
        was = any(isinstance(o, P.Qdisc) and o.parent == P.TC_H_ROOT
                  for o in self._observe(self.device).objects)
        try:
            use_bpf = self._clf is not None or (self.classifier != "u32" and self.features.cls_bpf)
            self._reconcile("bpf" if use_bpf else "u32")
            if use_bpf and self._clf is None and not self._start_bpf():
                use_bpf = False
                self._reconcile("u32")
            if self._clf is not None:  # hooks and rules may have changed with a reload
                classifier_hooks(self._clf, self.device, self._hooks())
                self._clf.set_rules(P.VOICE_CLASSID, self.cfg.dscp_mark, self.cfg.trust_ef,
                                    self.cfg.voice_ports)
            elif not use_bpf and "bpf_fallback" not in self._alerts:
                self._fallback("cls_bpf missing in the kernel")
        except ProfileError:
            if not was:
                self._teardown()
            self.applied = was
            self.classifier = self._attached() if was else "none"
            raise
        self.classifier = "bpf" if use_bpf else "u32"
        self.applied = True
        self._index = self.tc.index(self.device)

    def _attached(self) -> str:
        """The classifier the kernel runs on the device now: bpf only if on every hook."""
        if self._clf is None:
            return "u32" if self.classifier == "u32" and self.applied else "none"
        return "bpf" if classifier_hooks(self._clf, self.device, self._hooks(),
                                         repair=False) else "none"

    def check(self) -> str | None:
        """What of the applied profile the kernel no longer holds, None if all of it.
        A renamed device is cleaned here (its new name is not ours to shape)."""
        if not self.applied:
            return None
        idx = self._follow_device()
        if idx is not None:
            return f"device {self.device} is gone" if idx < 0 else \
                f"device {self.device} was re-created"
        steps = self._steps(self.classifier)
        if steps:
            return f"{len(steps)} tc objects differ, e.g. {steps[0].op} {_what(steps[0].obj)}"
        if self._clf is not None and self._attached() != "bpf":
            self.classifier = "none"
            return f"the classifier is not attached on {self.device}"
        return None

    def _follow_device(self) -> int | None:
        """None while the device we applied on still has its name. Else (gone: -1, or
        re-created: its new index): if the old device lives on under another name, our
        tree, redirect and classifier are taken off it and our IFB deleted (a device that
        is gone took them along)."""
        if not self.applied or self._index is None:
            return None
        idx = self.tc.index(self.device)
        if idx == self._index:
            return None
        other = self.ifname(self._index)
        if other and other != self.device:
            log.warning("%s was renamed to %s: removing voipqos's profile from it",
                        self.device, other)
            self._teardown(other)
        self._index = None
        return -1 if idx is None else idx

    def remove(self) -> None:
        """Detach and unpin the classifier (also a crashed run's) and delete voipqos's
        tc objects and IFB on the device; found by handle and name, no state needed. A
        device that is gone or renamed still gets its IFB deleted."""
        self._follow_device()
        self._teardown()
        self.applied = False
        self.classifier = "none"

    def _teardown(self, dev: str | None = None) -> None:
        dev = dev or self.device
        problem = ""
        try:
            from . import bpf
        except ImportError:
            bpf = None  # type: ignore[assignment]
        if bpf is not None:
            clf = self._clf or bpf.Classifier(self.pin_dir, self.bpf_obj, self.netns)
            try:
                for hook in ("egress", "ingress"):
                    clf.detach(dev, hook)
                clf.close()
            except bpf.BpfError as exc:
                problem = str(exc)
        self._clf = None
        ifb = P.Ifb(P.ifb_name(self.device))
        if self.tc.index(dev) is None:  # the device is gone: only our IFB is left
            self.tc.apply([P.Step("delete", ifb)])
        else:
            have = self._observe(dev)
            steps = P.diff(P.Plan(), have)
            if dev != self.device:  # renamed: observe looked for the new name's IFB
                steps.append(P.Step("delete", ifb))
            self.tc.apply(steps)
        if problem:
            raise ProfileError(f"classifier removal: {problem}")

    def set_flows(self, flows: Collection[FiveTuple]) -> None:
        """Replace the call tuples; on failure the previous set stays the profile's."""
        flows = frozenset(flows)
        if self.applied and self._clf is not None:
            from .bpf import BpfError
            try:
                self._clf.set_flows(flows)
            except BpfError as exc:
                raise ProfileError(str(exc)) from exc
        elif self.applied:
            old, self.flows = self.flows, flows
            try:
                self._reconcile("u32")
            except ProfileError:
                self.flows = old
                raise
        self.flows = flows

    def counters(self) -> dict[str, dict[str, int]]:
        """Voice/other packets: the classifier's own counts, else the HTB classes'."""
        if self._clf is not None:
            from .bpf import BpfError
            try:
                return self._clf.counters()
            except BpfError as exc:
                log.debug("classifier counters: %s", exc)
        out = {"voice": {"packets": 0, "bytes": 0}, "other": {"packets": 0, "bytes": 0}}
        for dev in (self.device, P.ifb_name(self.device)):
            stats = self.tc.class_stats(dev)
            for name, minor in (("voice", P.VOICE), ("other", P.DEFAULT)):
                packets, nbytes = stats.get(P.handle(minor), (0, 0))
                out[name]["packets"] += packets
                out[name]["bytes"] += nbytes
        return out

    def quality(self) -> dict[FiveTuple, dict[str, Any]]:
        return classifier_quality(self._clf)

    def status(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "applied": self.applied,
                "classifier": self.classifier, "leaf": self.leaf,
                "counters": self.counters(),
                "warnings": [a.as_dict() for a in self._alerts.values()]}


def _ifname(index: int) -> str | None:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


def _what(obj: P.Obj) -> str:
    if isinstance(obj, P.Ifb):
        return f"ifb {obj.name}"
    return f"{type(obj).__name__.lower()} on {obj.dev}"
