"""The built-in HTB profile: plan.py's tree made real by tc.py, calls classified by bpf.py.

Every apply() reconciles from what is in the kernel, so a tree left by a crashed or
killed daemon is adopted and only its differences are changed. The BPF classifier sets
skb->priority to the voice class (plan.VOICE_CLASSID) on the WAN device's egress and
ingress (before the IFB redirect); when it cannot load, u32 filters on the HTB roots do
the same job from ports, EF marks and the call 5-tuples, and status says `u32`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import plan as P
from . import probe
from .config import Config
from .detect import FiveTuple
from .profile import ProfileError
from .tc import Tc

log = logging.getLogger(__name__)

DEFAULT_PIN_DIR = "/sys/fs/bpf/voipqos"


class HtbProfile:
    name = "htb"

    def __init__(self, cfg: Config, device: str, pin_dir: str = DEFAULT_PIN_DIR, *,
                 tc: Tc | None = None, features: P.Features | None = None,
                 netns: str | None = None, bpf_obj: Path | None = None) -> None:
        """`tc`, `netns` (for bpf's `ip netns exec`) and `features` let tests work in a
        namespace; `bpf_obj` overrides the classifier object (a bad one forces u32)."""
        self.cfg, self.device, self.pin_dir = cfg, device, pin_dir
        self.tc = tc if tc is not None else Tc()
        self.netns, self.bpf_obj = netns, bpf_obj
        self._features = features
        self.flows: frozenset[FiveTuple] = frozenset()
        self.applied = False
        self.classifier = "none"  # bpf | u32 | none
        self.leaf = ""
        self.rate_scale = 1.0
        self._clf: Any = None  # bpf.Classifier while the BPF path runs
        self._alerts: dict[str, P.Alert] = {}

    @property
    def features(self) -> P.Features:
        if self._features is None:
            self._features = probe.probe()
        return self._features

    def _hooks(self) -> tuple[str, ...]:
        return ("egress", "ingress") if self.cfg.download > 0 else ("egress",)

    def _reconcile(self, classifier: str) -> None:
        cfg = self.cfg
        if self.rate_scale < 1:
            cfg = replace(cfg, upload=max(1, int(cfg.upload * self.rate_scale)),
                          download=int(cfg.download * self.rate_scale))
        want = P.build(cfg, self.device, self.features, classifier, self.flows)
        self.tc.apply(P.diff(want, self.tc.observe(self.device)))
        self._alerts.pop("leaf_fallback", None)
        self._alerts.update((a.code, a) for a in want.alerts)
        self.leaf = "fq_codel" if self.features.fq_codel else "pfifo"

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
        self._alerts["bpf_fallback"] = P.Alert(
            "bpf_fallback", f"BPF classifier unavailable, using u32 rules: {why}",
            "install kmod-sched-bpf and tc-bpf (or tc-full)")
        return False

    def apply(self, rate_scale: float = 1.0) -> None:
        self.rate_scale = rate_scale
        refusal = probe.foreign_shaper(self.device, self.tc.foreign(self.device))
        if refusal:
            self._alerts["other_shaper"] = P.Alert("other_shaper", refusal,
                                                   "remove the other shaper or use backend sqm")
            raise ProfileError(refusal)
        self._alerts.pop("other_shaper", None)
        was = self.applied
        try:
            use_bpf = self._clf is not None or (self.classifier != "u32" and self.features.cls_bpf)
            self._reconcile("bpf" if use_bpf else "u32")
            if use_bpf and self._clf is None and not self._start_bpf():
                use_bpf = False
                self._reconcile("u32")
            if self._clf is not None:  # hooks and rules may have changed with a reload
                have = {h for _, h in self._clf.attached}
                for hook in set(self._hooks()) - have:
                    self._clf.attach(self.device, hook)
                for hook in have - set(self._hooks()):  # download shaping turned off
                    self._clf.detach(self.device, hook)
                self._clf.set_rules(P.VOICE_CLASSID, self.cfg.dscp_mark, self.cfg.trust_ef,
                                    self.cfg.voice_ports)
            elif not use_bpf and "bpf_fallback" not in self._alerts:
                self._fallback("cls_bpf missing in the kernel")
        except Exception as exc:  # whatever failed, never leave a half-built tree
            if not was:
                self._teardown()
            if isinstance(exc, ProfileError):
                raise
            raise ProfileError(f"apply on {self.device}: {exc}") from exc
        self.classifier = "bpf" if use_bpf else "u32"
        self.applied = True

    def remove(self) -> None:
        """Detach and unpin the classifier (also a crashed run's) and delete voipqos's
        tc objects and IFB on the device; found by handle and name, no state needed."""
        self._teardown()
        self.applied = False
        self.classifier = "none"

    def _teardown(self) -> None:
        problem = ""
        try:
            from . import bpf
        except ImportError:
            bpf = None  # type: ignore[assignment]
        if bpf is not None:
            clf = self._clf or bpf.Classifier(self.pin_dir, self.bpf_obj, self.netns)
            try:
                for hook in ("egress", "ingress"):
                    clf.detach(self.device, hook)
                clf.close()
            except bpf.BpfError as exc:
                problem = str(exc)
        self._clf = None
        self.tc.apply(P.diff(P.Plan(), self.tc.observe(self.device)))
        if problem:
            raise ProfileError(f"classifier removal: {problem}")

    def set_flows(self, flows: Collection[FiveTuple]) -> None:
        self.flows = frozenset(flows)
        if not self.applied:
            return
        if self._clf is not None:
            from .bpf import BpfError
            try:
                self._clf.set_flows(self.flows)
            except BpfError as exc:
                raise ProfileError(str(exc)) from None
        else:
            self._reconcile("u32")

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

    def status(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "applied": self.applied,
                "classifier": self.classifier, "leaf": self.leaf,
                "counters": self.counters(),
                "warnings": [a.as_dict() for a in self._alerts.values()]}
