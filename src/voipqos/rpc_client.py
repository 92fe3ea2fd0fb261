"""Clients of a `/ubus` JSON-RPC endpoint, speaking as LuCI's rpc.js: the session logic
shared with remote.RemoteClient, and LocalClient for the CLI on the same machine (which
so never imports ssl: python3-openssl is not needed on the router).

Every failure is an RpcError with one line saying what went wrong and where (wrong
password, permission denied, daemon not running, unreachable, timeout, untrusted
certificate, bad answer); the CLI prints it and exits non-zero. Passwords are never
printed or logged.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import api, config, rpc

if TYPE_CHECKING:  # imported where used: http.client loads ssl and email (8 MiB), and
    import http.client  # `voipqos run` imports this module for its argument parser

PASSWORD_ENV = "VOIPQOS_PASSWORD"


def _http_hint(status: int) -> str:
    """What an HTTP error from a would-be /ubus URL most likely means (uhttpd answers 404
    where no ubus prefix is configured, 5xx when ubusd or rpcd is down or overloaded)."""
    if status == 404:
        return " (not a /ubus endpoint?)"
    if status >= 500:
        return " (the router's web server could not reach ubus/rpcd: is rpcd running?)"
    return ""


class RpcError(Exception):
    """One line for the user."""


class _Denied(Exception):
    """JSON-RPC -32002: no session, an expired one, or a method outside the ACL."""


def _unix_connection(path: str, timeout: float) -> http.client.HTTPConnection:
    """HTTP over a unix socket, connected at the first request as a TCP one would be."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(path)

    return UnixConnection("localhost", timeout=timeout)


