"""The voipqos UCI schema: every option typed, range-checked and documented in one table.

The table is the single source for validation, the shipped defaults, the README's
configuration reference and the LuCI datatypes (a test compares them). A bad value
raises ConfigError with one line naming `section.option`, the value and what is allowed
(a long value is quoted by a short prefix only). Numbers are ASCII digits only, as
LuCI's datatypes and the shell scripts that read the same file understand them.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .uci import UciSyntaxError, read_uci

DEFAULT_PATH = "/etc/config/voipqos"
SECTION = "main"  # `config voipqos 'main'`
SECTION_TYPE = "voipqos"


class ConfigError(ValueError):
    """One line naming section.option, the value and what is allowed."""


PortRange = tuple[int, int]


def _bool(v: str) -> bool:
    low = v.lower()
    if low in ("1", "yes", "on", "true", "enabled"):
        return True
    if low in ("0", "no", "off", "false", "disabled"):
        return False
    raise ValueError("a boolean (0 or 1)")


def shown(value: str, limit: int = 40) -> str:
    """A value as quoted in a message: its repr, cut to a short prefix."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        if not re.fullmatch(r"[0-9]{1,10}", v) or not lo <= int(v) <= hi:
            raise ValueError(f"a whole number from {lo} to {hi}")
        return int(v)

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(v: str) -> float:
        if not re.fullmatch(r"[0-9]{1,10}(\.[0-9]{1,10})?", v) or not lo <= float(v) <= hi:
            raise ValueError(f"a number from {lo:g} to {hi:g}")
        return float(v)

    return parse


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in allowed:
            raise ValueError("one of " + ", ".join(allowed))
        return v

    return parse


def _interface(v: str) -> str:
    # exactly LuCI's datatype or(uciname,netdevname), as the settings page checks it: a
    # logical interface (wan, wan6) or a device (eth0.2, pppoe-wan; @wan is netifd's
    # alias syntax), so whatever LuCI saves the daemon takes, and the other way round
    if re.fullmatch(r"[A-Za-z0-9_]+", v) or (
            re.fullmatch(r"[^:/%\s]{1,15}", v) and v not in (".", "..")):
        return v
    raise ValueError("a logical interface (wan) or a device name (eth0.2, pppoe-wan: "
                     "1-15 characters, no ':', '/', '%' or spaces)")


def _name(v: str) -> str:
    # logical interface names (wan, wan6, @wan) and device names (eth0.2, pppoe-wan)
    if not re.fullmatch(r"@?[A-Za-z0-9_.:-]{1,31}", v):
        raise ValueError("an interface or device name (letters, digits, _ . : -)")
    return v


def _optional_name(v: str) -> str:
    return v and _name(v)


LISTEN_FORMS = "unix:/PATH, 127.0.0.1:PORT, [::1]:PORT or localhost:PORT (loopback only)"


def listen_address(listen: str, any_port: bool = False) -> tuple[socket.AddressFamily, Any]:
    """The socket family and address of an `rpc_listen` value, parsed here only (the
    endpoint binds it, the CLI connects to it). Loopback or a unix socket, nothing else,
    so the endpoint can never face the network; port 0 (a free port) only if
    `any_port`, as tests bind. ValueError says what is allowed."""
    if listen.startswith("unix:/"):
        path = listen[5:]
        if re.search(r"\s", path) or len(path.encode()) > 107:  # sun_path holds 108
            raise ValueError("unix:/PATH with a path of at most 107 bytes, no spaces")
        return socket.AF_UNIX, path
    m = re.fullmatch(r"(\[::1\]|localhost|[0-9.]{7,15}):([0-9]{1,5})", listen)
    if m and (any_port or int(m.group(2)) > 0) and int(m.group(2)) < 65536:
        host = {"[::1]": "::1", "localhost": "127.0.0.1"}.get(m.group(1), m.group(1))
        try:
            if ipaddress.ip_address(host).is_loopback:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                return family, (host, int(m.group(2)))
        except ValueError:
            pass
    raise ValueError(LISTEN_FORMS)


def _listen(v: str) -> str:
    if v:
        try:
            listen_address(v)
        except ValueError as exc:
            raise ValueError(f"{exc}, or empty to disable") from None
    return v


def _path(v: str) -> str:
    if not re.fullmatch(r"/[^\s]*", v):
        raise ValueError("an absolute path")
    return v.rstrip("/") or "/"


def _port(v: str) -> int:
    return _int(1, 65535)(v)


def _port_range(v: str) -> PortRange:
    m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", v)
    if m:
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        if 1 <= lo <= hi <= 65535:
            return (lo, hi)
    raise ValueError("a port 1-65535 or a range LOW-HIGH")


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[str], Any]
    default: str | tuple[str, ...]
    doc: str
    tab: str
    datatype: str  # the LuCI datatype that accepts exactly what `parse` accepts

    @property
    def is_list(self) -> bool:
        return isinstance(self.default, tuple)


