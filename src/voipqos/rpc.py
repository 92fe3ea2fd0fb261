"""The `/ubus` JSON-RPC protocol as uhttpd-mod-ubus and rpcd answer it, over api.SPECS.

Sans-I/O: `UbusRpc.handle` takes a request body and returns the response body, so the
wire shapes LuCI and the clients rely on are tested without sockets. Served off OpenWrt
(Debian box as router, tests, the lab) by `endpoints.Endpoints`; on a router uhttpd,
rpcd and the ucode plugin files/usr/share/rpcd/ucode/voipqos.uc answer the same protocol
in front of the daemon's ubus object. The answers here are the ones recorded from those
real parts (tests/data/transcripts/, replayed by tests/test_rpc.py): the object is
looked up (-32000) before the ACL (-32002); a malformed request is -32700; an empty
batch is []; the null session has only rpcd's `unauthenticated` group; a call's
arguments are checked like rpcd checks a plugin's (all optional, exact types) and may
not carry `ubus_rpc_session`, which uhttpd adds itself.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

from . import api

log = logging.getLogger(__name__)


def new_token() -> str:
    """32 random hex digits, as rpcd's session ids. From os.urandom: the secrets and
    hmac modules would load OpenSSL's libcrypto into the service (about 4 MiB)."""
    return os.urandom(16).hex()


def same(a: bytes, b: bytes) -> bool:
    """Compare secrets in a time that does not depend on where they differ."""
    diff = len(a) ^ len(b)
    for x, y in zip(a, b, strict=False):
        diff |= x ^ y
    return diff == 0

NULL_SESSION = "0" * 32  # rpcd's unauthenticated session
USER = "root"
SESSION_TIMEOUT = 300  # rpcd's default, seconds
MAX_SESSIONS = 32

# ubus status codes (libubus ubusmsg.h), the first element of a call's `result`
STATUS_OK = 0
STATUS_INVALID_ARGUMENT = 2
STATUS_METHOD_NOT_FOUND = 3
STATUS_PERMISSION_DENIED = 6
STATUS_UNKNOWN_ERROR = 9
STATUS_NAMES = {
    0: "ok", 1: "invalid command", 2: "invalid argument", 3: "method not found",
    4: "not found", 5: "no data", 6: "permission denied", 7: "timeout",
    8: "not supported", 9: "unknown error", 10: "connection failed",
}

# bounds of what a request may hold, so no body can make the daemon raise or stall
MAX_DEPTH = 32  # json-c's default tokener depth, as uhttpd parses (33 levels: -32700)
MAX_BATCH = 32  # calls in one batch request
INT64 = 2**63 - 1  # json-c's integer range
LOG_INTERVAL = 60.0  # s between two lines about failed logins (or bad arguments)
_NESTING = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)  # strings skipped

# JSON-RPC errors uhttpd-mod-ubus answers instead of a result
PARSE_ERROR = (-32700, "Parse error")
METHOD_NOT_FOUND = (-32601, "Method not found")
INVALID_PARAMS = (-32602, "Invalid parameters")
OBJECT_NOT_FOUND = (-32000, "Object not found")
ACCESS_DENIED = (-32002, "Access denied")

# how `list` names argument types (uhttpd maps blobmsg types to these words)
TYPE_NAMES = {api.STRING: "string", api.INT: "number", api.BOOL: "boolean"}
SESSION_SIGNATURE = {
    "login": {"username": "string", "password": "string", "timeout": "number"},
}
# what rpcd's ACL files grant: the null session only `unauthenticated` (rpcd's own file),
# root the voipqos group (files/usr/share/rpcd/acl.d/voipqos.json)
UNAUTHENTICATED = {"session": ["access", "login"]}
ROOT_ACL = {**UNAUTHENTICATED, api.OBJECT: [*api.READ_METHODS, *api.WRITE_METHODS]}
# objects a router's bus has that this endpoint knows of
OBJECTS = ("session", api.OBJECT, api.DAEMON_OBJECT)


