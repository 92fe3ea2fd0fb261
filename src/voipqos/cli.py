"""`voipqos` command line: argument parsing and printing only; the work is elsewhere.

Exit codes: 0 ok, 1 runtime failure (daemon unreachable, kernel refused), 2 bad config
or usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__, config
from .conntrack import Snapshot, parse
from .detect import DetectConfig, Detector
from .hysteresis import Hysteresis, HysteresisConfig

DEFAULT_CONFIG = os.environ.get("VOIPQOS_CONFIG", config.DEFAULT_PATH)

STATE_LABEL = {
    "off": "OFF (disabled)", "watching": "WATCHING (no call, line not shaped)",
    "on": "ON (call active)", "forced_on": "FORCED ON", "forced_off": "FORCED OFF",
}


class CliError(RuntimeError):
    """A one-line failure with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def load_config(path: str) -> config.Config:
    try:
        return config.load(path)
    except config.ConfigError as exc:
        raise CliError(str(exc), 2) from None


def setup_logging(level: str, foreground: bool) -> None:
    """syslog when the system has one (OpenWrt's logd, journald), stderr otherwise."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    if os.path.exists("/dev/log") and not (foreground and sys.stderr.isatty()):
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("voipqos[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s voipqos %(levelname)s: %(message)s"))
    root.handlers[:] = [handler]


def _daemonize() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    fd = os.open(os.devnull, os.O_RDWR)
    for std in (0, 1, 2):
        os.dup2(fd, std)


# -- commands that run on the router -------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from . import daemon, hostinfo, service
    from .profile import LogProfile, ProfileError

    cfg = load_config(args.config)
    if not cfg.enabled:
        # disabled must mean unshaped, whatever a killed predecessor left on the device
        print("voipqos: disabled in config (main.enabled=0): not running")
        if args.dry_run:
            return 0
        args.command = "remove"
        return cmd_profile(args)
    setup_logging(cfg.log_level, args.foreground)
    if args.dry_run:
        def factory(c: config.Config, dev: str):
            return LogProfile(c)
    else:
        from .backends import make_profile as factory
    try:
        d = daemon.Daemon(cfg, args.config, factory, observer_factory=_observer)
    except (hostinfo.DeviceError, ProfileError) as exc:
        raise CliError(str(exc), 2) from None
    if not args.foreground:
        _daemonize()
    from .endpoints import EndpointError

    try:
        return service.run(d)
    except (service.AlreadyRunning, EndpointError) as exc:
        raise CliError(str(exc)) from None


def _observer() -> Any:
    """The header-evidence observer, on the profiles' pin directory (dry runs too: it
    only observes)."""
    from .htb import DEFAULT_PIN_DIR
    from .observer import Observer

    return Observer(DEFAULT_PIN_DIR)


def _remove_observer(device: str) -> None:
    from .htb import DEFAULT_PIN_DIR

    try:
        from .bpf import BpfError
        from .observer import remove
    except ImportError:  # no ctypes: no observer could have run
        return
    try:
        remove(DEFAULT_PIN_DIR, device)
    except BpfError as exc:
        raise CliError(f"remove failed: observer: {exc}") from None


def cmd_profile(args: argparse.Namespace) -> int:
    """`apply` / `remove`: one-shot switching for scripts, the init script and recovery.
    Both hold the daemon's pid lock, so they never race a running daemon; `remove --wait`
    (the init script, right after procd's SIGTERM) lets the daemon remove its own profile
    first and then deletes whatever is left."""
    from . import hostinfo
    from .backends import make_profile
    from .profile import ProfileError
    from .service import AlreadyRunning, pid_lock

    cfg = load_config(args.config)
    try:
        with pid_lock(cfg.run_dir, getattr(args, "wait", 0.0)):
            device = hostinfo.resolve_device(cfg.interface)
            prof = make_profile(cfg, device)
            if args.command == "apply":
                prof.apply()
            else:
                _remove_observer(device)  # first: its filter keeps a clsact the profile made
                prof.remove()
    except AlreadyRunning as exc:
        raise CliError(f"{exc}: it switches the profile itself (voipqos on|off|auto), and "
                       "removes it when stopped (/etc/init.d/voipqos stop)") from None
    except hostinfo.DeviceError as exc:
        raise CliError(str(exc), 2) from None
    except PermissionError as exc:  # the pid lock in run_dir, or the kernel: root only
        raise CliError(f"{args.command}: {exc.strerror}: {exc.filename} (run as root)") from None
    except ProfileError as exc:
        more = ", nothing left applied" if args.command == "apply" else ""
        raise CliError(f"{args.command} failed{more}: {exc}") from None
    print(f"voipqos: profile {'applied' if args.command == 'apply' else 'removed'} "
          f"({prof.name})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .probe import flow_offload, format_report, probe, report

    rep = report(probe(), flow_offload())
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    load_config(args.config)
    print(f"{args.config}: ok")
    return 0


def _read_snapshot(path: str, cfg: config.Config, taken_at: float) -> Snapshot:
    """One saved table, streamed line by line; a file that is not a conntrack table is
    a usage error naming it."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            snap = parse((line.rstrip("\n") for line in f), cfg.sip_ports, taken_at)
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}", 2) from None
    if snap.parsed == 0 and snap.skipped == 0 and snap.malformed > 0:
        raise CliError(f"{path}: not a conntrack table ({snap.malformed} lines, none in "
                       "the kernel's layout)", 2)
    return snap


