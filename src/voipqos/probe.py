"""Kernel preflight: what this kernel and its tools can do, found by really trying.

Qdiscs, classifiers and actions are probed on a temporary IFB device that the probe
creates and deletes (a module that is listed but fails to load counts as missing). The
result is cached per process; `report()` is the `voipqos check --json` document and
`format_report()` its text form. `foreign_shaper()` tells when another shaper (sqm,
qosify, a hand-made root qdisc) owns the device, so the HTB backend refuses instead of
stacking two shapers.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import alerts as A
from .alerts import Alert
from .conntrack import ACCT_SYSCTL
from .plan import TC_H_INGRESS, TC_H_ROOT, Features
from .tc import Foreign, worker
from .uci import UciSyntaxError, parse_uci

__all__ = ["Features", "flow_offload", "foreign_shaper", "format_report", "probe", "report"]

FW4_CONFIG = "/etc/config/firewall"
SHAPERS = {"htb", "hfsc", "cake", "tbf", "cbq", "drr", "qfq", "ets", "prio", "fq_pie", "netem"}

# feature -> (OpenWrt package that provides it, what voipqos uses it for)
NEEDS: dict[str, tuple[str, str]] = {
    "htb": ("kmod-sched-core", "the HTB profile (required by backend htb)"),
    "fq_codel": ("kernel CONFIG_NET_SCH_FQ_CODEL (built in on OpenWrt)",
                 "fair leaves in the HTB classes (else pfifo)"),
    "cake": ("kmod-sched-cake", "sqm's piece_of_cake/layer_cake (backend sqm)"),
    "ifb": ("kmod-ifb", "download shaping"),
    "clsact": ("kmod-sched-core", "the classifier hooks and the download redirect"),
    "u32": ("kmod-sched-core", "the download redirect and the fallback classifier"),
    "mirred": ("kmod-sched-core", "redirecting download traffic to the IFB"),
    "cls_bpf": ("kmod-sched-bpf", "the BPF call classifier (else u32 fallback) and the "
                "header-evidence observer (else conntrack rates alone)"),
    "bpffs": ("kernel CONFIG_BPF_SYSCALL", "pinning the classifier's and observer's maps"),
    "tc_bpf": ("tc-bpf (or tc-full)", "loading the classifier and the observer (ELF object)"),
    "conntrack_acct": ("kmod-nf-conntrack; sysctl net.netfilter.nf_conntrack_acct=1",
                       "per-flow packet counts for call detection"),
}

_cache: Features | None = None


def _tries(ipr: Any, idx: int) -> dict[str, Callable[[], None]]:
    from pyroute2.netlink.exceptions import NetlinkError

    def qdisc(kind: str) -> Callable[[], None]:
        def run() -> None:
            ipr.tc("add", kind, idx, 0x10000)
            ipr.tc("del", kind, idx, 0x10000)
        return run

    def clsact() -> None:
        ipr.tc("add", "clsact", idx)

    def u32() -> None:
        ipr.tc("add-filter", "u32", idx, parent=TC_H_INGRESS, prio=10, protocol=3,
               target=0, keys=["0x0/0x0+0"])

    def mirred() -> None:
        ipr.tc("add-filter", "u32", idx, parent=TC_H_INGRESS, prio=11, protocol=3, target=0,
               keys=["0x0/0x0+0"], action={"kind": "mirred", "direction": "egress",
                                           "action": "redirect", "ifindex": idx})

    def cls_bpf() -> None:
        # no program fd: a kernel with cls_bpf rejects the fd (EBADF/EINVAL), one without
        # it answers ENOENT for the unknown filter kind
        try:
            ipr.tc("add-filter", "bpf", idx, parent=TC_H_INGRESS, prio=12, protocol=3,
                   fd=0x7FFFFFFF, name="probe", direct_action=True)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.EOPNOTSUPP):
                raise

    return {"htb": qdisc("htb"), "fq_codel": qdisc("fq_codel"), "cake": qdisc("cake"),
            "clsact": clsact, "u32": u32, "mirred": mirred, "cls_bpf": cls_bpf}


def _kernel(ipr: Any) -> dict[str, bool]:
    from pyroute2.netlink.exceptions import NetlinkError

    name = f"vqprobe{os.getpid() % 100000}"
    try:
        ipr.link("add", ifname=name, kind="ifb")
    except NetlinkError:
        return dict.fromkeys(("ifb", "htb", "fq_codel", "cake", "clsact", "u32", "mirred",
                              "cls_bpf"), False)
    out = {"ifb": True}
    try:
        idx = ipr.link_lookup(ifname=name)[0]
        for feature, attempt in _tries(ipr, idx).items():
            try:
                attempt()
                out[feature] = True
            except (NetlinkError, OSError, ValueError, KeyError):
                out[feature] = False
    finally:
        ipr.link("del", ifname=name)
    return out


def _tc_bpf() -> bool:
    """iproute2 tc built with libbpf/ELF loading (`tc -V` names libbpf)."""
    if not shutil.which("tc"):
        return False
    try:
        res = subprocess.run(["tc", "-V"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "libbpf" in res.stdout or "elf" in res.stdout.lower()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def probe(ipr: Any = None, refresh: bool = False) -> Features:
    """Features of the kernel in `ipr`'s network namespace (the current one if None,
    cached, tried in tc's worker process so this one never imports pyroute2)."""
    global _cache
    if ipr is None and _cache is not None and not refresh:
        return _cache
    own = ipr is None
    kernel = worker().call("kernel_features") if own else _kernel(ipr)
    feats = Features(
        **kernel,
        bpffs="\tbpf\n" in _read("/proc/filesystems"),
        tc_bpf=_tc_bpf(),
        conntrack_acct=_read(ACCT_SYSCTL).strip() == "1",
    )
    if own:
        _cache = feats
    return feats


