"""pyroute2 adapter: observe voipqos's objects on a device and apply plan steps to the kernel.

Works in the network namespace of the IPRoute it is given (tests and benches give one
inside a namespace). Without one, the work runs in a child process (tcworker.py) that
imports pyroute2, so the service itself never does: pyroute2 costs ~26 MiB of RSS
(0.7.9 and 0.9.x alike) and leaks per request (0.9.7: ~1.7 KB per link lookup), while
the profile is only switched during calls. The child ends itself when idle, taking both
with it. The class counters the status shows every few seconds are read in-process with
one small stdlib rtnetlink dump, so an idle service never starts the child.

Only pyroute2 calls that behave the same in 0.7.9 and 0.9.x are used:
`IPRoute.link("add"/"set"/"del")`, `link_lookup`, `get_links`, `get_qdiscs`, `get_classes`,
`get_filters`, and `tc()` with add/replace/del, add-class/change-class/del-class,
add-filter/del-filter (htb, pfifo, fq_codel, clsact, u32 + mirred). u32 selectors are never
read back (the versions decode them differently); see plan.FilterGroup.
"""

from __future__ import annotations

import errno
import logging
import pickle
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import plan as P
from .ctnetlink import attr_spans, dump_messages
from .profile import ProfileError

log = logging.getLogger(__name__)

WORKER_IDLE_S = 30.0  # a worker unused this long is replaced at the next call
WORKER_ORPHAN_S = 60.0  # the worker exits by itself after this long without a call
WORKER_CALL_S = 60.0  # one call's limit (the first includes importing pyroute2)


@dataclass(frozen=True)
class Foreign:
    """Someone else's tc object on the device (used to refuse stacking shapers)."""

    what: str  # "qdisc" | "filter"
    kind: str  # htb, cake, ingress, bpf, ...
    handle: int
    parent: int
    name: str = ""  # bpf program name, if any


def _kind(msg) -> str:
    return msg.get_attr("TCA_KIND") or ""


def _opts(msg) -> dict:
    opts = msg.get_attr("TCA_OPTIONS")
    if opts is None:
        return {}
    out = dict(opts.get("attrs", []))
    for key in ("limit",):
        if key in opts:
            out[key] = opts[key]
    return out


def _filter_prio_proto(msg) -> tuple[int, int]:
    info = msg["info"]
    proto = info & 0xFFFF
    return info >> 16, ((proto & 0xFF) << 8) | (proto >> 8)


def _u32_keys(rule: Sequence[P.Match]) -> list[str]:
    return [f"0x{m.value:08x}/0x{m.mask:08x}+{m.offset}" for m in rule] or ["0x0/0x0+0"]


def _netlink_error() -> type[Exception]:
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError


def _refusals() -> tuple[type[Exception], ...]:
    """What the kernel (or a vanished device) answers with: a refusal, rolled back and
    reported as ProfileError. Anything else is a bug: rolled back too, then re-raised."""
    return (_netlink_error(), OSError, ProfileError)


class Tc:
    """The kernel side of plan.py for one network namespace: in-process over `ipr` when
    given, else in the shared worker process (the service's case)."""

    def __init__(self, ipr: Any = None) -> None:
        self._local = Kernel(ipr) if ipr is not None else None

    def _run(self, method: str, *args: Any) -> Any:
        if self._local is None:
            return worker().call(method, *args)
        try:
            return getattr(self._local, method)(*args)
        except _netlink_error() as exc:  # e.g. the device went away between two dumps
            raise refusal(method, args, exc) from exc

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        else:
            worker().stop()

    def index(self, dev: str) -> int | None:
        if self._local is not None:
            return self._local.index(dev)
        try:
            return socket.if_nametoindex(dev)
        except OSError:
            return None

    def observe(self, dev: str) -> P.Plan:
        """voipqos's objects on `dev` and on its IFB, found by handle, prio and name."""
        return self._run("observe", dev)

    def foreign(self, dev: str) -> list[Foreign]:
        """Other tools' qdiscs on `dev` (kernel defaults with handle 0 excluded) and filters
        on its clsact hooks other than voipqos's redirect and the classifier's pref 1."""
        return self._run("foreign", dev)

    def class_stats(self, dev: str) -> dict[int, tuple[int, int]]:
        """classid → (packets, bytes) for voipqos's classes on `dev` (empty if none)."""
        if self._local is not None:
            return self._local.class_stats(dev)
        idx = self.index(dev)
        return {} if idx is None else class_counters(idx)

    def direct_packets(self, dev: str) -> int:
        """Packets HTB sent unclassified and unshaped (must stay 0: see plan.DEFAULT)."""
        return self._run("direct_packets", dev)

    def apply(self, steps: Iterable[P.Step]) -> None:
        """Run the steps; on the first failure undo this call's work and raise ProfileError."""
        self._run("apply", list(steps))


