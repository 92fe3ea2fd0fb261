"""A scripted stand-in for the daemon behind the real /ubus protocol (voipqos.rpc.UbusRpc).

For view tests that do not need a kernel: the status document follows docs/design.md and
is driven by `call_active` and `set_mode`, so the same browser checks run against it and
against the real daemon.
"""

from __future__ import annotations

import time
from typing import Any

from voipqos import api, rpc

PASSWORD = "fixture-secret"


class FixtureDaemon:
    def __init__(self) -> None:
        self.mode = "auto"
        self.call_active = False
        self.state, self.since, self.reason = "watching", time.time(), "started"
        self.transitions: list[dict[str, Any]] = []
        self.voice = {"packets": 0, "bytes": 0}
        self.other = {"packets": 0, "bytes": 0}
        self.reloads = 0
        handlers = {"status": self.status, "flows": lambda a: {"calls": 0, "flows": []},
                    "check": lambda a: {"missing": [], "present": []},
                    "set_mode": self.set_mode, "reload": self.reload}
        self.rpc = rpc.UbusRpc(api.Dispatcher(handlers), rpc.Sessions(PASSWORD))

    def __call__(self, body: bytes) -> bytes:
        return self.rpc.handle(body)

    def _enter(self, state: str, reason: str) -> None:
        if state != self.state:
            self.state, self.since, self.reason = state, time.time(), reason
            self.transitions = [*self.transitions, {"at": self.since, "state": state,
                                                    "active": state in ("on", "forced_on"),
                                                    "reason": reason}][-20:]

    def status(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.mode == "on":
            self._enter("forced_on", "forced on from the web interface")
        elif self.mode == "off":
            self._enter("forced_off", "forced off from the web interface")
        elif self.call_active:
            self._enter("on", "call detected in 2 polls in a row")
        else:
            self._enter("watching", "no call")
        active = self.state in ("on", "forced_on")
        now = time.time()
        if active:
            self.voice = {"packets": self.voice["packets"] + 100,
                          "bytes": self.voice["bytes"] + 100 * 200}
        self.other = {"packets": self.other["packets"] + 300,
                      "bytes": self.other["bytes"] + 300 * 1200}
        calls = [{"id": "192.168.77.2>198.51.100.2", "lan_host": "192.168.77.2",
                  "far_host": "198.51.100.2", "flows": 1, "sip": False, "pps_out": 50.0,
                  "pps_in": 50.0, "kbps_out": 76.8, "kbps_in": 76.8, "started": now - 12,
                  "duration": 12.0}] if self.call_active else []
        return {"version": "0.1.0", "enabled": True, "state": self.state, "mode": self.mode,
                "mode_expires": None, "active": active, "since": self.since,
                "reason": self.reason, "device": "wan0", "calls": calls,
                "transitions": self.transitions,
                "profile": {"backend": "htb", "applied": active, "classifier": "bpf",
                            "counters": {"voice": dict(self.voice), "other": dict(self.other)}},
                "warnings": [{"code": "offload",
                              "message": "Flow offloading is on <i>(counters freeze)</i>",
                              "fix": "uci set firewall.@defaults[0].flow_offloading=0"}],
                "metrics": {"cpu_percent": 0.2, "rss_bytes": 20_000_000, "poll_ms": 1.0,
                            "polls": 1, "entries": 3, "malformed": 0}}

    def set_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("mode") not in ("on", "off", "auto"):
            raise api.InvalidArgument("set_mode: mode must be on, off or auto")
        self.mode = args["mode"]
        return {"mode": self.mode}

    def reload(self, args: dict[str, Any]) -> dict[str, Any]:
        self.reloads += 1
        return {"reloaded": True}
