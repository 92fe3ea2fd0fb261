"""The ubus adapter against tests/fake_ubus/ubus.py, a FAKE of python-ubus's module API
(the real binding needs libubus, which Debian does not have)."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import pytest

import transcripts
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


DAEMON = api.DAEMON_OBJECT
PLUGIN = Path(__file__).parents[1] / "files/usr/share/rpcd/ucode/voipqos.uc"


def test_registers_the_daemon_object_with_typed_signature(obj):
    assert fake.objects() == {DAEMON: {
        "status": {}, "check": {}, "reload": {},
        "flows": {"all": fake.BLOBMSG_TYPE_BOOL},
        "set_mode": {"mode": fake.BLOBMSG_TYPE_STRING, "expires": fake.BLOBMSG_TYPE_INT32}}}
    assert set(fake.objects()[DAEMON]) == set(api.SPECS)


@pytest.mark.parametrize("row", [r for r in transcripts.load("ubus_cli")
                                 if r["argv"][1] == DAEMON],
                         ids=lambda r: " ".join(r["argv"][2:]))
def test_fake_python_ubus_answers_as_the_real_one(obj, row, capsys):
    """Recorded from python-ubus 0.1.3 on the real ubusd: its argument checks, statuses
    and replies; no traceback in the log."""
    method = row["argv"][2]
    fake.fake_request(DAEMON, method, json.loads(row["argv"][3]) if len(row["argv"]) > 3
                      else {})
    obj.process()
    status, replies = fake.fake_replies[-1]
    assert status == transcripts.cli_status(row)
    assert (replies[-1] if replies else None) == row["reply"]
    assert "Traceback" not in capsys.readouterr().err


def plugin_methods() -> dict:
    """The METHODS table of the rpcd ucode plugin (a JSON object literal there)."""
    text = PLUGIN.read_text()
    start = text.index("const METHODS = ") + len("const METHODS = ")
    return json.loads(text[start:text.index("};", start) + 1])


def test_plugin_forwards_what_the_daemon_object_requires(obj):
    """The LuCI -> uhttpd -> rpcd plugin -> voipqos.daemon path: the plugin declares every
    method with every argument (all optional there) and sends each with its default, which
    is exactly what python-ubus demands of the daemon's signature."""
    table = plugin_methods()
    assert table == {m: api.with_defaults(m) for m in api.SPECS}
    for method, args in table.items():
        fake.fake_request(DAEMON, method, args)
        obj.process()
        assert fake.fake_replies[-1][0] != fake.STATUS_INVALID_ARGUMENT, method


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
    fake.fake_request(DAEMON, "status", {})
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
    fake.fake_request(DAEMON, "status", {})
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
    fake.fake_request(DAEMON, "status", {})
    t0 = time.monotonic()
    e.wait(0.2)
    assert fake.fake_replies and time.monotonic() - t0 >= 0.2
