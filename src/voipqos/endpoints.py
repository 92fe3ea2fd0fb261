"""The daemon's single thread of control between polls: the local /ubus JSON-RPC endpoint
(HTTP/1.1 on a unix or loopback socket, framed by httpframe), the ubus connection and the
signal wake-up fd, all in one selector so no side can starve another.

Written on socket + selectors rather than http.server or asyncio: the daemon is single
threaded, and on OpenWrt those would pull extra split-stdlib packages for little gain.
Everything a client can make the daemon hold is bounded: a deadline per client (a slow or
half-open one costs a socket, never time), its input (one request), its output (a client
that does not read its answers is not read from, and closed at its deadline), the number
of clients (an idle keep-alive makes room, else new ones wait in the backlog, as with
uhttpd, and are refused with 503 if that lasts), and the work done per `wait()` (one
request per client per round, and only one once the poll is due).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import api, config, rpc
from .httpframe import MAX_BODY, MAX_HEADER, HttpError, error_response, parse_request, response
from .ubus import UbusObject

log = logging.getLogger(__name__)

MAX_CLIENTS = 32  # connections being served
MAX_CLOSING = 32  # more connections being closed gracefully (answered or refused)
OUT_HIGH = 64 * 1024  # answers buffered for one client before it is no longer read
QUEUE_TIME = 0.5  # s new connections may wait in the backlog when all slots are busy
IDLE_GRACE = 0.1  # s a connection has to send its request before it may make room
LINGER = 1.0  # s to drain a refused or closed client's input so close() sends no reset
RECV = 65536  # bytes per recv()
UBUS_SLICE = 0.05  # poll python-ubus this often when its socket could not be found
UBUS_RETRY = 10.0  # seconds between reconnects after ubusd went away


class EndpointError(Exception):
    """One line naming the address or file and the cause."""


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
                f.write(rpc.new_token() + "\n")
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
    closing: bool = False  # input is discarded; close once outbuf is sent
    shut: bool = False  # our side is shut down: waiting for the client's EOF
    eof: bool = False  # the client shut its side: answer what it asked, then close

    def idle(self) -> bool:
        """A keep-alive between requests (or one that never sent any)."""
        return not (self.inbuf or self.outbuf or self.closing or self.eof)


class Endpoints:
    """Serves JSON-RPC (if `listen`) and ubus (if `use_ubus`) from the daemon's thread."""

    client_timeout = 5.0  # a request must arrive within this; idle keep-alives close too

    def __init__(self, dispatcher: api.Dispatcher, listen: str, secret_path: str,
                 use_ubus: bool, wake_fd: int | None = None) -> None:
        self.dispatcher = dispatcher
        self.sel = selectors.DefaultSelector()
        self.clients: dict[socket.socket, _Client] = {}
        self.ready: list[_Client] = []  # clients with a whole request buffered
        self.listener: socket.socket | None = None
        self.listening = False  # the listener is in the selector
        self.full_since: float | None = None  # since when all slots are busy
        self.accept_at: float | None = None  # when to look at the backlog again
        self.listen = ""  # the bound address, as rpc_listen would say it
        self.rpc: rpc.UbusRpc | None = None
        self.ubus: UbusObject | None = None
        self._ubus_retry_at: float | None = None
        self._unix: tuple[str, int] | None = None  # path and inode we created
        try:
            if listen:
                self.rpc = rpc.UbusRpc(dispatcher, rpc.Sessions(load_secret(secret_path)))
                self.listener = self._bind(listen)
                self._watch_listener(True)
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
            # a deep backlog: a burst of clients waits there instead of being refused by
            # the kernel (a unix socket's connect() fails with EAGAIN when it is full)
            sock.listen(socket.SOMAXCONN)
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
            log.warning("ubus: cannot register %s: %s; retrying in %g s", api.DAEMON_OBJECT,
                        str(exc).strip(), UBUS_RETRY)
            self._ubus_retry_at = now + UBUS_RETRY
            return
        self._ubus_retry_at = None
        if self.ubus.fd is None:
            log.info("ubus: connection socket not found; polling it every %g s", UBUS_SLICE)
        else:
            self.sel.register(self.ubus.fd, selectors.EVENT_READ, "ubus")
        log.info("ubus: object %s registered", api.DAEMON_OBJECT)

    # -- the loop ------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Serve requests for up to `timeout` s; return early when wake_fd is readable
        (the caller drains it: it carries the signal numbers). Returns on time whatever
        the clients do: work left when the time is up waits for the next call."""
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
            if self.accept_at is not None:  # connections wait in the backlog
                if now >= self.accept_at:
                    self._accept(now)
                if self.accept_at is not None:
                    step = min(step, self.accept_at - now)
            if self.clients:
                step = min(step, min(c.deadline for c in self.clients.values()) - now)
            if self.ready:
                step = 0.0
            events = self.sel.select(max(0.0, step))
            woken = any(key.data == "wake" for key, _ in events)
            for key, mask in events:  # cheap: accept, read, send; answers come below
                if key.data == "accept":
                    self._accept(time.monotonic())
                elif key.data == "ubus":
                    self._serve_ubus()
                elif key.data != "wake" and key.data.sock in self.clients:
                    self._serve(key.data, mask)  # (not dropped earlier in this batch)
            self._serve_ready(end)
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

    def _watch_listener(self, on: bool) -> None:
        if self.listener is not None and on != self.listening:
            if on:
                self.sel.register(self.listener, selectors.EVENT_READ, "accept")
                self.full_since = self.accept_at = None
            else:
                self.sel.unregister(self.listener)
            self.listening = on

    def _accept(self, now: float) -> None:
        """Take new connections while there is room; when full, leave them in the
        backlog (as uhttpd does) and after QUEUE_TIME refuse them with a 503."""
        assert self.listener is not None
        for _ in range(MAX_CLIENTS + MAX_CLOSING):
            if len(self.clients) >= MAX_CLIENTS + MAX_CLOSING:
                self._watch_listener(False)  # the next _drop watches again
                return
            refuse = False
            serving = sum(not c.closing for c in self.clients.values())
            if serving >= MAX_CLIENTS and not self._make_room(now):
                if self.full_since is None:
                    self.full_since = now
                if now < self.full_since + QUEUE_TIME:
                    self._watch_listener(False)
                    self.accept_at = min([self.full_since + QUEUE_TIME] + [
                        c.deadline - self.client_timeout + IDLE_GRACE
                        for c in self.clients.values() if c.idle()])  # may make room then
                    return
                refuse = True
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):  # the backlog is empty
                self._watch_listener(True)
                return
            except OSError as exc:  # e.g. EMFILE: serve the clients we have, retry in 1 s
                log.warning("rpc: accept: %s", exc)
                self._watch_listener(False)
                self.accept_at = now + 1.0
                return
            sock.setblocking(False)
            client = _Client(sock, now + self.client_timeout)
            self.clients[sock] = client
            self.sel.register(sock, selectors.EVENT_READ, client)
            if refuse:
                self._close_after(client, error_response(503, "Service Unavailable",
                                                         "Retry-After: 1\r\n"))
                self._flush(client)

    def _make_room(self, now: float) -> bool:
        """Close the longest-idle keep-alive connection (HTTP lets a server do that at
        any time; clients reconnect), idle for IDLE_GRACE at least: a client that just
        connected is sending its request. One that has sent a request meanwhile stays."""
        idle_since = now - IDLE_GRACE + self.client_timeout  # as a deadline
        for client in sorted((c for c in self.clients.values()
                              if c.idle() and c.deadline <= idle_since),
                             key=lambda c: c.deadline):
            self._read(client)
            if client.sock in self.clients:
                self._flush(client)
            if client.sock not in self.clients:
                return True  # it had gone
            if client.idle():
                self._drop(client)
                return True
        return False

    @staticmethod
    def _whole(client: _Client) -> bool:
        """A whole request (or a refusal) is buffered: nothing more to read for now."""
        try:
            return parse_request(client.inbuf) is not None
        except HttpError:
            return True

    def _read(self, client: _Client) -> None:
        """Take what the client sent, as far as its buffers have room."""
        if client.eof:
            return
        if client.closing:
            size = RECV  # discarded
        elif len(client.outbuf) >= OUT_HIGH or self._whole(client):
            return  # it reads its answers first
        else:
            size = min(RECV, MAX_HEADER + MAX_BODY - len(client.inbuf))
        try:
            data = client.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset: nothing can be delivered any more
            self._drop(client)
            return
        if not data:
            client.eof = True  # a half-close: what it asked for is still answered
        elif not client.closing:
            client.inbuf += data

    def _serve(self, client: _Client, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read(client)
            if client.sock not in self.clients:
                return
        self._flush(client)

    def _serve_ready(self, end: float) -> None:
        """Answer one request of each client that has one buffered, round robin; once
        `end` is past, only one (so an overrunning poll still lets clients progress)."""
        ready, self.ready = self.ready, []
        for i, client in enumerate(ready):
            if i and time.monotonic() >= end:
                self.ready.extend(ready[i:])
                return
            if client.sock in self.clients:
                self._answer(client)
                self._flush(client)

    def _answer(self, client: _Client) -> None:
        try:
            parsed = parse_request(client.inbuf)
        except HttpError as exc:
            self._close_after(client, error_response(exc.code, exc.reason))
            return
        if parsed is None:
            return
        req, used = parsed
        del client.inbuf[:used]
        assert self.rpc is not None
        answer = response(200, "OK", self.rpc.handle(req.body), req.keep_alive)
        if not req.keep_alive:
            self._close_after(client, answer)
            return
        client.outbuf += answer
        client.deadline = time.monotonic() + self.client_timeout

    def _close_after(self, client: _Client, answer: bytes) -> None:
        """Send `answer`, then close; what the client sends meanwhile is discarded."""
        client.outbuf += answer
        client.inbuf.clear()
        client.closing = True
        client.deadline = time.monotonic() + self.client_timeout

    def _flush(self, client: _Client) -> None:
        """Send what can be sent, then settle the client's state: queued for an answer,
        closed, or registered for what it waits for."""
        if client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                return
            del client.outbuf[:sent]
        if client.closing and not client.outbuf and not (client.shut or client.eof):
            # close() with unread input would send a reset that can destroy the answer
            # at the client: shut our side, read to its EOF (or LINGER), then close
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._drop(client)
                return
            client.shut = True
            client.deadline = min(client.deadline, time.monotonic() + LINGER)
        whole = not client.closing and self._whole(client)
        if whole and len(client.outbuf) < OUT_HIGH and client not in self.ready:
            self.ready.append(client)  # answered in this round (pipelined: the next)
        if client.eof and not client.outbuf and not whole:
            self._drop(client)
            return
        wants_read = not client.eof and (
            client.closing or not (whole or len(client.outbuf) >= OUT_HIGH))
        events = (selectors.EVENT_READ if wants_read else 0) | \
            (selectors.EVENT_WRITE if client.outbuf else 0)
        # nothing to wait for means a request is queued for this round: keep the
        # registration (selectors cannot hold none), _read takes nothing meanwhile
        events = events or selectors.EVENT_READ
        if self.sel.get_key(client.sock).events != events:
            self.sel.modify(client.sock, events, client)

    def _reap(self, now: float) -> None:
        for client in [c for c in self.clients.values() if now >= c.deadline]:
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        self.sel.unregister(client.sock)
        client.sock.close()
        del self.clients[client.sock]
        self._watch_listener(True)  # a slot is free: the backlog is taken next round

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
        if self.listener is not None:
            self._watch_listener(False)
            self.listener.close()
            self.listener = None
        for client in list(self.clients.values()):
            self._drop(client)
        self._drop_ubus()
        if self._unix is not None:
            path, inode = self._unix
            try:
                if os.stat(path).st_ino == inode:  # not a successor's socket
                    os.unlink(path)
            except FileNotFoundError:
                pass
            self._unix = None
        self.sel.close()