def _out_of_order(prev: Snapshot, cur: Snapshot) -> str | None:
    """Why `cur` cannot have been taken after `prev`: counters only grow, so most flows
    of both going down means the files were given in the wrong order."""
    common = down = 0
    for key, e in cur.entries.items():
        p = prev.entries.get(key)
        if p is None or e.orig_packets is None or p.orig_packets is None:
            continue
        common += 1
        down += (e.orig_packets + e.reply_packets) < (p.orig_packets + p.reply_packets)
    if down and down * 2 > common:
        return f"counters of {down} of {common} flows went down"
    return None


def _print_json_rows(doc: dict[str, Any], key: str) -> None:
    """`doc` as JSON with its `key` list one row a line, written row by row: a 100k-entry
    table is not turned into one big indented string first."""
    out = sys.stdout
    head = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items() if k != key)
    out.write(f"{{{head}, {json.dumps(key)}: [")
    for i, row in enumerate(doc[key]):
        out.write(("," if i else "") + "\n  " + json.dumps(row))
    out.write("\n]}\n")


NO_HEADERS = ("offline snapshots carry no packet-header evidence: verdicts from conntrack "
              "counters only (the router's observer can confirm a call by its RTP/STUN "
              "headers sooner)")


def cmd_analyze(args: argparse.Namespace) -> int:
    """Feed the saved tables to the daemon's own Detector and Hysteresis, one poll per
    file, `--interval` apart: the verdicts are those the service would give at the last
    one without its packet-header observer (a saved table holds no RTP/STUN header
    counts). Only two snapshots are held at a time."""
    from .documents import flows_document

    path = Path(args.config)
    cfg = load_config(args.config) if path.exists() or args.config != DEFAULT_CONFIG \
        else config.defaults()
    if len(args.snapshots) < 2:
        raise CliError("analyze: give at least two snapshots (rates need two)", 2)
    if args.interval <= 0:
        raise CliError("analyze: --interval must be above 0", 2)
    detector = Detector(DetectConfig.from_config(cfg))
    hyst = Hysteresis(HysteresisConfig.from_config(cfg), 0.0)
    prev: Snapshot | None = None
    malformed = 0
    for i, name in enumerate(args.snapshots):
        snap = _read_snapshot(name, cfg, taken_at=i * args.interval)
        why = _out_of_order(prev, snap) if prev is not None else None
        if why:
            raise CliError(f"{name}: out of order after {args.snapshots[i - 1]}: {why}", 2)
        det = detector.update(snap)
        hyst.step(snap.taken_at, len(det.calls))
        malformed += snap.malformed
        prev = snap
    doc = flows_document(det)
    doc["malformed"] = malformed
    doc["snapshots"] = len(args.snapshots)
    doc["history_s"] = round((len(args.snapshots) - 1) * args.interval, 3)
    doc["profile"] = {"on": hyst.active, "reason": hyst.reason}
    if args.json:
        _print_json_rows(doc, "flows")
    else:
        print(f"{doc['snapshots']} snapshots, {doc['history_s']:g} s of history; profile "
              f"{'on' if hyst.active else 'off'} ({hyst.reason})")
        print(NO_HEADERS)
        print(format_flows(doc))
    return 0


# -- commands that talk to the daemon -------------------------------------------------------


