"""The daemon's object `voipqos.daemon` on ubus, through python-ubus (module `ubus`,
package python3-ubus). The public `voipqos` object is rpcd's ucode plugin
(files/usr/share/rpcd/ucode/voipqos.uc), which forwards here; see docs/design.md (ubus).

Thin on purpose: names, argument types and read/write access come from api.SPECS, the
handlers from api.Dispatcher. What python-ubus 0.1.x (ubus_python.c) decides for us:
- It checks the declared signature before Python runs: every declared argument must be
  present, nothing else may be, and blobmsg types must match exactly; otherwise the
  caller gets UBUS_STATUS_INVALID_ARGUMENT (2). The plugin always sends every argument.
- A callback cannot choose its status: returning answers 0, raising answers
  UBUS_STATUS_UNKNOWN_ERROR (9) after PyErr_Print(), which calls sys.excepthook. A
  refusal is therefore answered with {"error": message, "status": code} and 9 (the
  plugin passes `code` on as the status); the exception raised for it is one our
  excepthook silences, so the log gets one line from us and no traceback.
- It offers no file descriptor, only loop(timeout_ms); loop(0) handles what is pending
  without blocking. We find the connection's socket by comparing /proc/self/fd before
  and after connect(), so the caller can wait on it with select (see endpoints.py).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from types import ModuleType
from typing import Any

from . import api

log = logging.getLogger(__name__)

# blobmsg types a JSON value arrives as (ubus CLI, rpcd): numbers that fit are INT32
BLOBMSG = {api.STRING: "BLOBMSG_TYPE_STRING", api.INT: "BLOBMSG_TYPE_INT32",
           api.BOOL: "BLOBMSG_TYPE_BOOL"}


class Rejected(Exception):
    """Raised from a callback so python-ubus answers a non-zero status; already logged."""


def _quiet_rejected(hook):
    """sys.excepthook that stays silent for Rejected (python-ubus's PyErr_Print)."""

    def excepthook(kind, value, tb):
        if not issubclass(kind, Rejected):
            hook(kind, value, tb)

    excepthook.quiets_rejected = True
    return excepthook


def _install_excepthook() -> None:
    if not getattr(sys.excepthook, "quiets_rejected", False):
        sys.excepthook = _quiet_rejected(sys.excepthook)


def _socket_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                fds.add(int(name))
        except OSError:  # closed meanwhile (the listdir fd itself)
            pass
    return fds


class UbusObject:
    """Connects to ubusd, registers `voipqos.daemon`, serves calls when process() is
    called."""

    def __init__(self, dispatcher: api.Dispatcher, module: ModuleType | None = None,
                 socket_path: str | None = None) -> None:
        if module is None:
            import ubus as module  # python-ubus; absent off OpenWrt
        self.module = module
        self.dispatcher = dispatcher
        _install_excepthook()
        before = _socket_fds()
        if socket_path:
            module.connect(socket_path=socket_path)
        else:
            module.connect()
        try:
            module.add(api.DAEMON_OBJECT, self.methods())
        except Exception:
            module.disconnect()
            raise
        new = _socket_fds() - before
        self.fd = new.pop() if len(new) == 1 else None
        # a duplicate of the ubus socket, only to peek for end-of-file
        self._peek = (socket.fromfd(self.fd, socket.AF_UNIX, socket.SOCK_STREAM)
                      if self.fd is not None else None)

    def methods(self) -> dict[str, dict[str, Any]]:
        """The table python-ubus's add() expects, from api.SPECS."""
        return {
            name: {"signature": {arg: getattr(self.module, BLOBMSG[kind])
                                 for arg, kind in spec.args.items()},
                   "method": self._callback(name)}
            for name, spec in api.SPECS.items()
        }

    def _callback(self, name: str):
        def callback(handler: Any, data: Any) -> None:
            try:
                reply = self.dispatcher.call(name, data)
            except api.InvalidArgument as exc:
                log.warning("ubus: %s", exc)
                self._refuse(handler, str(exc), api.STATUS_INVALID_ARGUMENT)
            except Exception as exc:  # a handler bug answers an error, never kills the loop
                log.error("ubus: %s.%s failed: %s: %s", api.DAEMON_OBJECT, name,
                          type(exc).__name__, exc)
                self._refuse(handler, f"{name} failed: {exc}", api.STATUS_UNKNOWN_ERROR)
            handler.reply(reply)

        return callback

    @staticmethod
    def _refuse(handler: Any, message: str, status: int) -> None:
        try:
            handler.reply({"error": message, "status": status})
        except Exception as exc:  # the caller went away; the status still goes out
            log.debug("ubus: reply: %s", exc)
        raise Rejected(message) from None

    def process(self) -> None:
        """Handle pending requests without blocking."""
        self.module.loop(0)

    def lost(self) -> bool:
        """True once ubusd closed the connection (restarted); the socket then stays
        readable forever, so the caller must stop selecting on it."""
        if self._peek is None:
            return False
        try:
            return self._peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def send_event(self, event: str, data: dict[str, Any]) -> None:
        try:
            if not self.module.send(event, data):
                log.warning("ubus: event %s not sent", event)
        except Exception as exc:  # events are advisory; the loop goes on
            log.warning("ubus: event %s not sent: %s", event, exc)

    def close(self) -> None:
        if self._peek is not None:
            self._peek.close()
        try:
            self.module.disconnect()
        except Exception as exc:  # already gone
            log.debug("ubus: disconnect: %s", exc)