class SessionClient:
    """Session handling shared by both clients: log in when needed, re-login once when
    the session was refused (expired, or the router restarted), then give up."""

    path = "/ubus"

    def __init__(self, where: str, user: str, timeout: float) -> None:
        self.where = where
        self.user = user
        self.timeout = timeout
        self.sid = rpc.NULL_SESSION
        self._id = 0

    def _connection(self) -> http.client.HTTPConnection:
        raise NotImplementedError

    def _password(self) -> str:
        raise NotImplementedError

    def _needs_login(self, method: str) -> bool:
        raise NotImplementedError

    def _describe(self, exc: OSError) -> str:
        """One line for a connection failure."""
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.timeout:g} s"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (not running, or wrong address/port?)"
        if isinstance(exc, FileNotFoundError):
            return "no such socket (is the voipqos daemon running?)"
        if isinstance(exc, socket.gaierror):
            return f"cannot resolve host: {exc.strerror}"
        return str(exc.strerror or exc)

    def call(self, method: str, args: dict | None = None) -> dict:
        """voipqos.<method>(args) -> its answer; RpcError with one line otherwise."""
        fresh = False
        if self.sid == rpc.NULL_SESSION and self._needs_login(method):
            self.login()
            fresh = True
        try:
            return self._call(method, args or {})
        except _Denied:
            if fresh:
                raise self._denied(method) from None
        self.login()  # the session expired or the null session was not enough
        try:
            return self._call(method, args or {})
        except _Denied:
            raise self._denied(method) from None

    def _denied(self, method: str) -> RpcError:
        who = f"user {self.user}" if self.sid != rpc.NULL_SESSION else "the null session"
        return RpcError(f"{self.where}: permission denied: {who} may not call "
                        f"{api.OBJECT}.{method} (rpcd ACL: /usr/share/rpcd/acl.d/voipqos.json)")

    def login(self) -> None:
        password = self._password()
        try:
            result = self._rpc(rpc.NULL_SESSION, "session", "login",
                               {"username": self.user, "password": password})
        except _Denied:
            raise RpcError(f"{self.where}: login refused (access denied)") from None
        if result[0] == rpc.STATUS_PERMISSION_DENIED:
            raise RpcError(f"{self.where}: login as {self.user} failed: wrong user name or "
                           "password")
        data = result[1] if len(result) > 1 else None
        sid = data.get("ubus_rpc_session") if isinstance(data, dict) else None
        if result[0] != rpc.STATUS_OK or not isinstance(sid, str) \
                or not re.fullmatch(r"[0-9a-f]{32}", sid):
            raise RpcError(f"{self.where}: bad answer to session.login: {result!r:.80}")
        self.sid = sid

    def logout(self) -> None:
        """Destroy the session (rpcd keeps it until it expires otherwise)."""
        if self.sid != rpc.NULL_SESSION:
            with contextlib.suppress(_Denied):
                self._rpc(self.sid, "session", "destroy", {})
            self.sid = rpc.NULL_SESSION

    def _call(self, method: str, args: dict) -> dict:
        result = self._rpc(self.sid, api.OBJECT, method, args)
        status = result[0]
        data = result[1] if len(result) > 1 else {}
        if status == rpc.STATUS_OK:
            if not isinstance(data, dict):
                raise RpcError(f"{self.where}: bad answer to {api.OBJECT}.{method}: "
                               f"{data!r:.80}")
            return data
        name = rpc.STATUS_NAMES.get(status, f"ubus status {status}")
        detail = data.get("error") if isinstance(data, dict) else None
        raise RpcError(f"{self.where}: {api.OBJECT}.{method}: {name}"
                       + (f": {detail}" if detail else ""))

    def _rpc(self, sid: str, obj: str, method: str, args: dict) -> list:
        """One JSON-RPC `call`; the result array [status, data?]."""
        self._id += 1
        doc = self._post({"jsonrpc": "2.0", "id": self._id, "method": "call",
                          "params": [sid, obj, method, args]})
        if not isinstance(doc, dict):
            raise RpcError(f"{self.where}: bad answer: not a JSON-RPC object")
        error = doc.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            if code == rpc.ACCESS_DENIED[0]:
                raise _Denied()
            if code == rpc.OBJECT_NOT_FOUND[0]:
                raise RpcError(f"{self.where}: no ubus object {obj}: is the voipqos service "
                               "running there?")
            raise RpcError(f"{self.where}: JSON-RPC error {code}: {error.get('message')}")
        result = doc.get("result")
        if not isinstance(result, list) or not result or not isinstance(result[0], int):
            raise RpcError(f"{self.where}: bad answer: no [status, data] result")
        return result

    def _post(self, payload: dict) -> Any:
        import http.client

        body = json.dumps(payload).encode()
        conn = self._connection()
        try:
            conn.request("POST", self.path, body, {"Content-Type": "application/json",
                                                   "Accept": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except RpcError:
            raise
        except OSError as exc:  # refused, timeouts, TLS (ssl.SSLError is an OSError too)
            raise RpcError(f"{self.where}: {self._describe(exc)}") from None
        except http.client.HTTPException as exc:
            raise RpcError(f"{self.where}: bad HTTP answer ({type(exc).__name__})") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise RpcError(f"{self.where}: HTTP {resp.status} {resp.reason}"
                           + _http_hint(resp.status))
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise RpcError(f"{self.where}: bad answer: not JSON") from None


class LocalClient(SessionClient):
    """The daemon's endpoint on this machine (`rpc_listen`): logs in as root with the
    password in `secret_path` (the null session may call nothing, as on a router)."""

    def __init__(self, listen: str, secret_path: str, timeout: float = 5) -> None:
        super().__init__(listen, rpc.USER, timeout)
        self.listen = listen
        self.secret_path = secret_path
        try:
            family, self._addr = config.listen_address(listen)
        except ValueError as exc:
            raise RpcError(f"rpc_listen: {listen!r}: expected {exc}") from None
        self._unix = self._addr if family == socket.AF_UNIX else None

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        if self._unix is not None:
            return _unix_connection(self._unix, self.timeout)
        return http.client.HTTPConnection(*self._addr, timeout=self.timeout)

    def _needs_login(self, method: str) -> bool:
        return True

    def _password(self) -> str:
        try:
            return Path(self.secret_path).read_text().strip()
        except PermissionError:
            raise RpcError(f"{self.secret_path}: permission denied (changing the mode "
                           "needs root)") from None
        except OSError as exc:
            raise RpcError(f"{self.secret_path}: {exc.strerror} (is the voipqos daemon "
                           "running?)") from None


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    """--router and friends, for `voipqos --router URL status|flows|on|off|auto`."""
    g = parser.add_argument_group("remote router (LuCI's /ubus JSON-RPC)")
    g.add_argument("--router", metavar="URL",
                   help="talk to this router's /ubus instead of the local daemon, "
                        "e.g. https://192.168.1.1")
    g.add_argument("--user", default="root", help="router login (default root)")
    g.add_argument("--password-file", metavar="FILE",
                   help=f"read the password from FILE (else ${PASSWORD_ENV}, else a prompt)")
    g.add_argument("--cafile", metavar="FILE", help="trust the CA/certificate in FILE")
    g.add_argument("--fingerprint", metavar="SHA256",
                   help="trust exactly the certificate with this SHA-256 fingerprint")
    g.add_argument("--insecure", action="store_true",
                   help="do not verify the router's certificate at all")
    g.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                   help="per-request timeout (default 5)")


def read_password(args: argparse.Namespace) -> str:
    """--password-file, then $VOIPQOS_PASSWORD, then a prompt that does not echo."""
    if args.password_file:
        try:
            with open(args.password_file) as f:
                return f.readline().rstrip("\r\n")
        except OSError as exc:
            raise RpcError(f"--password-file {args.password_file}: {exc.strerror}") from None
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise RpcError(f"no password: use --password-file FILE or ${PASSWORD_ENV}, "
                       "or run on a terminal to be asked")
    return getpass.getpass(f"Password for {args.user} on {args.router}: ")