def _client(args: argparse.Namespace):
    from .rpc_client import LocalClient

    if getattr(args, "router", None):
        from .remote import from_args

        return from_args(args)
    cfg = load_config(args.config)
    if not cfg.rpc_listen:
        raise CliError("main.rpc_listen is empty: the local endpoint is off "
                       "(use `ubus call voipqos status` on OpenWrt)", 2)
    return LocalClient(cfg.rpc_listen, str(Path(cfg.run_dir, "rpc.secret")))


def _call(args: argparse.Namespace, method: str, params: dict[str, Any] | None = None) -> dict:
    from .rpc_client import RpcError

    client = _client(args)
    try:
        return client.call(method, params or {})
    except RpcError as exc:
        raise CliError(str(exc)) from None
    finally:  # a router keeps sessions until they expire: end ours
        with contextlib.suppress(RpcError):
            client.logout()


def cmd_status(args: argparse.Namespace) -> int:
    doc = _call(args, "status")
    print(json.dumps(doc, indent=2) if args.json else format_status(doc))
    return 0


def cmd_flows(args: argparse.Namespace) -> int:
    doc = _call(args, "flows", {"all": args.all})
    print(json.dumps(doc, indent=2) if args.json else format_flows(doc))
    return 0


def cmd_mode(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"mode": args.command}
    if args.command != "auto" and args.expires:
        params["expires"] = args.expires
    doc = _call(args, "set_mode", params)
    print(f"voipqos: mode {doc['mode']}, state {doc['state']}")
    return 0


# -- printing -------------------------------------------------------------------------------


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _ago(t: float) -> str:
    s = max(0, int(time.time() - t))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_status(doc: dict[str, Any]) -> str:
    prof = doc.get("profile", {})
    out = [
        f"voipqos {doc['version']}: {STATE_LABEL.get(doc['state'], doc['state'])}",
        f"  since {_clock(doc['since'])} ({_ago(doc['since'])} ago): {doc['reason']}",
        f"  device {doc['device']}, backend {prof.get('backend', '?')}, classifier "
        f"{prof.get('classifier', '-')}, profile {'applied' if doc['active'] else 'not applied'}",
    ]
    if doc.get("mode_expires"):
        out.append(f"  override ends at {_clock(doc['mode_expires'])}")
    obs = doc.get("observer")  # absent from an older router's status
    if obs:
        out.append(f"  header evidence: observer on, {obs['flows']} flow(s)"
                   if obs["state"] == "on" else f"  header evidence off: {obs['reason']}")
    out.append(f"calls: {len(doc['calls'])}")
    for c in doc["calls"]:
        out.append(f"  {c['lan_host']} <-> {c['far_host']}  {c['flows']} flow(s)  "
                   f"out {c['pps_out']:.0f} pps {c['kbps_out']:.0f} kbit/s  "
                   f"in {c['pps_in']:.0f} pps {c['kbps_in']:.0f} kbit/s  "
                   f"{c['duration']:.0f} s{'  SIP' if c['sip'] else ''}")
        out.extend(f"    {f['proto']} {f['src']}:{f['sport']} -> {f['dst']}:{f['dport']}"
                   for f in c.get("flow_list", []))
        if "quality" in c:
            out.extend(format_quality(c["quality"], "    "))
    if doc.get("recent_calls"):
        out.append("recent calls:")
    for c in doc.get("recent_calls", []):
        out.append(f"  {_clock(c['ended'])}  {c['lan_host']} <-> {c['far_host']}  "
                   f"{c['duration']:.0f} s{'  SIP' if c['sip'] else ''}")
        out.extend(format_quality(c["quality"], "    "))
    voice = prof.get("counters", {}).get("voice")
    if voice:
        out.append(f"voice class: {voice['packets']} packets, {voice['bytes']} bytes")
    for w in doc.get("warnings", []):
        out.append(f"warning [{w['code']}]: {w['message']}" + (f"\n  fix: {w['fix']}"
                                                                 if w.get("fix") else ""))
    out.append("recent transitions:")
    for t in doc["transitions"][:5]:
        out.append(f"  {_clock(t['at'])}  {t['state']:<10} {t['reason']}")
    m = doc["metrics"]
    out.append(f"self: cpu {m['cpu_percent']:.1f}%, rss {m['rss_bytes'] / 1e6:.1f} MB, "
               f"poll {m['poll_ms']:.1f} ms, {m['entries']} entries parsed of {m['lines']}, "
               f"{m['malformed']} malformed")
    return "\n".join(out)


