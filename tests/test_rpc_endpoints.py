"""Endpoints on real sockets (unix socket in tmp, 127.0.0.1:ephemeral): HTTP framing,
limits, the single thread of control (slow clients, many requests, wake fd)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time

import pytest

from test_rpc import stub_dispatcher
from voipqos import rpc
from voipqos.endpoints import EndpointError, Endpoints
from voipqos.httpframe import MAX_BODY

STATUS = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "call",
                     "params": [rpc.NULL_SESSION, "voipqos", "status", {}]}).encode()


def post(body: bytes, extra: str = "") -> bytes:
    return (f"POST /ubus HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body


@pytest.fixture(params=["unix", "tcp"])
def ep(request, tmp_path):
    listen = f"unix:{tmp_path}/rpc.sock" if request.param == "unix" else "127.0.0.1:0"
    e = Endpoints(stub_dispatcher(), listen, str(tmp_path / "rpc.secret"), False)
    yield e
    e.close()


def connect(ep: Endpoints) -> socket.socket:
    if ep.listen.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(ep.listen[5:])
    else:
        host, port = ep.listen.rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    s.settimeout(0.01)
    return s


def exchange(ep: Endpoints, s: socket.socket, data: bytes, want: int = 1) -> bytes:
    """Send, then serve until `want` complete responses arrived (or 2 s)."""
    s.sendall(data)
    got = b""
    end = time.monotonic() + 2
    while time.monotonic() < end and got.count(b"HTTP/1.1 ") < want:
        ep.wait(0.01)
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        got += chunk
    return got


def body_of(resp: bytes) -> dict:
    return json.loads(resp.split(b"\r\n\r\n", 1)[1])


def test_status_over_http(ep):
    with connect(ep) as s:
        resp = exchange(ep, s, post(STATUS))
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/json" in resp
    assert body_of(resp) == {"jsonrpc": "2.0", "id": 1, "result": [0, {"state": "watching"}]}


def test_keep_alive_and_pipelining(ep):
    with connect(ep) as s:
        resp = exchange(ep, s, post(STATUS) * 3, want=3)
        assert resp.count(b"HTTP/1.1 200 OK") == 3
        assert exchange(ep, s, post(STATUS)).startswith(b"HTTP/1.1 200")  # same connection


def test_huge_body_is_413_and_closed(ep):
    with connect(ep) as s:
        resp = exchange(ep, s, f"POST /ubus HTTP/1.1\r\nContent-Length: {MAX_BODY + 1}"
                               "\r\n\r\n".encode())
    assert resp.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in resp
    ep.wait(0.05)  # the client's EOF ends our graceful close
    assert not ep.clients


def test_malformed_json_is_a_json_rpc_parse_error(ep):
    with connect(ep) as s:
        resp = exchange(ep, s, post(b"{oops"))
    assert resp.startswith(b"HTTP/1.1 200") and body_of(resp)["error"]["code"] == -32700


def test_wrong_path_and_method(ep):
    with connect(ep) as s:
        assert exchange(ep, s, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    with connect(ep) as s:
        assert exchange(ep, s, b"GET /ubus HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")


def test_slow_and_half_open_clients_do_not_delay_wait(ep):
    ep.client_timeout = 0.3
    slow = [connect(ep) for _ in range(5)]
    for s in slow:
        s.sendall(b"POST /ubus HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # never finishes
    t0 = time.monotonic()
    ep.wait(0.1)
    assert time.monotonic() - t0 < 0.15
    with connect(ep) as s:  # others are served meanwhile
        assert body_of(exchange(ep, s, post(STATUS)))["result"][0] == 0
    t0 = time.monotonic()
    ep.wait(0.4)
    assert time.monotonic() - t0 < 0.5
    assert not ep.clients  # dropped at their deadline
    for s in slow:
        s.close()


def test_many_requests_in_one_wait(ep):
    socks = [connect(ep) for _ in range(40)]  # more than MAX_CLIENTS at once
    for s in socks:
        s.sendall(post(STATUS))
    ep.wait(0.3)
    answered = 0
    for s in socks:
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            answered += s.recv(65536).startswith(b"HTTP/1.1 200")
        s.close()
    assert answered >= 32


def test_wake_fd_returns_early(tmp_path):
    r, w = socket.socketpair()
    e = Endpoints(stub_dispatcher(), "127.0.0.1:0", str(tmp_path / "s"), False, r.fileno())
    try:
        t0 = time.monotonic()
        e.wait(0.05)
        assert time.monotonic() - t0 >= 0.05
        w.send(b"\x0f")  # what signal.set_wakeup_fd writes
        t0 = time.monotonic()
        e.wait(5)
        assert time.monotonic() - t0 < 0.1
    finally:
        e.close()
        r.close()
        w.close()


def test_wait_zero_serves_once_and_returns(ep):
    with connect(ep) as s:
        s.sendall(post(STATUS))
        time.sleep(0.02)
        t0 = time.monotonic()
        ep.wait(0)  # accept
        ep.wait(0)  # read and answer
        assert time.monotonic() - t0 < 0.05
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_unix_socket_and_secret_are_private(tmp_path):
    e = Endpoints(stub_dispatcher(), f"unix:{tmp_path}/run/rpc.sock",
                  str(tmp_path / "run/rpc.secret"), False)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "run/rpc.sock").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "run/rpc.secret").st_mode) == 0o600
        assert len((tmp_path / "run/rpc.secret").read_text().strip()) == 32
    finally:
        e.close()
    assert not (tmp_path / "run/rpc.sock").exists()  # removed on close
    assert (tmp_path / "run/rpc.secret").exists()  # kept: the CLI may still hold it


def test_stale_socket_is_replaced_live_one_refused(tmp_path):
    path = tmp_path / "rpc.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # a daemon killed with -9 leaves this behind
    e = Endpoints(stub_dispatcher(), f"unix:{path}", str(tmp_path / "s"), False)
    try:
        with pytest.raises(EndpointError, match="another process is listening"):
            Endpoints(stub_dispatcher(), f"unix:{path}", str(tmp_path / "s"), False)
    finally:
        e.close()


def test_listen_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for listen in ("0.0.0.0:1234", f"unix:{tmp_path}/file"):
        with pytest.raises(EndpointError, match="rpc_listen") as exc:
            Endpoints(stub_dispatcher(), listen, str(tmp_path / "s"), False)
        assert "\n" not in str(exc.value)


def test_existing_secret_is_kept(tmp_path):
    (tmp_path / "s").write_text("mine\n")
    os.chmod(tmp_path / "s", 0o644)
    e = Endpoints(stub_dispatcher(), "127.0.0.1:0", str(tmp_path / "s"), False)
    e.close()
    assert (tmp_path / "s").read_text() == "mine\n"
    assert stat.S_IMODE(os.stat(tmp_path / "s").st_mode) == 0o600


def test_no_endpoint_at_all_still_waits(tmp_path):
    e = Endpoints(stub_dispatcher(), "", str(tmp_path / "s"), False)
    try:
        t0 = time.monotonic()
        e.wait(0.05)
        assert 0.05 <= time.monotonic() - t0 < 0.1
        e.send_event("voipqos.call", {"state": "start"})  # no ubus: nothing, no error
    finally:
        e.close()
    assert not (tmp_path / "s").exists()