def report(features: Features, offload: str | None = None) -> dict[str, Any]:
    """The `voipqos check --json` document; `offload` is what flow_offload() found."""
    have = asdict(features)
    items = {name: {"present": have[name], "package": pkg, "used_for": why}
             for name, (pkg, why) in NEEDS.items()}
    warnings = [a.as_dict() for a in alerts(features)]
    if offload:
        warnings.append(A.offload(offload).as_dict())
    return {"ok": features.htb, "features": items, "warnings": warnings}


def flow_offload(fw_config: str = FW4_CONFIG) -> str | None:
    """What offloads forwarded flows past conntrack and tc, or None: fw4's
    flow_offloading options, or any nftables flowtable (set up by hand or by fw4)."""
    try:
        sections = parse_uci(Path(fw_config).read_bytes(), fw_config)
    except (OSError, UciSyntaxError):
        sections = []
    for sec in sections:
        for opt in ("flow_offloading_hw", "flow_offloading"):
            if sec.type == "defaults" and sec.options.get(opt) == "1":
                return f"firewall {opt} is on"
    if shutil.which("nft"):
        res = subprocess.run(["nft", "list", "flowtables"], capture_output=True, text=True)
        if "flowtable" in res.stdout:
            return "an nftables flowtable is set up"
    return None


def alerts(features: Features) -> list[Alert]:
    """Status warnings for what is missing (the daemon shows them next to its own)."""
    out = []
    if not features.conntrack_acct:
        out.append(A.acct_off())
    missing = [n for n in NEEDS if n not in ("conntrack_acct", "cake", "fq_codel") and
               not getattr(features, n)]
    if missing:
        pkgs = sorted({NEEDS[n][0] for n in missing})
        out.append(Alert("missing_kmod", "missing: " + ", ".join(missing),
                         "install " + " ".join(pkgs)))
    return out


def format_report(rep: dict[str, Any]) -> str:
    lines = []
    for name, item in rep["features"].items():
        mark = "ok     " if item["present"] else "MISSING"
        extra = "" if item["present"] else f"  -> {item['package']}"
        lines.append(f"{mark} {name:<15} {item['used_for']}{extra}")
    for w in rep["warnings"]:
        lines.append(f"warning [{w['code']}] {w['message']} (fix: {w['fix']})")
    lines.append("note: option conntrack_source 'netlink' needs kmod-nf-conntrack-netlink "
                 "(the default, proc, needs nothing more)")
    return "\n".join(lines)


def foreign_shaper(dev: str, found: Iterable[Foreign]) -> str | None:
    """One line naming another shaper on `dev`, or None. A non-default root qdisc, an
    `ingress` qdisc (sqm's download redirect) or qosify's BPF program all count: adding
    voipqos's HTB on top would either fail or stack two shapers."""
    for f in found:
        if f.what == "qdisc" and f.kind == "ingress":
            return (f"{dev} has an ingress qdisc (sqm or another download shaper): "
                    "stop it or use backend sqm")
        if f.what == "qdisc" and f.parent == TC_H_ROOT and f.handle:
            what = "another shaper" if f.kind in SHAPERS else "a foreign root qdisc"
            return (f"{dev} already has {what} ({f.kind} {f.handle >> 16:x}:): "
                    "remove it or use backend sqm")
        if f.what == "filter" and "qosify" in f.name:
            return f"{dev} runs qosify's classifier: stop qosify or use backend sqm"
    return None