OPTIONS: tuple[Option, ...] = (
    # General
    Option("enabled", _bool, "1", "Run the service (0 = installed but idle).", "general", "bool"),
    Option("interface", _interface, "wan",
           "WAN logical interface (wan) or device (eth1, pppoe-wan) to shape.", "general",
           "or(uciname,netdevname)"),
    Option("backend", _choice("htb", "sqm"), "htb",
           "htb: built-in HTB shaper; sqm: switch an existing sqm-scripts queue.", "general",
           "string"),
    Option("upload", _int(0, 10_000_000), "10000",
           "Upload shaping rate in kbit/s, about 90-95% of the measured line rate.",
           "general", "and(uinteger,range(0,10000000))"),
    Option("download", _int(0, 10_000_000), "50000",
           "Download shaping rate in kbit/s (0 = do not shape download).", "general",
           "and(uinteger,range(0,10000000))"),
    Option("voice_rate", _int(8, 1_000_000), "1000",
           "Bandwidth in kbit/s guaranteed to the voice class (it may borrow up to the line).",
           "general", "and(uinteger,range(8,1000000))"),
    Option("drain_time", _float(0, 30), "2",
           "Seconds after switching on with the rates at drain_rate, to empty the modem's "
           "buffer fast (0 = off).", "general", "range(0,30)"),
    Option("drain_rate", _int(10, 100), "50",
           "Percent of upload/download used during drain_time.", "general",
           "and(uinteger,range(10,100))"),
    Option("sqm_section", _optional_name, "",
           "With backend sqm: the sqm queue section to switch (empty = the one on the "
           "interface).", "general", "string"),
    # Detection
    Option("poll_interval", _float(0.2, 10), "1",
           "Seconds between two looks at the connection table.", "detection", "range(0.2,10)"),
    Option("sip_ports", _port, ("5060", "5061"),
           "SIP signalling ports (UDP and TCP).", "detection", "and(uinteger,range(1,65535))"),
    Option("rtp_ports", _port_range, (),
           "If set, only UDP flows on these ports can count as call media.", "detection",
           "portrange"),
    Option("exclude_ports", _port_range, ("53", "67-68", "123", "137-138", "1900", "5353"),
           "UDP ports that are never call media (DNS, DHCP, NTP, NetBIOS, SSDP, mDNS).",
           "detection", "portrange"),
    Option("min_pps", _float(1, 1000), "12",
           "Lowest packet rate of a media flow, per direction (60 ms packets = 16.7 pps).",
           "detection", "range(1,1000)"),
    Option("max_pps", _float(1, 5000), "130",
           "Highest packet rate of a media flow, per direction (10 ms packets = 100 pps).",
           "detection", "range(1,5000)"),
    Option("min_size", _int(20, 1500), "60",
           "Smallest mean packet size in bytes (IP header included) of a media flow.",
           "detection", "and(uinteger,range(20,1500))"),
    Option("max_size", _int(20, 9000), "400",
           "Largest mean packet size in bytes of a media flow (G.711 at 20 ms is 200).",
           "detection", "and(uinteger,range(20,9000))"),
    Option("both_directions", _bool, "1",
           "Media must flow both ways (a call is bidirectional).", "detection", "bool"),
    Option("media_ports", _port_range,
           ("3478-3481", "8801-8810", "16384-16387", "16393-16402", "19302-19309",
            "50000-50059"),
           "UDP ports documented as call media (STUN/TURN, Teams, Zoom, FaceTime, Meet): "
           "flows on them need less evidence.", "detection", "portrange"),
    Option("header_evidence", _bool, "1",
           "Count RTP and STUN headers of UDP flows with an observe-only tc-BPF program on "
           "the WAN device (also while the profile is off), as evidence of a call.",
           "detection", "bool"),
    Option("on_polls", _int(1, 60), "2",
           "Consecutive polls that must see a call before the profile goes on.", "detection",
           "and(uinteger,range(1,60))"),
    Option("off_hold", _float(0, 3600), "15",
           "Seconds without a call before the profile goes off again.", "detection",
           "range(0,3600)"),
    Option("min_on", _float(0, 3600), "30",
           "Shortest time in seconds the profile stays on once switched on.", "detection",
           "range(0,3600)"),
    # Classifier
    Option("dscp_mark", _bool, "1",
           "Mark the call's packets DSCP EF (46) so later hops and cake's diffserv see them.",
           "classifier", "bool"),
    Option("trust_ef", _bool, "0",
           "Also put packets that arrive already marked EF in the voice class.", "classifier",
           "bool"),
    Option("voice_ports", _port_range, (),
           "UDP port ranges always put in the voice class while the profile is on.",
           "classifier", "portrange"),
    # Advanced
    Option("conntrack_acct", _bool, "1",
           "Turn net.netfilter.nf_conntrack_acct on if it is off (new flows only).",
           "advanced", "bool"),
    Option("conntrack_source", _choice("proc", "netlink"), "netlink",
           "Read the connection table over ctnetlink (default: the cost follows the UDP "
           "flows that can be calls, not the table; /proc if the kernel lacks it) or by "
           "parsing /proc/net/nf_conntrack whole every poll (docs/perf.md).", "advanced",
           "string"),
    Option("run_dir", _path, "/var/run/voipqos",
           "Directory for the pid lock and the local endpoint's login secret.", "advanced",
           "directory"),
    Option("rpc_listen", _listen, "unix:/var/run/voipqos/rpc.sock",
           "Local /ubus JSON-RPC endpoint for the CLI off OpenWrt (loopback or unix socket).",
           "advanced", "string"),
    Option("log_level", _choice("debug", "info", "warning", "error"), "info",
           "How much the service logs.", "advanced", "string"),
)

