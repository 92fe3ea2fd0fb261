"""The daemon's single thread of control between polls: the local /ubus JSON-RPC endpoint
(minimal HTTP/1.1 on a unix or loopback socket), the ubus connection and the signal
wake-up fd, all in one selector so no side can starve another.

Written on socket + selectors rather than http.server or asyncio: the daemon is single
threaded, and on OpenWrt those would pull extra split-stdlib packages for little gain.
Every client has a deadline, so a slow or half-open client costs a socket, never time.
"""

from __future__ import annotations

import logging
import os
import secrets
import selectors
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import api, config, rpc
from .ubus import UbusObject

log = logging.getLogger(__name__)

MAX_HEADER = 8 * 1024
MAX_BODY = 64 * 1024  # a voipqos request is < 1 KiB; uhttpd's limit is of this order
MAX_CLIENTS = 32
UBUS_SLICE = 0.05  # poll python-ubus this often when its socket could not be found
UBUS_RETRY = 10.0  # seconds between reconnects after ubusd went away


class EndpointError(Exception):
    """One line naming the address or file and the cause."""


class HttpError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class Request:
    body: bytes
    keep_alive: bool


def parse_request(buf: bytes | bytearray) -> tuple[Request, int] | None:
    """The first complete `POST /ubus` request in `buf` and how many bytes it took;
    None while incomplete; HttpError for anything the endpoint will not serve."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEADER:
            raise HttpError(431, "Request Header Fields Too Large")
        return None
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(400, "Bad Request")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, "Bad Request")
        headers[name.strip().lower()] = value.strip()
    if parts[1].split("?")[0] != "/ubus":
        raise HttpError(404, "Not Found")
    if parts[0] != "POST":
        raise HttpError(405, "Method Not Allowed")
    length = headers.get("content-length")
    if "transfer-encoding" in headers or length is None:
        raise HttpError(411, "Length Required")
    if not length.isdigit():
        raise HttpError(400, "Bad Request")
    if int(length) > MAX_BODY:
        raise HttpError(413, "Request Entity Too Large")
    total = end + 4 + int(length)
    if len(buf) < total:
        return None
    tokens = headers.get("connection", "").lower()
    keep = "close" not in tokens if parts[2] == "HTTP/1.1" else "keep-alive" in tokens
    return Request(bytes(buf[end + 4:total]), keep), total


def response(code: int, reason: str, body: bytes, keep_alive: bool,
             ctype: str = "application/json") -> bytes:
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + body


def parse_listen(listen: str) -> tuple[socket.AddressFamily, Any]:
    """config.listen_address (port 0 allowed: tests bind a free port), as EndpointError."""
    try:
        return config.listen_address(listen, any_port=True)
    except ValueError as exc:
        raise EndpointError(f"rpc_listen: {listen!r} is not allowed; expected {exc}") from None


def load_secret(path: str) -> str:
    """The local endpoint's password: made (random, 0600) if missing, then read."""
    try:
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if os.stat(path).st_mode & 0o077:
                log.warning("%s was readable by others; made it 0600", path)
                os.chmod(path, 0o600)
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(16) + "\n")
        secret = Path(path).read_text().strip()
    except OSError as exc:
        raise EndpointError(f"secret file {path}: {exc.strerror or exc}") from None
    if not secret:
        raise EndpointError(f"secret file {path} is empty; delete it and restart")
    return secret


@dataclass(eq=False)
class _Client:
    sock: socket.socket
    deadline: float
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    closing: bool = False