class Sessions:
    """rpcd-like sessions for the single user `root`: 32-hex ids that expire after
    their timeout unless used (each use restarts the clock, as rpcd does)."""

    def __init__(self, password: str, clock: Callable[[], float] = time.monotonic,
                 timeout: int = SESSION_TIMEOUT) -> None:
        self._password = password.encode()
        self._clock = clock
        self.timeout = timeout
        self._live: dict[str, tuple[int, float]] = {}  # sid -> (timeout, expiry)

    def login(self, username: Any, password: Any, timeout: int | None = None) -> str | None:
        """A new session id, or None for a wrong user name or password."""
        if not isinstance(username, str) or not isinstance(password, str):
            return None
        ok_pw = same(password.encode(), self._password)
        if not (ok_pw and same(username.encode(), USER.encode())):
            return None
        now = self._clock()
        for sid in [s for s, (_, t) in self._live.items() if now >= t]:
            del self._live[sid]
        while len(self._live) >= MAX_SESSIONS:  # bounded: the oldest login goes first
            del self._live[min(self._live, key=lambda s: self._live[s][1])]
        sid = new_token()
        timeout = timeout or self.timeout
        self._live[sid] = (timeout, now + timeout)
        return sid

    def touch(self, sid: Any) -> bool:
        """True if `sid` is a live session; its expiry starts again from now."""
        if not isinstance(sid, str) or sid not in self._live:
            return False
        timeout, expiry = self._live[sid]
        now = self._clock()
        if now >= expiry:
            del self._live[sid]
            return False
        self._live[sid] = (timeout, now + timeout)
        return True

    def info(self, sid: str) -> tuple[int, int]:
        """(timeout, seconds until expiry) of a live session."""
        timeout, expiry = self._live[sid]
        return timeout, max(0, round(expiry - self._clock()))