OPTION_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Config:
    """The validated config; field names are the UCI option names."""

    enabled: bool
    interface: str
    backend: str
    upload: int
    download: int
    voice_rate: int
    drain_time: float
    drain_rate: int
    sqm_section: str
    poll_interval: float
    sip_ports: tuple[int, ...]
    rtp_ports: tuple[PortRange, ...]
    exclude_ports: tuple[PortRange, ...]
    min_pps: float
    max_pps: float
    min_size: int
    max_size: int
    both_directions: bool
    media_ports: tuple[PortRange, ...]
    header_evidence: bool
    on_polls: int
    off_hold: float
    min_on: float
    dscp_mark: bool
    trust_ef: bool
    voice_ports: tuple[PortRange, ...]
    conntrack_acct: bool
    conntrack_source: str
    run_dir: str
    rpc_listen: str
    log_level: str


assert [f.name for f in fields(Config)] == [o.name for o in OPTIONS]


def _value(opt: Option, raw: str | list[str]) -> Any:
    where = f"{SECTION}.{opt.name}"
    if opt.is_list:
        items = raw if isinstance(raw, list) else raw.split()
        out = []
        for item in items:
            try:
                out.append(opt.parse(item))
            except ValueError as exc:
                raise ConfigError(f"{where}: {shown(item)} is not allowed; "
                                  f"expected {exc}") from None
        return tuple(out)
    if isinstance(raw, list):
        raise ConfigError(f"{where}: given as a list; expected a single option")
    try:
        return opt.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {shown(raw)} is not allowed; expected {exc}") from None


def from_options(options: dict[str, str | list[str]]) -> Config:
    """Build a Config from raw UCI option values, defaults for what is missing."""
    unknown = sorted(set(options) - set(OPTION_BY_NAME))
    if unknown:
        raise ConfigError(f"{SECTION}.{unknown[0][:40]}: unknown option; known: "
                          + ", ".join(OPTION_BY_NAME))
    values = {}
    for opt in OPTIONS:
        raw = options.get(opt.name, list(opt.default) if opt.is_list else opt.default)
        values[opt.name] = _value(opt, raw)
    cfg = Config(**values)
    _check_relations(cfg)
    return cfg


def _check_relations(cfg: Config) -> None:
    def bad(name: str, value: object, allowed: str) -> ConfigError:
        return ConfigError(f"{SECTION}.{name}: {value!r} is not allowed; expected {allowed}")

    if cfg.max_pps < cfg.min_pps:
        raise bad("max_pps", cfg.max_pps, f"at least min_pps ({cfg.min_pps:g})")
    if cfg.max_size < cfg.min_size:
        raise bad("max_size", cfg.max_size, f"at least min_size ({cfg.min_size})")
    if cfg.backend == "htb" and cfg.upload == 0:
        raise bad("upload", 0, "a rate in kbit/s above 0 with backend htb")
    if cfg.backend == "htb" and cfg.voice_rate > cfg.upload:
        raise bad("voice_rate", cfg.voice_rate, f"at most upload ({cfg.upload})")


def defaults() -> Config:
    return from_options({})


def load(path: str | Path = DEFAULT_PATH) -> Config:
    """Read and validate a UCI file; ConfigError names the problem in one line."""
    p = Path(path)
    try:
        sections = read_uci(p)
    except UciSyntaxError as exc:
        raise ConfigError(str(exc)) from None
    for sec in sections:
        if sec.type == SECTION_TYPE and sec.name == SECTION:
            return from_options(sec.options)
    raise ConfigError(f"{p}: no `config {SECTION_TYPE} '{SECTION}'` section")


def to_dict(cfg: Config) -> dict[str, Any]:
    """JSON-friendly view (port ranges as 'lo-hi' strings)."""

    def enc(v: Any) -> Any:
        if isinstance(v, tuple):
            return [f"{x[0]}-{x[1]}" if isinstance(x, tuple) else x for x in v]
        return v

    return {o.name: enc(getattr(cfg, o.name)) for o in OPTIONS}
