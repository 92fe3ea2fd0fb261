"""A loopback HTTP server that stands in for uhttpd + rpcd in front of the LuCI views.

It serves the app's htdocs and the LuCI shim (tests/luci/shim), one page per view, and
answers POST /ubus: the `uci` object itself from a UCI file (get/set/delete/apply, like
rpcd's uci plugin), everything else is passed on to an upstream JSON-RPC endpoint, the
daemon's /ubus on a unix socket or a fixture. `uci apply` commits and then calls the
daemon's `reload`, which is what procd's reload trigger does on a router.

For the `uci` object it does what uhttpd does (tests/data/transcripts/jsonrpc.json, replayed
through this server by tests/test_rpc.py): the ACL after the object, a caller-supplied
`ubus_rpc_session` refused (-32602), the session added to the arguments.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from voipqos.uci import Section, format_uci, parse_uci

ROOT = Path(__file__).resolve().parents[2]
RESOURCES = ROOT / "luci-app/htdocs/luci-static/resources"
SHIM = Path(__file__).resolve().parent / "shim"
SHIMMED = ["form", "network", "rpc", "uci", "ui"]
NULL_SESSION = "0" * 32

Upstream = Callable[[bytes], bytes]

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>voipqos {view}</title>
<link rel="stylesheet" href="/shim/shim.css"></head>
<body data-page="admin-services-voipqos-{view}">
<header>OpenWrt &middot; Services &middot; VoIP QoS <em>(test shim, not LuCI)</em></header>
<div id="maincontent"><div id="view"><p class="spinning">Loading view&hellip;</p></div></div>
<script>window.L_ENV = {env};</script>
<script src="/shim/luci.js"></script>
<script>L.require('view.voipqos.{view}');</script>
</body></html>
"""


def unix_upstream(path: str, timeout: float = 5) -> Upstream:
    """POST /ubus bodies to a JSON-RPC endpoint on a unix socket (the daemon's rpc_listen)."""

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)

    def post(body: bytes) -> bytes:
        conn = Conn("localhost", timeout=timeout)
        try:
            conn.request("POST", "/ubus", body, {"Content-Type": "application/json"})
            return conn.getresponse().read()
        finally:
            conn.close()

    return post


def rpc_call(upstream: Upstream, sid: str, obj: str, method: str,
             args: dict[str, Any] | None = None) -> list[Any]:
    """One ubus call through an upstream; returns the `result` array."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "call",
                       "params": [sid, obj, method, args or {}]}).encode()
    reply = json.loads(upstream(body))
    if "error" in reply:
        raise RuntimeError(f"{obj}.{method}: {reply['error']}")
    return reply["result"]


def _rpc_error(rid: Any, code: int, message: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rid,
                       "error": {"code": code, "message": message}}).encode()


def login(upstream: Upstream, password: str) -> str:
    res = rpc_call(upstream, NULL_SESSION, "session", "login",
                   {"username": "root", "password": password})
    if res[0] != 0:
        raise RuntimeError(f"session.login refused: status {res[0]}")
    return res[1]["ubus_rpc_session"]


class UciStore:
    """rpcd's `uci` object over files in a directory (config name = file name)."""

    def __init__(self, confdir: Path) -> None:
        self.confdir = confdir
        self.staged: dict[str, list[Section]] = {}
        self.lock = threading.Lock()

    def _sections(self, config: str) -> list[Section]:
        if config not in self.staged:
            path = self.confdir / config
            if not path.is_file():
                raise KeyError(config)
            self.staged[config] = parse_uci(path.read_text(), str(path))
        return self.staged[config]

    def call(self, method: str, args: dict[str, Any]) -> list[Any]:
        with self.lock:
            try:
                if method == "apply":
                    for config, sections in self.staged.items():
                        (self.confdir / config).write_text(format_uci(sections))
                    self.staged.clear()
                    return [0]
                sections = self._sections(str(args.get("config")))
            except KeyError:
                return [4]  # not found
            if method == "get":
                return [0, {"values": {s.name: {".type": s.type, ".name": s.name, **s.options}
                                       for s in sections}}]
            sec = next((s for s in sections if s.name == args.get("section")), None)
            if sec is None:
                return [4]
            if method == "set":
                sec.options.update({k: v if isinstance(v, list) else str(v)
                                    for k, v in args.get("values", {}).items()})
                return [0]
            if method == "delete":
                for opt in args.get("options", []):
                    sec.options.pop(opt, None)
                return [0]
            return [3]  # method not found


class LuciServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: Upstream, confdir: Path, sessionid: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.uci = UciStore(confdir)
        self.sessionid = sessionid
        self.ubus_calls: list[tuple[str, str]] = []  # (object, method) as the views sent them
        self.reloads = 0  # daemon reloads triggered by `uci apply`
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def ubus(self, body: bytes) -> bytes:
        try:
            req = json.loads(body)
        except ValueError:
            return self.upstream(body)
        params = req.get("params") if isinstance(req, dict) else None
        if not (isinstance(params, list) and len(params) == 4
                and isinstance(params[3], dict)):
            return self.upstream(body)  # lists, batches, malformed: the upstream answers
        sid, obj, method, args = params
        self.ubus_calls.append((obj, method))
        if req.get("method") != "call" or obj != "uci":
            return self.upstream(body)
        if sid != self.sessionid:  # luci-base's ACL group: no uci for the null session
            return _rpc_error(req.get("id"), -32002, "Access denied")
        if "ubus_rpc_session" in args:
            return _rpc_error(req.get("id"), -32602, "Invalid parameters")
        result = self.uci.call(method, {**args, "ubus_rpc_session": sid})
        if method == "apply" and result == [0]:
            rpc_call(self.upstream, self.sessionid, "voipqos", "reload")
            self.reloads += 1
        return json.dumps({"jsonrpc": "2.0", "id": req.get("id"), "result": result}).encode()

    def __enter__(self) -> LuciServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: LuciServer

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path in ("/status", "/settings"):
            env = {"sessionid": self.server.sessionid, "ubuspath": "/ubus",
                   "resource": "/luci-static/resources", "shim": "/shim", "shimmed": SHIMMED}
            page = PAGE.format(view=path[1:], env=json.dumps(env))
            return self._send(200, page.encode(), "text/html; charset=utf-8")
        for prefix, base in (("/luci-static/resources/", RESOURCES), ("/shim/", SHIM)):
            if path.startswith(prefix):
                file = (base / path[len(prefix):]).resolve()
                if file.is_file() and base.resolve() in file.parents:
                    ctype = "text/css" if file.suffix == ".css" else "application/javascript"
                    return self._send(200, file.read_bytes(), ctype)
        self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        if self.path != "/ubus":
            return self._send(404, b"not found", "text/plain")
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            reply = self.server.ubus(body)
        except (OSError, ValueError) as exc:
            return self._send(502, str(exc).encode(), "text/plain")
        self._send(200, reply, "application/json")