def format_quality(q: dict[str, Any], indent: str) -> list[str]:
    """A call's quality: the summary, then per direction as the router measured it."""
    out = [f"{indent}quality: {q['summary']}"]
    if not q["known"]:
        return out
    for name, label in (("ingress", "in "), ("egress", "out")):
        d = q[name]
        if d is None or not d["rtp"]:
            out.append(f"{indent}  {label}: no RTP seen")
            continue
        line = (f"{indent}  {label}: {_num(d['loss_percent'], '.1f')} % lost of "
                f"{d['expected']}, jitter {_num(d['jitter_ms'], '.1f')} ms, "
                f"MOS {_num(d['mos'], '.1f')}")
        rep = d.get("endpoint_report")
        if rep:
            line += (f"; endpoint reports {rep['loss_percent_last']:.1f} % lost, jitter "
                     f"{_num(rep['jitter_ms'], '.1f')} ms")
        out.append(line)
    rtt = q.get("rtt_ms") or {}
    if rtt:
        out.append(f"{indent}  round trip: "
                   + ", ".join(f"{side} side {ms:.0f} ms" for side, ms in rtt.items()))
    return out


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_flows(doc: dict[str, Any]) -> str:
    out = [f"{doc['calls']} call(s); {len(doc['flows'])} flow(s)"
           + (f" over {doc['interval']:.1f} s" if doc.get("interval") else ""),
           f"{'VERDICT':<11}{'PROTO':<6}{'ORIG SRC -> DST':<52}{'PPS OUT/IN':>14}"
           f"{'SIZE OUT/IN':>13}  REASONS"]
    for f in doc["flows"]:
        tup = f"{f['src']}:{f['sport']} -> {f['dst']}:{f['dport']}"
        pps = f"{_num(f['pps_out'], '.0f')}/{_num(f['pps_in'], '.0f')}"
        size = f"{_num(f['size_out'], 'd')}/{_num(f['size_in'], 'd')}"
        out.append(f"{f['verdict']:<11}{f['proto']:<6}{tup:<52}{pps:>14}{size:>13}  "
                   + "; ".join(f["reasons"]))
    return "\n".join(out)


# -- argument parsing -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voipqos", description="Shape the line only while a "
                                "VoIP call is active.")
    p.add_argument("--version", action="version", version=f"voipqos {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"UCI config file (default {DEFAULT_CONFIG})")
    remote = argparse.ArgumentParser(add_help=False)
    from .rpc_client import add_remote_arguments

    add_remote_arguments(remote)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("run", parents=[common], help="run the service")
    s.add_argument("--foreground", action="store_true", help="do not detach (procd, systemd)")
    s.add_argument("--dry-run", action="store_true",
                   help="detect and report only, never shape (log backend)")
    s.set_defaults(func=cmd_run)

    for name, func, text in (("status", cmd_status, "state, calls, counters, warnings"),
                             ("flows", cmd_flows, "flow table with verdicts and reasons")):
        s = sub.add_parser(name, parents=[common, remote], help=text)
        s.add_argument("--json", action="store_true")
        if name == "flows":
            s.add_argument("--all", action="store_true", help="include flows judged other")
        s.set_defaults(func=func)

    for name, text in (("on", "force the profile on"), ("off", "force the profile off"),
                       ("auto", "back to automatic detection")):
        s = sub.add_parser(name, parents=[common, remote], help=text)
        if name != "auto":
            s.add_argument("--expires", type=int, default=0, metavar="SECONDS",
                           help="return to auto after this many seconds")
        s.set_defaults(func=cmd_mode)

    s = sub.add_parser("analyze", parents=[common],
                       help="offline: saved copies of /proc/net/nf_conntrack, in time order "
                       "(conntrack counters only: no packet-header evidence)")
    s.add_argument("snapshots", nargs="+", metavar="SNAPSHOT",
                   help="two or more copies taken --interval seconds apart, oldest first")
    s.add_argument("--interval", type=float, default=1.0,
                   help="seconds between two copies (default 1)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_analyze)

    s = sub.add_parser("check-config", parents=[common], help="validate the config only")
    s.set_defaults(func=cmd_check_config)
    s = sub.add_parser("apply", parents=[common], help="switch the profile on and exit")
    s.set_defaults(func=cmd_profile)
    s = sub.add_parser("remove", parents=[common],
                       help="remove everything voipqos created on the device")
    s.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for a stopping daemon to exit first (default 0)")
    s.set_defaults(func=cmd_profile)
    s = sub.add_parser("check", parents=[common], help="kernel preflight")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"voipqos: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"voipqos: {exc.filename or ''}: {exc.strerror}".replace(": :", ":"),
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
