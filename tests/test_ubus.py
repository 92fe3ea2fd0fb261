"""The ubus adapter against tests/fake_ubus/ubus.py, a FAKE of python-ubus's module API
(the real binding needs libubus, which Debian does not have)."""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
from pathlib import Path

import pytest

from test_rpc import stub_dispatcher
from voipqos import api
from voipqos.endpoints import Endpoints
from voipqos.ubus import UbusObject

# loaded by path, not put on sys.path: other tests must still see "no python-ubus here"
_spec = importlib.util.spec_from_file_location("ubus", Path(__file__).parent / "fake_ubus/ubus.py")
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)


@pytest.fixture(autouse=True)
def bus(tmp_path, monkeypatch):
    sock = str(tmp_path / "ubus.sock")
    fake.fake_reset()
    fake.fake_ubusd(sock)
    monkeypatch.setattr(fake, "DEFAULT_SOCKET", sock)
    yield
    fake.fake_reset()


@pytest.fixture
def obj():
    o = UbusObject(stub_dispatcher(), fake)
    yield o
    o.close()


def test_registers_voipqos_with_typed_signature(obj):
    assert fake.objects() == {"voipqos": {
        "status": {}, "check": {}, "reload": {},
        "flows": {"all": fake.BLOBMSG_TYPE_BOOL},
        "set_mode": {"mode": fake.BLOBMSG_TYPE_STRING, "expires": fake.BLOBMSG_TYPE_INT32}}}
    assert set(fake.objects()["voipqos"]) == set(api.SPECS)


def test_calls_answer_the_handler_document(obj):
    assert fake.call("voipqos", "status", {}) == [{"state": "watching"}]
    assert fake.call("voipqos", "flows", {"all": True}) == [{"all": True}]
    assert fake.call("voipqos", "set_mode", {"mode": "on", "expires": 60}) == [{"mode": "on"}]


@pytest.mark.parametrize(("method", "args"), [
    ("flows", {"all": 1}),  # int, not bool
    ("flows", {"all": "yes"}),
    ("set_mode", {"mode": 1, "expires": 0}),
    ("set_mode", {"mode": "on", "expires": 2**40}),  # INT64, not INT32
    ("status", {"extra": 1}),
])
def test_wrong_types_are_invalid_argument_before_python(obj, method, args):
    with pytest.raises(RuntimeError, match="Invalid argument"):
        fake.call("voipqos", method, args)


def test_rejected_value_is_an_error_status_with_message(obj, capsys):
    fake.fake_request("voipqos", "set_mode", {"mode": "loud", "expires": 0})
    obj.process()
    status, replies = fake.fake_replies[-1]
    assert status == fake.STATUS_UNKNOWN_ERROR  # python-ubus cannot answer 2 from Python
    assert replies == [{"error": "set_mode: mode must be on, off or auto"}]
    assert "Rejected" in capsys.readouterr().err  # python-ubus prints it (PyErr_Print)


def test_handler_bug_answers_error_and_the_loop_goes_on(obj):
    fake.fake_request("voipqos", "check", {})
    fake.fake_request("voipqos", "status", {})
    obj.process()
    assert [s for s, _ in fake.fake_replies] == [fake.STATUS_UNKNOWN_ERROR, fake.STATUS_OK]
    assert "check failed: handler bug" in fake.fake_replies[0][1][0]["error"]


def test_finds_the_connection_socket(obj):
    assert obj.fd == fake._conn["client"].fileno()  # python-ubus has no fd accessor
    assert not obj.lost()
    fake.fake_hangup()
    assert obj.lost()


def test_send_event(obj):
    obj.send_event("voipqos.call", {"state": "start", "calls": ["a>b"]})
    assert fake.fake_sent == [("voipqos.call", {"state": "start", "calls": ["a>b"]})]
    fake.disconnect()
    obj.send_event("voipqos.call", {"state": "end"})  # logged, not raised


def test_connect_failure_raises(tmp_path):
    with pytest.raises(OSError, match="Failed to connect"):
        UbusObject(stub_dispatcher(), fake, str(tmp_path / "nope"))
    assert not fake.get_connected()


# -- through Endpoints: one thread for ubus, JSON-RPC and the wake fd -----------------------


@pytest.fixture
def ep(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ubus", fake)
    r, w = socket.socketpair()
    e = Endpoints(stub_dispatcher(), "127.0.0.1:0", str(tmp_path / "s"), True, r.fileno())
    yield e, w
    e.close()
    r.close()
    w.close()


def test_endpoints_serve_ubus_as_soon_as_it_asks(ep):
    e, _w = ep
    assert e.ubus is not None and e.ubus.fd is not None
    fake.fake_request("voipqos", "status", {})
    t0 = time.monotonic()
    e.wait(0.05)
    assert fake.fake_replies == [(0, [{"state": "watching"}])]
    assert time.monotonic() - t0 < 0.1


def test_endpoints_send_event_over_ubus(ep):
    e, _w = ep
    e.send_event("voipqos.call", {"state": "end"})
    assert fake.fake_sent == [("voipqos.call", {"state": "end"})]


def test_endpoints_survive_ubusd_restart(ep, monkeypatch):
    e, _w = ep
    monkeypatch.setattr("voipqos.endpoints.UBUS_RETRY", 0.05)
    fake.fake_hangup()
    t0 = time.monotonic()
    e.wait(0.02)  # notices the hang-up without spinning
    assert e.ubus is None and time.monotonic() - t0 < 0.1
    e.wait(0.1)  # reconnects
    assert e.ubus is not None
    fake.fake_request("voipqos", "status", {})
    e.wait(0.02)
    assert fake.fake_replies[-1][0] == 0


def test_endpoints_without_ubusd_keep_serving_json_rpc(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ubus", fake)
    monkeypatch.setattr(fake, "DEFAULT_SOCKET", str(tmp_path / "absent.sock"))
    e = Endpoints(stub_dispatcher(), "127.0.0.1:0", str(tmp_path / "s"), True)
    try:
        assert e.ubus is None and e.listener is not None
        e.wait(0.01)
    finally:
        e.close()


def test_endpoints_poll_ubus_when_its_socket_is_unknown(ep, monkeypatch):
    e, _w = ep
    e.sel.unregister(e.ubus.fd)
    e.ubus.fd = None  # as if /proc/self/fd showed no single new socket
    fake.fake_request("voipqos", "status", {})
    t0 = time.monotonic()
    e.wait(0.2)
    assert fake.fake_replies and time.monotonic() - t0 >= 0.2
