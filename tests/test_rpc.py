"""The /ubus JSON-RPC protocol (rpc.py) and the HTTP framing (endpoints.parse_request),
with plain values: exact shapes as uhttpd-mod-ubus + rpcd answer them."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import transcripts
from voipqos import api, rpc
from voipqos.endpoints import EndpointError, HttpError, parse_listen, parse_request

NULL = rpc.NULL_SESSION
SECRET = "s3cret"


def stub_dispatcher() -> api.Dispatcher:
    def set_mode(args):
        if args.get("mode") not in ("on", "off", "auto"):
            raise api.InvalidArgument("set_mode: mode must be on, off or auto")
        return {"mode": args["mode"]}

    def boom(args):
        raise RuntimeError("handler bug")

    return api.Dispatcher({"status": lambda a: {"state": "watching"},
                           "flows": lambda a: {"all": a.get("all", False)},
                           "check": boom, "set_mode": set_mode,
                           "reload": lambda a: {"reloaded": True}})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def srv(clock):
    return rpc.UbusRpc(stub_dispatcher(), rpc.Sessions(SECRET, clock))


def ask(srv, doc):
    return json.loads(srv.handle(json.dumps(doc).encode()))


def call(srv, sid, obj, method, args=None, rid=1):
    return ask(srv, {"jsonrpc": "2.0", "id": rid, "method": "call",
                     "params": [sid, obj, method, {} if args is None else args]})


def login(srv, password=SECRET):
    return call(srv, NULL, "session", "login", {"username": "root", "password": password})


def test_luci_request_shape_as_rpc_js_builds_it(srv):
    # LuCI rpc.js: POST /ubus, body {"jsonrpc":"2.0","id":N,"method":"call","params":[...]}
    sid = login(srv)["result"][1]["ubus_rpc_session"]
    body = (b'{"jsonrpc":"2.0","id":7,"method":"call","params":["%s","voipqos","status",{}]}'
            % sid.encode())
    assert json.loads(srv.handle(body)) == {"jsonrpc": "2.0", "id": 7,
                                            "result": [0, {"state": "watching"}]}


def test_login_ok_answers_rpcd_shape(srv):
    ans = login(srv)
    status, data = ans["result"]
    assert status == 0
    assert len(data["ubus_rpc_session"]) == 32 and int(data["ubus_rpc_session"], 16) >= 0
    assert data["timeout"] == 300 and data["expires"] == 300
    assert data["data"] == {"username": "root"}
    assert "voipqos" in data["acls"]["ubus"]


@pytest.mark.parametrize("creds", [{"username": "root", "password": "wrong"},
                                   {"username": "admin", "password": SECRET},
                                   {"username": "root"}, {}])
def test_login_refused_is_status_6(srv, creds):
    assert call(srv, NULL, "session", "login", creds)["result"] == [6]


def test_logged_in_session_writes(srv):
    sid = login(srv)["result"][1]["ubus_rpc_session"]
    assert call(srv, sid, "voipqos", "set_mode", {"mode": "on"})["result"] == [0, {"mode": "on"}]
    assert call(srv, sid, "voipqos", "reload")["result"] == [0, {"reloaded": True}]


def test_session_expires_unless_used(srv, clock):
    sid = login(srv)["result"][1]["ubus_rpc_session"]
    clock.now += 299
    assert call(srv, sid, "voipqos", "reload")["result"][0] == 0  # use extends it
    clock.now += 299
    assert call(srv, sid, "voipqos", "reload")["result"][0] == 0
    clock.now += 300
    assert call(srv, sid, "voipqos", "reload")["error"]["code"] == -32002


def test_unknown_session_id_is_denied(srv):
    assert call(srv, "f" * 32, "voipqos", "reload")["error"]["code"] == -32002


def test_sessions_are_bounded(clock):
    s = rpc.Sessions(SECRET, clock)
    sids = [s.login("root", SECRET) for _ in range(rpc.MAX_SESSIONS + 5)]
    assert not s.touch(sids[0]) and s.touch(sids[-1])


def test_list(srv):
    assert ask(srv, {"jsonrpc": "2.0", "id": 1, "method": "list"})["result"] == [
        "session", "voipqos"]
    ans = ask(srv, {"jsonrpc": "2.0", "id": 2, "method": "list", "params": ["voip*"]})
    assert ans["result"] == {"voipqos": {
        "status": {}, "flows": {"all": "boolean"}, "check": {},
        "set_mode": {"mode": "string", "expires": "number"}, "reload": {}}}


def test_batch(srv):
    ans = json.loads(srv.handle(json.dumps([
        {"jsonrpc": "2.0", "id": 1, "method": "call", "params": [NULL, "session", "login", {}]},
        {"jsonrpc": "2.0", "id": 2, "method": "list"}]).encode()))
    assert [a["id"] for a in ans] == [1, 2]


@given(st.binary(max_size=300))
def test_any_body_gets_a_json_answer(body):
    srv = rpc.UbusRpc(stub_dispatcher(), rpc.Sessions(SECRET))
    json.loads(srv.handle(body))


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                         max_size=4),
                    max_leaves=12))
def test_any_json_gets_a_json_rpc_answer(doc):
    srv = rpc.UbusRpc(stub_dispatcher(), rpc.Sessions(SECRET))
    ans = json.loads(srv.handle(json.dumps(doc).encode()))
    for a in ans if isinstance(ans, list) else [ans]:
        assert a["jsonrpc"] == "2.0" and ("result" in a) != ("error" in a)


# -- HTTP framing --------------------------------------------------------------------------


def test_parse_request_complete_partial_pipelined():
    req = b"POST /ubus HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    assert parse_request(req[:-1]) is None
    parsed, used = parse_request(req + req)
    assert parsed.body == b"{}" and parsed.keep_alive and used == len(req)
    closing = req.replace(b"Host: x", b"Connection: close")
    assert not parse_request(closing)[0].keep_alive
    assert not parse_request(req.replace(b"HTTP/1.1", b"HTTP/1.0"))[0].keep_alive


@pytest.mark.parametrize(("req", "code"), [
    (b"GET /ubus HTTP/1.1\r\n\r\n", 405),
    (b"POST /cgi-bin/luci HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 404),
    (b"POST /ubus HTTP/1.1\r\n\r\n", 411),
    (b"POST /ubus HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST /ubus HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /ubus HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
    (b"HELLO\r\n\r\n", 400),
    (b"POST /ubus HTTP/1.1\r\n" + b"X: y\r\n" * 2000, 431),
])
def test_parse_request_refusals(req, code):
    with pytest.raises(HttpError) as exc:
        parse_request(req)
    assert exc.value.code == code


@given(st.binary(max_size=400))
def test_parse_request_never_fails_otherwise(buf):
    with contextlib.suppress(HttpError):
        parse_request(buf)


@pytest.mark.parametrize(("listen", "want"), [
    ("unix:/run/v.sock", "/run/v.sock"),
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("127.3.2.1:1", ("127.3.2.1", 1)),
    ("[::1]:80", ("::1", 80)),
    ("localhost:80", ("127.0.0.1", 80)),
])
def test_parse_listen_loopback_only(listen, want):
    assert parse_listen(listen)[1] == want


@pytest.mark.parametrize("listen", ["0.0.0.0:80", "192.168.1.1:80", "[::]:80", "host:80",
                                    "unix:relative", "127.0.0.1", "127.0.0.1:99999", ""])
def test_parse_listen_refuses_the_network(listen):
    with pytest.raises(EndpointError, match="rpc_listen"):
        parse_listen(listen)


# -- replay of the real uhttpd + rpcd + plugin (tests/data/transcripts/jsonrpc.json) ------


def replay_jsonrpc(post) -> list[tuple[str, object, object]]:
    """Send every recorded request through `post(body) -> reply`; the differences."""
    sid, diffs = None, []
    for entry in transcripts.load("jsonrpc"):
        got = json.loads(post(transcripts.request_body(entry, sid or transcripts.SID)))
        if entry["name"] == "login":
            sid = got["result"][1]["ubus_rpc_session"]
            got, want = transcripts.login_shape(got), transcripts.login_shape(entry["reply"])
        else:
            got, want = transcripts.normalized(got, sid), entry["reply"]
        if got != want:
            diffs.append((entry["name"], want, got))
    return diffs


def test_rpc_answers_as_the_real_stack_recorded(clock):
    password = transcripts.load("jsonrpc")[1]["request"]["params"][3]["password"]
    srv = rpc.UbusRpc(stub_dispatcher(), rpc.Sessions(password, clock))
    assert replay_jsonrpc(srv.handle) == []


def test_luci_test_server_answers_as_the_real_stack_recorded(clock, tmp_path):
    """The LuCI test server (uhttpd's stand-in for the views) in front of rpc.py."""
    import http.client

    from luci.server import LuciServer

    password = transcripts.load("jsonrpc")[1]["request"]["params"][3]["password"]
    srv = rpc.UbusRpc(stub_dispatcher(), rpc.Sessions(password, clock))
    with LuciServer(srv.handle, tmp_path, "0" * 32) as server:
        def post(body: bytes) -> bytes:
            conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
            try:
                conn.request("POST", "/ubus", body, {"Content-Type": "application/json"})
                return conn.getresponse().read()
            finally:
                conn.close()

        assert replay_jsonrpc(post) == []
        sid = json.loads(post(json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "call",
             "params": [NULL, "session", "login",
                        {"username": "root", "password": password}]}).encode()))
        server.sessionid = sid["result"][1]["ubus_rpc_session"]
        # the uci object the server answers itself: as uhttpd, a caller's session is refused
        ans = json.loads(post(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "call", "params": [
            server.sessionid, "uci", "get",
            {"config": "voipqos", "ubus_rpc_session": NULL}]}).encode()))
        assert ans["error"] == {"code": -32602, "message": "Invalid parameters"}