class Endpoints:
    """Serves JSON-RPC (if `listen`) and ubus (if `use_ubus`) from the daemon's thread."""

    client_timeout = 5.0  # a request must arrive within this; idle keep-alives close too

    def __init__(self, dispatcher: api.Dispatcher, listen: str, secret_path: str,
                 use_ubus: bool, wake_fd: int | None = None) -> None:
        self.dispatcher = dispatcher
        self.sel = selectors.DefaultSelector()
        self.clients: dict[socket.socket, _Client] = {}
        self.listener: socket.socket | None = None
        self.listen = ""  # the bound address, as rpc_listen would say it
        self.rpc: rpc.UbusRpc | None = None
        self.ubus: UbusObject | None = None
        self._ubus_retry_at: float | None = None
        self._unix: tuple[str, int] | None = None  # path and inode we created
        try:
            if listen:
                self.rpc = rpc.UbusRpc(dispatcher, rpc.Sessions(load_secret(secret_path)))
                self.listener = self._bind(listen)
                self.sel.register(self.listener, selectors.EVENT_READ, "accept")
            if wake_fd is not None:
                self.sel.register(wake_fd, selectors.EVENT_READ, "wake")
            if use_ubus:
                self._connect_ubus(time.monotonic())
        except BaseException:
            self.close()
            raise

    # -- setup ---------------------------------------------------------------------------

    def _bind(self, listen: str) -> socket.socket:
        family, addr = parse_listen(listen)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX:
                self._clear_stale(addr)
                old = os.umask(0o177)  # born 0600: no window where others may connect
                try:
                    sock.bind(addr)
                finally:
                    os.umask(old)
                os.chmod(addr, 0o600)
                self._unix = (addr, os.stat(addr).st_ino)
                self.listen = f"unix:{addr}"
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(addr)
                host, port = sock.getsockname()[:2]
                self.listen = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            sock.listen(64)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise EndpointError(f"rpc_listen: cannot listen on {listen}: "
                                f"{exc.strerror or exc}") from None
        log.info("JSON-RPC endpoint on %s", self.listen)
        return sock

    @staticmethod
    def _clear_stale(path: str) -> None:
        """Remove a socket left by a dead daemon; refuse to steal a live one."""
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            Path(path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            return
        if not stat.S_ISSOCK(mode):
            raise EndpointError(f"rpc_listen: {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)
            return
        finally:
            probe.close()
        raise EndpointError(f"rpc_listen: another process is listening on unix:{path}")

    def _connect_ubus(self, now: float) -> None:
        try:
            self.ubus = UbusObject(self.dispatcher)
        except Exception as exc:  # no ubusd (yet): JSON-RPC still works, retry later
            log.warning("ubus: cannot register %s: %s; retrying in %g s", api.OBJECT,
                        str(exc).strip(), UBUS_RETRY)
            self._ubus_retry_at = now + UBUS_RETRY
            return
        self._ubus_retry_at = None
        if self.ubus.fd is None:
            log.info("ubus: connection socket not found; polling it every %g s", UBUS_SLICE)
        else:
            self.sel.register(self.ubus.fd, selectors.EVENT_READ, "ubus")
        log.info("ubus: object %s registered", api.OBJECT)

    # -- the loop ------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Serve requests for up to `timeout` s; return early when wake_fd is readable
        (the caller drains it: it carries the signal numbers)."""
        end = time.monotonic() + max(0.0, timeout)
        while True:
            now = time.monotonic()
            self._reap(now)
            step = end - now
            if self._ubus_retry_at is not None:
                if now >= self._ubus_retry_at:
                    self._connect_ubus(now)
                if self._ubus_retry_at is not None:
                    step = min(step, self._ubus_retry_at - now)
            if self.ubus is not None and self.ubus.fd is None:
                self.ubus.process()
                step = min(step, UBUS_SLICE)
            if self.clients:
                step = min(step, min(c.deadline for c in self.clients.values()) - now)
            woken = False
            for key, mask in self.sel.select(max(0.0, step)):
                if key.data == "wake":
                    woken = True
                elif key.data == "accept":
                    self._accept()
                elif key.data == "ubus":
                    self._serve_ubus()
                elif key.data.sock in self.clients:  # not evicted earlier in this batch
                    self._serve(key.data, mask)
            if woken or time.monotonic() >= end:
                return

    def _serve_ubus(self) -> None:
        assert self.ubus is not None
        if self.ubus.lost():
            log.error("ubus: connection to ubusd lost; reconnecting in %g s", UBUS_RETRY)
            self._drop_ubus()
            self._ubus_retry_at = time.monotonic() + UBUS_RETRY
            return
        self.ubus.process()

    def _accept(self) -> None:
        assert self.listener is not None
        for _ in range(MAX_CLIENTS):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving the clients we have
                log.warning("rpc: accept: %s", exc)
                return
            if len(self.clients) >= MAX_CLIENTS:  # the stalest client makes room
                self._drop(min(self.clients.values(), key=lambda c: c.deadline))
            sock.setblocking(False)
            client = _Client(sock, time.monotonic() + self.client_timeout)
            self.clients[sock] = client
            self.sel.register(sock, selectors.EVENT_READ, client)

    def _serve(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_READ and not client.closing:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._drop(client)
                return
            if data:
                client.inbuf += data
                self._answer(client)
        self._flush(client)

    def _answer(self, client: _Client) -> None:
        while not client.closing:
            try:
                parsed = parse_request(client.inbuf)
            except HttpError as exc:
                client.inbuf.clear()
                client.outbuf += response(exc.code, exc.reason, exc.reason.encode() + b"\n",
                                          False, "text/plain")
                client.closing = True
                return
            if parsed is None:
                return
            req, used = parsed
            del client.inbuf[:used]
            assert self.rpc is not None
            client.outbuf += response(200, "OK", self.rpc.handle(req.body), req.keep_alive)
            client.closing = not req.keep_alive
            client.deadline = time.monotonic() + self.client_timeout

    def _flush(self, client: _Client) -> None:
        if client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                return
            del client.outbuf[:sent]
        if client.closing and not client.outbuf:
            self._drop(client)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        if self.sel.get_key(client.sock).events != events:
            self.sel.modify(client.sock, events, client)

    def _reap(self, now: float) -> None:
        for client in [c for c in self.clients.values() if now >= c.deadline]:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self.sel.unregister(client.sock)
        client.sock.close()
        del self.clients[client.sock]

    def _drop_ubus(self) -> None:
        if self.ubus is not None:
            if self.ubus.fd is not None:
                self.sel.unregister(self.ubus.fd)
            self.ubus.close()
            self.ubus = None

    # -- the rest ------------------------------------------------------------------------

    def send_event(self, event: str, data: dict[str, Any]) -> None:
        """A ubus event when connected; JSON-RPC has no events, so otherwise nothing."""
        if self.ubus is not None:
            self.ubus.send_event(event, data)

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client)
        self._drop_ubus()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self._unix is not None:
            path, inode = self._unix
            try:
                if os.stat(path).st_ino == inode:  # not a successor's socket
                    os.unlink(path)
            except FileNotFoundError:
                pass
            self._unix = None
        self.sel.close()
