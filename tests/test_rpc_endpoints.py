"""Endpoints on real sockets (unix socket in tmp, 127.0.0.1:ephemeral): HTTP framing,
limits, the single thread of control (slow clients, many requests, wake fd)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from test_rpc import stub_dispatcher
from voipqos import rpc
from voipqos.endpoints import MAX_CLIENTS, OUT_HIGH, EndpointError, Endpoints
from voipqos.httpframe import MAX_BODY, MAX_HEADER

# a call the null session may make (it has only rpcd's `unauthenticated` group)
STATUS = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "call",
                     "params": [rpc.NULL_SESSION, "session", "access",
                                {"scope": "ubus", "object": "voipqos",
                                 "function": "status"}]}).encode()


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
    assert body_of(resp) == {"jsonrpc": "2.0", "id": 1, "result": [0, {"access": False}]}


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


# -- issue 14: bounded, fair, never raising ---------------------------------------------

def call(sid: str, obj: str, method: str, args: dict) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "call",
                       "params": [sid, obj, method, args]}).encode()


@pytest.mark.parametrize("body", [
    b"[" * 30000 + b"]" * 30000,  # the daemon exited (RecursionError)
    b'{"jsonrpc":"2.0","id":' + b"[" * 33 + b"]" * 33 + b',"method":"list"}',
    call(rpc.NULL_SESSION, "session", "login", {}).replace(b"{}", b'{"timeout":1e400}'),
    call(rpc.NULL_SESSION, "session", "login", {}).replace(b"{}", b'{"timeout":1' + b"0" * 400
                                                            + b"}"),
    b'{"jsonrpc":"2.0","id":NaN,"method":"list"}',
])
def test_json_beyond_json_c_limits_is_a_parse_error(ep, body):
    with connect(ep) as s:
        resp = exchange(ep, s, post(body))
    assert body_of(resp)["error"]["code"] == -32700


def test_login_with_a_huge_timeout_gets_invalid_argument_not_a_crash(ep, tmp_path):
    secret = (tmp_path / "rpc.secret").read_text().strip()
    login = call(rpc.NULL_SESSION, "session", "login",
                 {"username": "root", "password": secret, "timeout": 2**63 - 1})
    with connect(ep) as s:
        answer = body_of(exchange(ep, s, post(login)))
    assert answer["result"][0] == 0
    assert body_of(exchange(ep, connect(ep), post(STATUS)))["result"][0] == 0


def test_failed_logins_are_logged_once_a_minute(ep, caplog):
    bad = post(call(rpc.NULL_SESSION, "session", "login", {"username": "root",
                                                             "password": "x" * 100}))
    with connect(ep) as s:
        resp = exchange(ep, s, bad * 50, want=50)
    assert resp.count(b'"result":[6]') == 50  # each refused...
    lines = [r for r in caplog.records if "failed login" in r.getMessage()]
    assert len(lines) == 1  # ...one line (17,099 logins in 5 s gave 17,099 lines)
    assert len(lines[0].getMessage()) < 100


def test_a_client_that_does_not_read_is_not_read_and_closed_at_its_deadline(ep):
    ep.client_timeout = 0.5
    hog = connect(ep)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        for _ in range(20000):  # pipelined requests, answers never read
            sent += hog.send(post(STATUS))
            ep.wait(0)
    client = next(iter(ep.clients.values()))
    assert len(client.outbuf) < OUT_HIGH + 1024  # bounded, not the whole backlog
    assert len(client.inbuf) <= MAX_HEADER + MAX_BODY
    with connect(ep) as other:  # others are answered meanwhile
        assert body_of(exchange(ep, other, post(STATUS)))["result"][0] == 0
    ep.wait(0.6)
    assert client.sock not in ep.clients  # past its deadline with unread answers
    hog.close()
    assert sent > 100 * len(post(STATUS))


def test_past_the_deadline_one_request_is_answered_per_wait(ep):
    socks = [connect(ep) for _ in range(10)]
    for s in socks:
        s.sendall(post(STATUS))
    time.sleep(0.05)
    ep.wait(0)  # accept
    ep.wait(0)  # read all ten; answer one: the poll is due
    assert len(ep.ready) == 9
    for _ in range(9):
        ep.wait(0)
    assert not ep.ready
    for s in socks:
        s.settimeout(1)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.close()


def answers(ep: Endpoints, socks: list[socket.socket], seconds: float) -> list[bytes]:
    """Serve until every socket has a whole answer (then closes it, as clients do) or
    was closed (or `seconds`)."""
    got = {s: b"" for s in socks}
    open_ = set(socks)
    for s in socks:
        s.setblocking(False)
    end = time.monotonic() + seconds
    while open_ and time.monotonic() < end:
        ep.wait(0.01)
        for s in list(open_):
            try:
                chunk = s.recv(65536)
            except (BlockingIOError, TimeoutError):
                continue
            got[s] += chunk
            if not chunk or b"\r\n\r\n" in got[s]:
                open_.discard(s)
                s.close()
    return [got[s] for s in socks]


def test_200_parallel_calls_are_answered_or_cleanly_refused(ep):
    socks = []
    for _ in range(200):
        s = connect(ep)  # none fails: the backlog is deep
        s.sendall(post(STATUS, "Connection: close\r\n"))
        socks.append(s)
    got = answers(ep, socks, 10)
    codes = [g[9:12] for g in got]
    assert set(codes) <= {b"200", b"503"}
    assert codes.count(b"200") >= 32
    for g in got:
        if g.startswith(b"HTTP/1.1 503"):
            assert b"Retry-After: 1" in g


def test_idle_clients_make_room_for_a_working_one(ep):
    idle = [connect(ep) for _ in range(100)]
    for _ in range(5):
        ep.wait(0.05)  # some get a slot and stay idle past IDLE_GRACE
    with connect(ep) as watcher:
        watcher.sendall(post(STATUS))
        assert answers(ep, [watcher], 3)[0].startswith(b"HTTP/1.1 200")
    assert len(ep.clients) <= MAX_CLIENTS
    for s in idle:
        s.close()


def send_all_then_read_to_eof(ep: Endpoints, data: bytes) -> bytes:
    """Send, half-close, and serve until the endpoint closes (or 3 s): all it answered."""
    with connect(ep) as s:
        s.settimeout(2)
        with contextlib.suppress(BrokenPipeError):
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        end = time.monotonic() + 3
        while time.monotonic() < end:
            ep.wait(0.01)
            with contextlib.suppress(TimeoutError):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
    return got


def test_a_half_closed_client_still_gets_its_answers(ep):
    got = send_all_then_read_to_eof(ep, post(STATUS) * 3)
    assert got.count(b"HTTP/1.1 200") == 3
    assert not ep.clients


def test_bad_arguments_are_logged_once_a_minute_and_short(ep, caplog):
    secret = ep.rpc.sessions._password.decode()  # the null session may call nothing
    sid = ep.rpc.sessions.login(rpc.USER, secret)
    bad = post(call(sid, "voipqos", "set_mode", {"mode": "x" * 5000}))
    with connect(ep) as s:
        resp = exchange(ep, s, bad * 20, want=20)
    assert resp.count(b'"result":[2,') == 20
    lines = [r.getMessage() for r in caplog.records if "mode must be" in r.getMessage()]
    assert len(lines) == 1 and len(lines[0]) < 300


UHTTPD = json.loads((Path(__file__).parent / "data/uhttpd/answers.json").read_text())
# where we answer otherwise on purpose (tests/data/uhttpd/record.py recorded uhttpd's)
UHTTPD_DIFFERS = {
    "cl_5000_digits": (400, None),  # uhttpd: 413, its line buffer overflows first
    "header_17k": (431, None),  # uhttpd: 413 for one line beyond its buffer
    "body_64k_plus_1": (413, None),  # uhttpd: -32700 after reading 64 KiB of it
    "cl_and_chunked": (400, None),
    "json_nan": (200, -32700),  # json-c takes NaN, 1e400 (inf) and clamps integers:
    "json_1e400": (200, -32700),  # echoed back in `id` Python would write invalid
    "json_int_beyond_int64": (200, -32700),  # JSON or another number
}


@pytest.mark.parametrize("case", sorted(UHTTPD["cases"]))
def test_refusals_as_the_real_uhttpd_answers_them(ep, case):
    """Status and JSON-RPC error code uhttpd gave for the same bytes (no reset here)."""
    request = base64.b64decode(UHTTPD["cases"][case]["request"])
    uhttpd = UHTTPD["cases"][case]["answer"]
    want = UHTTPD_DIFFERS.get(case, (uhttpd["status"], uhttpd.get("rpc_error")))
    got = send_all_then_read_to_eof(ep, request)
    status = int(got[9:12])
    doc = body_of(got) if status == 200 else None
    error = doc["error"]["code"] if isinstance(doc, dict) and "error" in doc else None
    assert (status, error) == want


def test_out_of_file_descriptors_is_retried_not_spun_on(ep, caplog):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with connect(ep) as s:
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # accept() fails: EMFILE
        try:
            for _ in range(20):
                ep.wait(0.01)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert len([r for r in caplog.records if "accept" in r.getMessage()]) == 1
        ep.wait(1.1)  # retried: served
        s.sendall(post(STATUS))
        got = answers(ep, [s], 2)[0]
    assert got.startswith(b"HTTP/1.1 200")
