"""FAKE python-ubus for tests: NOT the real binding (that needs libubus, absent on Debian).

Mirrors the module-level API and behaviour of python-ubus 0.1.x (ubus_python.c) that
voipqos relies on: connect(socket_path=...), disconnect(deregister=True), get_connected(),
add(object_name, {method: {"signature": {arg: BLOBMSG_TYPE_*}, "method": cb}}),
loop(timeout=-1), send(event, data), call(object, method, arguments, timeout=0) -> list,
objects(path="*"), the BLOBMSG_TYPE_* constants and handler.reply(dict). As in the C
code: a call is checked against the signature first (every declared argument present,
no others, exact blobmsg type) -> status 2; the callback's return value is ignored; an
exception in it goes to sys.excepthook (PyErr_Print) and is answered with status 9.
tests/test_ubus.py replays the calls recorded from the real python-ubus 0.1.3
(tests/data/transcripts/ubus_cli.json) against this fake.

Test hooks (prefixed fake_): fake_ubusd(path) listens where ubusd would (connect() only
succeeds then, and like the real one opens exactly one socket in this process);
fake_request() delivers a call as ubusd would (the client socket becomes readable and
loop(0) serves it); fake_replies and fake_sent record what went out; fake_hangup()
makes ubusd close the connection; fake_reset() forgets all.
"""

from __future__ import annotations

import socket
import sys

DEFAULT_SOCKET = "/var/run/ubus/ubus.sock"
BLOBMSG_TYPE_UNSPEC, BLOBMSG_TYPE_ARRAY, BLOBMSG_TYPE_TABLE, BLOBMSG_TYPE_STRING = 0, 1, 2, 3
BLOBMSG_TYPE_INT64, BLOBMSG_TYPE_INT32, BLOBMSG_TYPE_INT16, BLOBMSG_TYPE_INT8 = 4, 5, 6, 7
BLOBMSG_TYPE_BOOL, BLOBMSG_TYPE_DOUBLE = 7, 8
STATUS_OK, STATUS_INVALID_ARGUMENT, STATUS_METHOD_NOT_FOUND = 0, 2, 3
STATUS_NOT_FOUND, STATUS_UNKNOWN_ERROR = 4, 9
_STRERROR = {2: "Invalid argument", 3: "Method not found", 4: "Not found",
             9: "Unknown error"}

_conn: dict = {}  # "client": our end, "bus": ubusd's end once accepted, "path"
_ubusd: list[socket.socket] = []  # the listening socket, when fake_ubusd() was called
_objects: dict[str, dict] = {}
_queue: list[tuple[str, str, dict]] = []
fake_replies: list[tuple[int, list]] = []
fake_sent: list[tuple[str, dict]] = []


def _blobmsg_type(value) -> int:
    """The blobmsg type blobmsg_add_json_from_string gives a JSON value."""
    if isinstance(value, bool):
        return BLOBMSG_TYPE_BOOL
    if isinstance(value, int):
        return BLOBMSG_TYPE_INT32 if -2**31 <= value < 2**31 else BLOBMSG_TYPE_INT64
    return {float: BLOBMSG_TYPE_DOUBLE, str: BLOBMSG_TYPE_STRING, dict: BLOBMSG_TYPE_TABLE,
            list: BLOBMSG_TYPE_ARRAY}.get(type(value), BLOBMSG_TYPE_UNSPEC)


def _need_connection() -> None:
    if not _conn:
        raise RuntimeError("You are not connected to ubus.")


class _ResponseHandler:
    def __init__(self, replies: list) -> None:
        self._replies = replies

    def reply(self, data) -> bool:
        _need_connection()
        if not isinstance(data, dict):
            raise TypeError("Failed to create json for ubus.")
        self._replies.append(data)
        return True


def connect(socket_path: str | None = None) -> bool:
    if _conn:
        raise RuntimeError("You are already connected to ubus.")
    socket_path = socket_path or DEFAULT_SOCKET
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(socket_path)
    except OSError:
        client.close()
        raise OSError(f"Failed to connect to the ubus socket '{socket_path}'\n") from None
    client.setblocking(False)
    _conn.update(client=client, path=socket_path)
    return True


def _bus() -> socket.socket:
    if "bus" not in _conn:
        _conn["bus"] = _ubusd[0].accept()[0]
    return _conn["bus"]


def disconnect(deregister: bool = True) -> None:
    _need_connection()
    for end in ("client", "bus"):
        if end in _conn:
            _conn[end].close()
    _conn.clear()
    _objects.clear()
    _queue.clear()


def get_connected() -> bool:
    return bool(_conn)


def add(object_name: str, methods: dict) -> None:
    _need_connection()
    for name, value in methods.items():
        sig = value.get("signature") if isinstance(value, dict) else None
        if (not isinstance(name, str) or len(value) != 2 or not isinstance(sig, dict)
                or not callable(value.get("method"))
                or not all(isinstance(k, str) and isinstance(t, int) and 0 <= t <= 8
                           for k, t in sig.items())):
            raise TypeError("Incorrect method arguments!")
    if object_name in _objects:
        raise RuntimeError("ubus error occured: Invalid argument")
    _objects[object_name] = methods


def objects(path: str = "*") -> dict:
    _need_connection()
    return {n: {m: dict(v["signature"]) for m, v in ms.items()} for n, ms in _objects.items()
            if path in ("*", n)}


def send(event: str, data) -> bool:
    _need_connection()
    fake_sent.append((event, data))
    return True


def _invoke(obj: str, method: str, arguments: dict) -> tuple[int, list]:
    entry = _objects.get(obj, {}).get(method)
    if entry is None:
        return (STATUS_METHOD_NOT_FOUND if obj in _objects else STATUS_NOT_FOUND), []
    sig = entry["signature"]
    if set(arguments) != set(sig) or any(
            sig[k] not in (BLOBMSG_TYPE_UNSPEC, _blobmsg_type(v)) for k, v in arguments.items()):
        return STATUS_INVALID_ARGUMENT, []
    replies: list = []
    try:
        entry["method"](_ResponseHandler(replies), dict(arguments))
    except Exception:
        sys.excepthook(*sys.exc_info())  # PyErr_Print()
        return STATUS_UNKNOWN_ERROR, replies
    return STATUS_OK, replies


def loop(timeout: int = -1) -> None:
    """Serves requests ubusd delivered; the fake never blocks (tests use timeout=0)."""
    _need_connection()
    try:
        while _conn["client"].recv(4096):
            pass
    except BlockingIOError:
        pass
    while _queue:
        fake_replies.append(_invoke(*_queue.pop(0)))


def call(object: str, method: str, arguments: dict, timeout: int = 0) -> list:
    _need_connection()
    if object not in _objects:
        raise RuntimeError(f"Object '{object}' was not found.")
    status, replies = _invoke(object, method, arguments)
    if status != STATUS_OK:
        raise RuntimeError(f"ubus error occured: {_STRERROR[status]}")
    return replies


def fake_request(obj: str, method: str, arguments: dict) -> None:
    _need_connection()
    _queue.append((obj, method, arguments))
    _bus().send(b"!")


def fake_ubusd(path: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    _ubusd.append(listener)


def fake_hangup() -> None:
    _bus().close()


def fake_reset() -> None:
    if _conn:
        disconnect()
    for listener in _ubusd:
        listener.close()
    for state in (_objects, _ubusd):
        state.clear()
    for log in (_queue, fake_replies, fake_sent):
        log.clear()
