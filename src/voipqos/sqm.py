"""The SQM backend: switch an existing sqm-scripts queue on and off instead of our own HTB.

sqm keeps its queues in /etc/config/sqm (`config queue` sections with `enabled`,
`interface` = the device, `download`, `upload`, `qdisc`, `script`, ...). Its
`/usr/lib/sqm/run.sh start IFACE` starts only the enabled sections on IFACE (and skips one
whose `/var/run/sqm/IFACE.state` exists); `run.sh stop IFACE` tears down what that state
file describes. So switching on = `enabled '1'` + stop + start of that one interface,
switching off = `enabled '0'` + stop. Other sections and interfaces are never touched.

The BPF classifier is attached on the device's egress with no class (skb->priority is
left alone) so it only marks the call's packets EF: layer_cake's diffserv tins or
simple.qos's priority band then put them first.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from .alerts import Alert
from .config import Config
from .detect import FiveTuple
from .hostinfo import device_exists
from .profile import ProfileError, classifier_hooks, classifier_quality
from .uci import Section, UciSyntaxError, format_uci, parse_uci

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


class SqmProfile:
    name = "sqm"

    def __init__(self, cfg: Config, device: str, pin_dir: str = "/sys/fs/bpf/voipqos", *,
                 config_path: str = "/etc/config/sqm", run_sh: str = "/usr/lib/sqm/run.sh",
                 state_dir: str = "/var/run/sqm", runner: Runner = _run, netns: str | None = None,
                 bpf_obj: Path | None = None, use_bpf: bool = True) -> None:
        self.cfg, self.device, self.pin_dir = cfg, device, pin_dir
        self.config_path, self.run_sh, self.runner = Path(config_path), run_sh, runner
        self.state_dir = Path(state_dir)
        self.netns, self.bpf_obj, self.use_bpf = netns, bpf_obj, use_bpf
        self.applied = False
        self.flows: frozenset[FiveTuple] = frozenset()
        self._clf: Any = None
        self._alerts: dict[str, Alert] = {}

    # ---- sqm config ----
    def _load(self) -> list[Section]:
        try:
            return parse_uci(self.config_path.read_bytes(), str(self.config_path))
        except OSError as exc:
            raise ProfileError(f"{self.config_path}: cannot read sqm config: "
                               f"{exc.strerror} (is sqm-scripts installed?)") from exc
        except UciSyntaxError as exc:
            raise ProfileError(str(exc)) from exc

    def _queue(self, sections: list[Section]) -> Section:
        queues = [s for s in sections if s.type == "queue"]
        if self.cfg.sqm_section:
            found = [s for s in queues if s.name == self.cfg.sqm_section]
            if not found:
                raise ProfileError(f"main.sqm_section: no queue {self.cfg.sqm_section!r} in "
                                   f"{self.config_path}")
            return found[0]
        found = [s for s in queues if s.options.get("interface") == self.device]
        if not found:
            raise ProfileError(f"{self.config_path}: no sqm queue with interface "
                               f"{self.device!r}; set main.sqm_section")
        return found[0]

    def _write(self, sections: list[Section]) -> None:
        tmp = self.config_path.with_name(f".{self.config_path.name}.voipqos")
        tmp.write_text(format_uci(sections))
        os.replace(tmp, self.config_path)

    def _set_enabled(self, on: bool) -> tuple[str, str]:
        """Set the queue's `enabled`; returns (interface, previous value)."""
        sections = self._load()
        queue = self._queue(sections)
        iface = queue.options.get("interface")
        if not isinstance(iface, str) or not iface:
            raise ProfileError(f"sqm queue {queue.name!r}: no interface option")
        old = queue.options.get("enabled", "0")
        want = "1" if on else "0"
        if old != want:
            queue.options["enabled"] = want
            self._write(sections)
        return iface, str(old)

    def _sqm(self, action: str, iface: str) -> None:
        res = self.runner([self.run_sh, action, iface])
        if res.returncode:
            why = (res.stderr or res.stdout or f"exit {res.returncode}").strip().splitlines()
            raise ProfileError(f"{self.run_sh} {action} {iface}: {why[-1]}")

    # ---- Profile ----
    def apply(self, rate_scale: float = 1.0) -> None:
        """Enable and (re)start the queue; its rates are sqm's own, so no rate_scale."""
        iface, old = self._set_enabled(True)
        try:
            if old != "1" or not (self.state_dir / f"{iface}.state").exists():
                self._sqm("stop", iface)
                self._sqm("start", iface)
        except ProfileError:
            self._set_enabled(old == "1")
            self.runner([self.run_sh, "stop", iface])
            raise
        self.applied = True
        if self.use_bpf and self._clf is None:
            self._start_marking()
        elif self._clf is not None:  # a re-apply: the hooks as the kernel has them
            classifier_hooks(self._clf, self.device, self._hooks())

    def _start_marking(self) -> None:
        try:
            from . import bpf
        except ImportError as exc:
            self._no_marking(f"bpf module unavailable: {exc}")
            return
        try:  # voice class 0: cake/simple.qos pick the tin from the EF mark
            self._clf = bpf.start(bpf.Classifier(self.pin_dir, self.bpf_obj, self.netns),
                                  self.device, self._hooks(), 0, self.cfg.dscp_mark,
                                  self.cfg.trust_ef, self.cfg.voice_ports, self.flows)
        except bpf.BpfError as exc:
            self._no_marking(str(exc))
            return
        self._alerts.pop("bpf_fallback", None)

    def _hooks(self) -> tuple[str, ...]:
        """Egress always; ingress too when sqm shapes download, so the EF mark is set
        before sqm's redirect to its IFB (our filter runs first, at pref 1)."""
        download = self._queue(self._load()).options.get("download", "0")
        return ("egress", "ingress") if download not in ("", "0") else ("egress",)

    def _no_marking(self, why: str) -> None:
        log.warning("EF marking unavailable with sqm: %s", why)
        self._alerts["bpf_fallback"] = Alert(
            "bpf_fallback", f"calls are not marked EF, sqm shapes without priority: {why}",
            "install kmod-sched-bpf and tc-bpf (or tc-full)")

    def remove(self) -> None:
        self._stop_marking()
        iface, _ = self._set_enabled(False)
        self._sqm("stop", iface)
        self.applied = False

    def _stop_marking(self) -> None:
        try:
            from . import bpf
        except ImportError:
            return
        clf = self._clf or bpf.Classifier(self.pin_dir, self.bpf_obj, self.netns)
        self._clf = None
        try:
            for hook in ("egress", "ingress"):
                clf.detach(self.device, hook)
            clf.close()
        except bpf.BpfError as exc:
            log.warning("classifier removal: %s", exc)

    def set_flows(self, flows: Collection[FiveTuple]) -> None:
        """Replace the call tuples; on failure the previous set stays the profile's."""
        flows = frozenset(flows)
        if self._clf is not None:
            from .bpf import BpfError
            try:
                self._clf.set_flows(flows)
            except BpfError as exc:
                raise ProfileError(str(exc)) from exc
        self.flows = flows

    def check(self) -> str | None:
        """sqm restarts its own queue with the device (hotplug); ours is the EF marking."""
        if not self.applied:
            return None
        if not device_exists(self.device):
            return f"device {self.device} is gone"
        if self._clf is not None and not classifier_hooks(self._clf, self.device,
                                                          self._hooks(), repair=False):
            return f"the EF-marking classifier is not attached on {self.device}"
        return None

    def quality(self) -> dict[FiveTuple, dict[str, Any]]:
        return classifier_quality(self._clf)

    def status(self) -> dict[str, Any]:
        counters = {"voice": {"packets": 0, "bytes": 0}, "other": {"packets": 0, "bytes": 0}}
        if self._clf is not None:
            from .bpf import BpfError
            try:
                counters = self._clf.counters()
            except BpfError as exc:
                log.debug("classifier counters: %s", exc)
        return {"backend": self.name, "device": self.device, "applied": self.applied,
                "classifier": "bpf" if self._clf is not None else "none",
                "leaf": "sqm", "counters": counters,
                "warnings": [a.as_dict() for a in self._alerts.values()]}