class Kernel:
    """Tc's work over one pyroute2 IPRoute (or NetNS) in this process."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr

    def close(self) -> None:
        self.ipr.close()

    # ---- reading ----
    def index(self, dev: str) -> int | None:
        found = self.ipr.link_lookup(ifname=dev)
        return found[0] if found else None

    def _require(self, dev: str) -> int:
        idx = self.index(dev)
        if idx is None:
            raise ProfileError(f"device {dev!r} does not exist")
        return idx

    def observe(self, dev: str) -> P.Plan:
        idx = self._require(dev)
        objs: list[P.Obj] = []
        protected: set[tuple] = set()
        objs += self._tree(dev, idx)
        for q in self.ipr.get_qdiscs(index=idx):
            if _kind(q) != "clsact":
                continue
            clsact = P.Qdisc(dev, P.TC_H_CLSACT, P.CLSACT_HANDLE, "clsact")
            objs.append(clsact)
            for f in self._filters(idx, P.TC_H_INGRESS) + self._filters(idx, P.TC_H_EGRESS):
                prio, proto = _filter_prio_proto(f)
                if f["parent"] == P.TC_H_INGRESS and prio == P.REDIRECT_PRIO:
                    fg = P.FilterGroup(dev, P.TC_H_INGRESS, prio, proto, ((),),
                                       redirect=P.ifb_name(dev))
                    if fg not in objs:
                        objs.append(fg)
                else:
                    protected.add(clsact.key)
        ifb = P.ifb_name(dev)
        ifb_idx = self.index(ifb)
        if ifb_idx is not None and self._kind_of(ifb_idx) == "ifb":
            objs.insert(0, P.Ifb(ifb))
            objs += self._tree(ifb, ifb_idx)
        return P.Plan(tuple(objs), protected=frozenset(protected))

    def _kind_of(self, idx: int) -> str:
        return self.ipr.get_links(idx)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") or ""

    def _filters(self, idx: int, parent: int, heads: bool = True) -> list:
        """Filters under `parent`; `heads`: one entry per (prio, protocol) group."""
        try:
            return [f for f in self.ipr.get_filters(index=idx, parent=parent)
                    if (f["handle"] == 0) == heads]
        except _netlink_error() as exc:
            if exc.code in (errno.EINVAL, errno.ENOENT):
                return []
            raise

    def _tree(self, dev: str, idx: int) -> list[P.Obj]:
        root = P.handle(P.ROOT)
        qdiscs = self.ipr.get_qdiscs(index=idx)
        top = [q for q in qdiscs if q["parent"] == P.TC_H_ROOT]
        if not top or top[0]["handle"] != root or _kind(top[0]) != "htb":
            return []
        init = _opts(top[0]).get("TCA_HTB_INIT", {})
        objs: list[P.Obj] = [P.Qdisc(dev, P.TC_H_ROOT, root, "htb",
                                     (("default", init.get("defcls", 0)),))]
        ours = set()
        for c in self.ipr.get_classes(index=idx):
            if c["handle"] >> 16 != P.MAJOR:
                continue
            parms = _opts(c).get("TCA_HTB_PARMS", {})
            parent = root if c["parent"] == P.TC_H_ROOT else c["parent"]  # top class
            objs.append(P.Class(dev, c["handle"], parent, parms.get("rate", 0) * 8 // 1000,
                                parms.get("ceil", 0) * 8 // 1000, parms.get("prio", 0)))
            ours.add(c["handle"])
        for q in qdiscs:
            if q["parent"] in ours:
                limit = _opts(q).get("limit")
                opts = (("limit", limit),) if _kind(q) == "pfifo" and limit else ()
                objs.append(P.Qdisc(dev, q["parent"], q["handle"], _kind(q), opts))
        for f in self._filters(idx, root):
            prio, proto = _filter_prio_proto(f)
            fg = P.FilterGroup(dev, root, prio, proto)
            if fg not in objs:
                objs.append(fg)
        return objs

    def foreign(self, dev: str) -> list[Foreign]:
        idx = self._require(dev)
        out = []
        for q in self.ipr.get_qdiscs(index=idx):
            kind = _kind(q)
            if q["handle"] >> 16 in (P.MAJOR, P.LEAF_VOICE_MAJOR, P.LEAF_DEFAULT_MAJOR):
                continue
            if kind == "clsact" or (q["handle"] == 0 and kind != "ingress"):
                continue
            out.append(Foreign("qdisc", kind, q["handle"], q["parent"]))
        for parent in (P.TC_H_INGRESS, P.TC_H_EGRESS):
            seen = set()
            for f in self._filters(idx, parent, heads=False):
                prio, _ = _filter_prio_proto(f)
                if prio in (1, P.REDIRECT_PRIO) or prio in seen:
                    continue
                seen.add(prio)
                name = str(_opts(f).get("TCA_BPF_NAME", ""))
                out.append(Foreign("filter", _kind(f), prio, parent, name))
        return out

    def class_stats(self, dev: str) -> dict[int, tuple[int, int]]:
        idx = self.index(dev)
        if idx is None:
            return {}
        out = {}
        for c in self.ipr.get_classes(index=idx):
            if c["handle"] >> 16 == P.MAJOR:
                st = c.get_attr("TCA_STATS") or {}
                out[c["handle"]] = (st.get("packets", 0), st.get("bytes", 0))
        return out

    def direct_packets(self, dev: str) -> int:
        idx = self.index(dev)
        for q in self.ipr.get_qdiscs(index=idx) if idx is not None else ():
            if q["handle"] == P.handle(P.ROOT) and _kind(q) == "htb":
                return _opts(q).get("TCA_HTB_INIT", {}).get("direct_pkts", 0)
        return 0

    # ---- writing ----
    def apply(self, steps: Iterable[P.Step]) -> None:
        undo: list[Callable[[], None]] = []
        refusals = _refusals()
        for step in steps:
            try:
                undo.append(self._do(step))
            except Exception as exc:  # never leave a half-built tree, whatever failed
                for fn in reversed(undo):
                    try:
                        fn()
                    except Exception as again:  # keep undoing the rest
                        log.warning("rollback step failed: %s", again)
                if not isinstance(exc, refusals):
                    raise  # a bug, not the kernel saying no: keep its type and traceback
                raise ProfileError(f"{step.op} {_describe(step.obj)}: {_reason(exc)}") from exc

    def _do(self, step: P.Step) -> Callable[[], None]:
        obj = step.obj
        if step.op == "delete":
            self._delete(obj)
            return lambda: None  # deletes come last in a diff: nothing after them to fail
        if step.op == "change":
            assert step.old is not None
            old = step.old
            self._write(obj, "change")
            return lambda: self._write(old, "change")
        self._write(obj, "add")
        return lambda: self._delete(obj)

    def _write(self, obj: P.Obj, op: str) -> None:
        if isinstance(obj, P.Ifb):
            self.ipr.link("add", ifname=obj.name, kind="ifb")
            self.ipr.link("set", index=self._require(obj.name), state="up")
            return
        idx = self._require(obj.dev)
        if isinstance(obj, P.Qdisc):
            verb = "add" if op == "add" else "replace"
            if obj.kind == "clsact":
                self.ipr.tc(verb, "clsact", idx)
            else:
                self.ipr.tc(verb, obj.kind, idx, obj.handle, parent=obj.parent, **dict(obj.opts))
        elif isinstance(obj, P.Class):
            self.ipr.tc(f"{op}-class", "htb", idx, obj.handle, parent=obj.parent,
                        rate=f"{obj.rate}kbit", ceil=f"{obj.ceil}kbit", prio=obj.prio)
        else:
            self._add_filters(idx, obj)

    def _add_filters(self, idx: int, fg: P.FilterGroup) -> None:
        extra: dict = {"target": fg.flowid}
        if fg.redirect:
            extra["action"] = {"kind": "mirred", "direction": "egress", "action": "redirect",
                               "ifindex": self._require(fg.redirect)}
        for rule in fg.rules:
            self.ipr.tc("add-filter", "u32", idx, parent=fg.parent, prio=fg.prio,
                        protocol=fg.protocol, keys=_u32_keys(rule), **extra)

    def _delete(self, obj: P.Obj) -> None:
        try:
            if isinstance(obj, P.Ifb):
                idx = self.index(obj.name)
                if idx is not None:
                    self.ipr.link("del", index=idx)
                return
            idx = self.index(obj.dev)
            if idx is None:
                return
            if isinstance(obj, P.Qdisc):
                self.ipr.tc("del", obj.kind, idx, obj.handle, parent=obj.parent)
            elif isinstance(obj, P.Class):
                # pyroute2 encodes htb parameters even for a delete
                self.ipr.tc("del-class", "htb", idx, obj.handle, parent=obj.parent,
                            rate=f"{obj.rate}kbit", ceil=f"{obj.ceil}kbit")
            else:
                self.ipr.tc("del-filter", "u32", idx, parent=obj.parent, prio=obj.prio,
                            protocol=obj.protocol, target=0, keys=["0x0/0x0+0"])
        except _netlink_error() as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise


def _describe(obj: P.Obj) -> str:
    if isinstance(obj, P.Ifb):
        return f"ifb {obj.name}"
    if isinstance(obj, P.Qdisc):
        return f"qdisc {obj.kind} {obj.handle >> 16:x}: on {obj.dev}"
    if isinstance(obj, P.Class):
        return f"class {obj.handle >> 16:x}:{obj.handle & 0xFFFF:x} on {obj.dev}"
    return f"filter prio {obj.prio} on {obj.dev}"


def refusal(method: str, args: tuple, exc: BaseException) -> ProfileError:
    """A kernel error while reading, as the one-line ProfileError callers handle."""
    dev = f" {args[0]}" if args and isinstance(args[0], str) else ""
    return ProfileError(f"{method}{dev}: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _netlink_error()):
        return f"{errno.errorcode.get(exc.code, exc.code)} ({exc.args[-1] if exc.args else ''})"
    return str(exc) or type(exc).__name__


# ---- class counters without pyroute2 (the status reads them every few seconds) ----
RTM_GETTCLASS, TCA_STATS = 42, 3
_TCMSG = struct.Struct("=BxxxiIII")  # struct tcmsg: family, ifindex, handle, parent, info
_TC_STATS = struct.Struct("=QI")  # struct tc_stats: bytes, packets, ...


def class_counters(ifindex: int) -> dict[int, tuple[int, int]]:
    """classid → (packets, bytes) of voipqos's classes on the device with this index, in
    this process's network namespace: one RTM_GETTCLASS dump (the kernel answers for
    that device only), stdlib only, a fresh socket per call (nothing kept to grow)."""
    out = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        for buf, start, end in dump_messages(sock, RTM_GETTCLASS, 1,
                                             _TCMSG.pack(socket.AF_UNSPEC, ifindex, 0, 0, 0)):
            handle = _TCMSG.unpack_from(buf, start)[2]
            if handle >> 16 != P.MAJOR:
                continue
            stats = attr_spans(buf, start + _TCMSG.size, end).get(TCA_STATS)
            nbytes, packets = _TC_STATS.unpack_from(buf, stats[0]) if stats else (0, 0)
            out[handle] = (packets, nbytes)
    return out


# ---- the worker process ----
class Worker:
    """One child `python3 -m voipqos.tcworker` holding an IPRoute; calls are pickled over
    its stdin/stdout. Started at the first call, replaced when it was idle for
    WORKER_IDLE_S (it exits by itself after WORKER_ORPHAN_S), stopped by stop()."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.used = 0.0

    def call(self, method: str, *args: Any) -> Any:
        now = time.monotonic()
        if self.proc is not None and (self.proc.poll() is not None
                                      or now - self.used > WORKER_IDLE_S):
            self.stop()
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-m", "voipqos.tcworker"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            pickle.dump((method, args), proc.stdin)
            proc.stdin.flush()
            if not select.select([proc.stdout], [], [], WORKER_CALL_S)[0]:
                raise TimeoutError(f"no answer in {WORKER_CALL_S:.0f} s")
            ok, value = pickle.load(proc.stdout)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            self.stop()
            raise ProfileError(f"tc worker ({method}): {exc or 'exited'}") from exc
        self.used = time.monotonic()
        if ok:
            return value
        raise value

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_worker: Worker | None = None


def worker() -> Worker:
    """The process's one worker (the profile and the kernel probe share it)."""
    global _worker
    if _worker is None:
        _worker = Worker()
    return _worker
