"""The `voipqos` object's method table, shared by the ubus adapter and the /ubus JSON-RPC
endpoint so both (and LuCI, and the ACL files) agree on names, argument types and
read/write access.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OBJECT = "voipqos"  # public: rpcd's ucode plugin on OpenWrt, rpc.py off it
DAEMON_OBJECT = "voipqos.daemon"  # the daemon's own python-ubus object, behind the plugin

# argument type names; adapters map them to blobmsg types
STRING, INT, BOOL = "string", "int", "bool"
_PY = {STRING: str, INT: int, BOOL: bool}
# what the public object passes for an argument the caller left out
DEFAULTS = {STRING: "", INT: 0, BOOL: False}


STATUS_INVALID_ARGUMENT = 2
STATUS_UNKNOWN_ERROR = 9


class InvalidArgument(ValueError):
    """Answered with ubus status 2 (UBUS_STATUS_INVALID_ARGUMENT)."""


@dataclass(frozen=True)
class MethodSpec:
    args: Mapping[str, str]
    write: bool
    doc: str


SPECS: dict[str, MethodSpec] = {
    "status": MethodSpec({}, False, "state, active calls, counters, warnings, self-metrics"),
    "flows": MethodSpec({"all": BOOL}, False,
                        "flow table with verdicts and reasons (all: include non-UDP/other)"),
    "check": MethodSpec({}, False, "kernel preflight: features present/missing"),
    "set_mode": MethodSpec({"mode": STRING, "expires": INT}, True,
                           "mode on|off|auto; expires: seconds until back to auto (0 = never)"),
    "reload": MethodSpec({}, True, "re-read the config; a bad config keeps the running one"),
}

READ_METHODS = sorted(n for n, s in SPECS.items() if not s.write)
WRITE_METHODS = sorted(n for n, s in SPECS.items() if s.write)

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def with_defaults(method: str) -> dict[str, Any]:
    """Every argument of `method` at its default: what the public object fills in."""
    return {arg: DEFAULTS[kind] for arg, kind in SPECS[method].args.items()}


def _fits(kind: str, value: Any) -> bool:
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool) \
            and -2**31 <= value < 2**31
    return isinstance(value, str)


def policy_ok(method: str, args: dict[str, Any]) -> bool:
    """rpcd's check for a ucode plugin method (the public object): every argument
    declared with its exact blobmsg type, all optional, plus `ubus_rpc_session`."""
    spec = SPECS[method].args
    return all(_fits(spec[k], v) if k in spec else
               (k == "ubus_rpc_session" and isinstance(v, str)) for k, v in args.items())


def check_args(method: str, args: Any) -> dict[str, Any]:
    """Type-check call arguments against the spec; InvalidArgument names the field."""
    spec = SPECS[method]
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidArgument(f"{method}: arguments must be an object")
    for key, value in args.items():
        kind = spec.args.get(key)
        if kind is None:
            raise InvalidArgument(f"{method}: unknown argument {key!r}")
        want = _PY[kind]
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if kind == BOOL and isinstance(value, int) and value in (0, 1):
            ok = True  # blobmsg has no JSON bool on the wire from some clients
        if not ok:
            raise InvalidArgument(f"{method}: {key} must be {kind}")
    return args


class Dispatcher:
    """Bind handlers to the spec; `call` validates then dispatches."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        missing = set(SPECS) ^ set(handlers)
        if missing:
            raise ValueError(f"handlers do not match the method table: {sorted(missing)}")
        self.handlers = dict(handlers)

    def call(self, method: str, args: Any) -> dict[str, Any]:
        if method not in SPECS:
            raise KeyError(method)
        return self.handlers[method](check_args(method, args))