class _Throttled:
    """At most one warning per LOG_INTERVAL, counting the ones held back: a local user
    looping over passwords or bad requests must not flood the log."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._held = 0
        self._last = -math.inf

    def warning(self, fmt: str, *args: Any) -> None:
        now = self._clock()
        if now < self._last + LOG_INTERVAL:
            self._held += 1
            return
        more = f" ({self._held} more since the last such line)" if self._held else ""
        log.warning(fmt + "%s", *args, more)
        self._held, self._last = 0, now


def _error(rid: Any, err: tuple[int, str]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": err[0], "message": err[1]}}


def _result(rid: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": result}


class UbusRpc:
    """Answers `call` and `list` like uhttpd + rpcd with the voipqos plugin (see above)."""

    def __init__(self, dispatcher: api.Dispatcher, sessions: Sessions,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.dispatcher = dispatcher
        self.sessions = sessions
        self._failed_login_log = _Throttled(clock)
        self._bad_argument_log = _Throttled(clock)

    def handle(self, body: bytes) -> bytes:
        try:
            req = _loads(body)
        except (ValueError, UnicodeDecodeError):
            return _dump(_error(None, PARSE_ERROR))
        if isinstance(req, list):  # a batch, as uhttpd allows
            if len(req) > MAX_BATCH:  # our bound; uhttpd has none
                return _dump(_error(None, PARSE_ERROR))
            return _dump([self._one(r) for r in req])
        return _dump(self._one(req))

    def _one(self, req: Any) -> dict[str, Any]:
        if not isinstance(req, dict):
            return _error(None, PARSE_ERROR)
        rid = req.get("id")
        params = req.get("params", [])
        if req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str) \
                or not isinstance(params, list):
            return _error(rid, PARSE_ERROR)
        if req["method"] == "call":
            return self._call(rid, params)
        if req["method"] == "list":
            return self._list(rid, params)
        return _error(rid, METHOD_NOT_FOUND)

    def _call(self, rid: Any, params: list[Any]) -> dict[str, Any]:
        if len(params) != 4 or not all(isinstance(p, str) for p in params[:3]) \
                or not isinstance(params[3], dict):
            return _error(rid, PARSE_ERROR)
        sid, obj, method, args = params
        if obj not in OBJECTS:
            return _error(rid, OBJECT_NOT_FOUND)
        logged_in = sid != NULL_SESSION and self.sessions.touch(sid)
        if method not in (ROOT_ACL if logged_in else UNAUTHENTICATED).get(obj, []):
            return _error(rid, ACCESS_DENIED)
        if "ubus_rpc_session" in args:
            return _error(rid, INVALID_PARAMS)
        if obj == "session":
            return _result(rid, self._session(method, args, sid))
        # uhttpd adds the session to every call's arguments; the plugin must accept it
        return _result(rid, self._invoke(method, {**args, "ubus_rpc_session": sid}))

    def _invoke(self, method: str, args: dict[str, Any]) -> list[Any]:
        """The plugin's part: rpcd's argument check, defaults, the daemon's answer."""
        if not api.policy_ok(method, args):
            return [STATUS_INVALID_ARGUMENT]
        args = {k: v for k, v in args.items() if k != "ubus_rpc_session"}
        try:
            return [STATUS_OK, self.dispatcher.call(method, {**api.with_defaults(method),
                                                             **args})]
        except api.InvalidArgument as exc:
            self._bad_argument_log.warning("rpc: %.200s", exc)
            return [STATUS_INVALID_ARGUMENT, {"error": str(exc),
                                              "status": STATUS_INVALID_ARGUMENT}]
        except Exception as exc:  # a handler bug must not take the daemon down
            log.error("rpc: %s.%s failed: %s: %s", api.OBJECT, method, type(exc).__name__,
                      exc)
            return [STATUS_UNKNOWN_ERROR, {"error": f"{method} failed: {exc}",
                                           "status": STATUS_UNKNOWN_ERROR}]

    def _session(self, method: str, args: dict[str, Any], sid: str) -> list[Any]:
        if method == "access":  # LuCI asks after a -32002; only `ubus` scope here
            acl = ROOT_ACL if sid != NULL_SESSION and self.sessions.touch(sid) \
                else UNAUTHENTICATED
            return [STATUS_OK, {"access": args.get("function") in
                                acl.get(args.get("object"), [])}]
        return self._login(args)

    def _login(self, args: dict[str, Any]) -> list[Any]:
        timeout = args.get("timeout")
        if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool)
                                    or timeout <= 0):
            return [STATUS_INVALID_ARGUMENT]
        sid = self.sessions.login(args.get("username"), args.get("password"), timeout)
        if sid is None:
            self._failed_login_log.warning("rpc: failed login for user %.40r",
                                           args.get("username"))
            return [STATUS_PERMISSION_DENIED]
        timeout, expires = self.sessions.info(sid)
        return [STATUS_OK, {
            "ubus_rpc_session": sid,
            "timeout": timeout,
            "expires": expires,
            "acls": {"access-group": {"unauthenticated": ["read"],
                                      api.OBJECT: ["read", "write"]},
                     "ubus": ROOT_ACL},
            "data": {"username": USER},
        }]

    def _list(self, rid: Any, params: list[Any]) -> dict[str, Any]:
        if not all(isinstance(p, str) for p in params):
            return _error(rid, INVALID_PARAMS)
        objects = {api.OBJECT: signature(), "session": SESSION_SIGNATURE}
        if not params:
            return _result(rid, sorted(objects))
        return _result(rid, {name: sig for name, sig in objects.items()
                             if any(fnmatch.fnmatchcase(name, p) for p in params)})


def signature() -> dict[str, dict[str, str]]:
    """The voipqos object's signature as `list` shows it."""
    return {m: {a: TYPE_NAMES[t] for a, t in s.args.items()} for m, s in api.SPECS.items()}


def _loads(body: bytes) -> Any:
    """json.loads within json-c's limits: nesting at most MAX_DEPTH (deeper would hit
    Python's recursion limit), finite numbers, integers in int64; ValueError otherwise."""
    depth = 0
    for m in _NESTING.finditer(body):
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError("nested too deep")
        elif m.group() in (b"]", b"}"):
            depth -= 1
    return json.loads(body, parse_constant=_no_number, parse_float=_finite, parse_int=_int64)


def _no_number(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _int64(text: str) -> int:
    value = int(text)
    if abs(value) > INT64:
        raise ValueError("number out of range")
    return value


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
