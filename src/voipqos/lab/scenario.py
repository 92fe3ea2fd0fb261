"""One lab scenario on a built topology: load, a call, and voipqos off, auto or forced on.

Timeline of every scenario (seconds): the bulk load starts at 0; after `warm` the call
(baresip) and the probe (irtt) start together and last `call` (longer in auto); in auto
the load goes on for `tail` more so the profile can be seen switching off. The product
is driven as a user would: `voipqos run --foreground` in the router for auto,
`voipqos apply`/`remove` for forced on, `voipqos status --json` for the transition log.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from . import bulk, sip
from .netns import Topology
from .topology import FAR4, PHONE4, ROUTER_WAN_DEV, Line

IRTT_PORT = 2112
SCENARIOS = {"none": "no voipqos", "auto": "voipqos auto", "forced": "voipqos forced on"}
Progress = Callable[[str, float, float], None]  # (what, done s, total s)


@dataclass(frozen=True)
class Timing:
    idle: float  # unloaded probe for the baseline delay
    warm: float  # load alone before the call: the modem's buffer fills
    call: int  # call length without voipqos and forced on
    auto_call: int  # longer in auto: detection, then the modem's queue drains
    tail: float  # auto only: load after the call, so the profile is seen switching off
    poll: float = 1.0
    off_hold: float = 2.0

    def call_s(self, name: str) -> int:
        return self.auto_call if name == "auto" else self.call

    def load_s(self, name: str) -> int:
        return int(self.warm + self.call_s(name) + (self.tail if name == "auto" else 1))


# tail >= off_hold + 2 polls + a poll of hold on the call's last partial interval
QUICK = Timing(idle=2, warm=2, call=6, auto_call=16, tail=6)
FULL = Timing(idle=5, warm=5, call=20, auto_call=40, tail=8)


def lab_config(line: Line, timing: Timing, run_dir: Path, forced: bool,
               up_share: float = 0.95, down_share: float = 0.90,
               source: str = "netlink") -> str:
    """The router's /etc/config/voipqos for the lab. Shaping sits just below the line so
    the queue forms on the router; off_hold/min_on are short so a run sees the profile
    switch off within seconds. Forced on has no daemon to feed the classifier the call's
    5-tuples, so it names the call's ports (irtt, baresip RTP) as static voice ports."""
    lines = ["config voipqos 'main'",
             f"\toption interface '{ROUTER_WAN_DEV}'",
             "\toption backend 'htb'",
             f"\toption upload '{int(line.up_kbit * up_share)}'",
             f"\toption download '{int(line.down_kbit * down_share)}'",
             f"\toption poll_interval '{timing.poll:g}'",
             f"\toption conntrack_source '{source}'",
             f"\toption off_hold '{timing.off_hold:g}'",
             "\toption min_on '0'",
             f"\toption run_dir '{run_dir}'",
             f"\toption rpc_listen 'unix:{run_dir}/rpc.sock'"]
    if forced:
        lines += [f"\tlist voice_ports '{IRTT_PORT}'",
                  f"\tlist voice_ports '{sip.RTP_PORTS[0]}-{sip.RTP_PORTS[1]}'"]
    return "\n".join(lines) + "\n"


def voipqos_cmd() -> list[str]:
    """The `voipqos` CLI of the running interpreter's environment (the .venv)."""
    return [sys.executable, "-m", "voipqos.cli"]


@dataclass
class Lab:
    topo: Topology
    line: Line
    timing: Timing
    raw: Path  # raw tool outputs and logs
    progress: Progress
    source: str = "netlink"  # the daemon's conntrack_source

    @staticmethod
    def _voipqos() -> list[str]:
        """voipqos as on a router, where /sys/fs/bpf is a bpffs. `ip netns exec` gives the
        command a private mount namespace with a fresh /sys, so the bpffs mounted there
        is the command's own and goes away with it (the host's is never touched)."""
        return ["sh", "-c", 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; '
                'exec "$@"', "sh", *voipqos_cmd()]

    def voipqos(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.topo.exec("router", [*self._voipqos(), *args], check=False, timeout=timeout)

    def start_servers(self) -> None:
        self.topo.popen("far", ["irtt", "server", "-b", f"{FAR4}:{IRTT_PORT}"])
        for port in (bulk.UP_PORT, bulk.DOWN_PORT):
            self.topo.popen("far", bulk.server_cmd(port))
        tone = self.raw / "tone.wav"
        sip.write_tone(tone, max(self.timing.call, self.timing.auto_call) + 10)
        sip.write_profile(self.raw / "baresip-far", "far", FAR4, tone, answer=True)
        sip.write_profile(self.raw / "baresip-phone", "phone", PHONE4, tone, answer=False)
        time.sleep(0.3)

    def probe(self, seconds: float, out: Path) -> subprocess.Popen:
        return self.topo.popen("phone", ["irtt", "client", "-i", "20ms", "-l", "172",
                                         "-d", f"{seconds:g}s", "-Q", "-o", str(out),
                                         f"{FAR4}:{IRTT_PORT}"])

    def idle(self) -> dict[str, Any]:
        """The unloaded line: the delay every 'added delay' figure is measured against."""
        out = self.raw / "idle.irtt.json"
        p = self.probe(self.timing.idle, out)
        self._wait(p, "idle line", self.timing.idle)
        return _read_json(out)

    def _wait(self, p: subprocess.Popen, what: str, total: float) -> None:
        t0 = time.monotonic()
        while p.poll() is None:
            done = time.monotonic() - t0
            self.progress(what, min(done, total), total)
            if done > total + 20:
                p.kill()
                raise RuntimeError(f"{what}: {p.args[3] if len(p.args) > 3 else p.args} hung")
            time.sleep(0.25)
        self.progress(what, total, total)

    def _sleep(self, what: str, seconds: float) -> None:
        t0 = time.monotonic()
        while (done := time.monotonic() - t0) < seconds:
            self.progress(what, done, seconds)
            time.sleep(min(0.25, seconds - done))

    def scenario(self, name: str) -> dict[str, Any]:
        """Run one scenario; the raw measurements (the report module summarizes them)."""
        t, raw = self.timing, self.raw
        call, load = t.call_s(name), t.load_s(name)
        self.topo.exec("router", "conntrack -F", check=False)  # each call starts afresh
        cfg_path = raw / f"{name}.voipqos.conf"
        cfg_path.write_text(lab_config(self.line, t, raw / f"{name}.run", name == "forced",
                                       source=self.source))
        out: dict[str, Any] = {"name": name, "title": SCENARIOS[name], "errors": []}
        daemon = None
        if name == "auto":
            try:
                daemon = self._start_daemon(cfg_path, raw / "auto.daemon.log", out)
            except RuntimeError as exc:  # measure anyway: the run shows what happened
                out["errors"].append(str(exc))
        elif name == "forced":
            res = self.voipqos("apply", "--config", str(cfg_path))
            out["apply"] = {"rc": res.returncode, "output": (res.stdout + res.stderr).strip()}
            if res.returncode:
                out["errors"].append(f"voipqos apply failed: {out['apply']['output']}")
        callee_log = raw / f"{name}.baresip-far.log"
        callee = None
        try:
            callee = self.topo.popen("far", sip.callee_cmd(raw / "baresip-far"),
                                     stdout=callee_log.open("w"), stderr=subprocess.STDOUT)
            loads = [self.topo.popen("phone", bulk.client_cmd(FAR4, port, load, down),
                                     stdout=(raw / f"{name}.iperf-{d}.json").open("w"))
                     for port, down, d in ((bulk.UP_PORT, False, "up"),
                                           (bulk.DOWN_PORT, True, "down"))]
            cpu0 = _cpu(daemon)
            load_start = time.time()
            self._sleep(f"{name}: load only", t.warm)
            out["call_start"] = time.time()
            irtt = self.probe(call, raw / f"{name}.irtt.json")
            caller = self.topo.popen(
                "phone", sip.caller_cmd(raw / "baresip-phone", call, f"sip:far@{FAR4}"),
                stdout=(raw / f"{name}.baresip-phone.log").open("w"), stderr=subprocess.STDOUT)
            self._wait(irtt, f"{name}: call under load", call)
            out["call_end"] = time.time()
            caller.wait(timeout=10)
            for p in loads:
                self._wait(p, f"{name}: load after the call",
                           max(0.0, load - (time.time() - load_start)))
            out["load"] = {"start": load_start, "end": time.time()}
            if daemon:
                out["status"] = self._status(cfg_path, out)
                out["daemon"] = _usage(daemon, cpu0, time.time() - load_start)
        finally:
            if daemon:
                self._stop_daemon(daemon, out)
            elif name == "forced":
                res = self.voipqos("remove", "--config", str(cfg_path))
                if res.returncode:
                    out["errors"].append(f"voipqos remove failed: {res.stderr.strip()}")
            if callee:
                callee.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    callee.wait(timeout=5)
        out["irtt"] = _read_json(raw / f"{name}.irtt.json")
        out["iperf"] = {d: _read_json(raw / f"{name}.iperf-{d}.json") for d in ("up", "down")}
        out["rtcp"] = sip.parse_rtcpsummary(callee_log.read_text(errors="replace"))
        if out["rtcp"] is None:
            out["errors"].append(f"no rtcpsummary line from baresip (see {callee_log.name})")
        return out

    def _start_daemon(self, cfg_path: Path, log: Path, out: dict[str, Any]) -> psutil.Process:
        p = self.topo.popen("router", [*self._voipqos(), "run", "--config", str(cfg_path),
                                       "--foreground"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise RuntimeError(f"voipqos run exited with {p.returncode}: "
                                   + log.read_text(errors="replace")[-400:])
            res = self.voipqos("status", "--json", "--config", str(cfg_path))
            if res.returncode == 0:
                out["status_initial"] = json.loads(res.stdout)
                return psutil.Process(p.pid)
            self.progress("auto: starting voipqos", 0, 1)
            time.sleep(0.2)
        raise RuntimeError("voipqos run did not answer `voipqos status` within 15 s")

    def _status(self, cfg_path: Path, out: dict[str, Any]) -> dict[str, Any] | None:
        res = self.voipqos("status", "--json", "--config", str(cfg_path))
        if res.returncode:
            out["errors"].append(f"voipqos status failed: {res.stderr.strip()}")
            return None
        return json.loads(res.stdout)

    def _stop_daemon(self, daemon: psutil.Process, out: dict[str, Any]) -> None:
        """SIGTERM, as procd does; the daemon must take its profile down itself."""
        with contextlib.suppress(psutil.NoSuchProcess):
            daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except psutil.TimeoutExpired:
                out["errors"].append("voipqos run ignored SIGTERM for 10 s")
                daemon.kill()
        left = self.topo.exec("router", f"tc qdisc show dev {ROUTER_WAN_DEV}").stdout
        out["qdisc_after_stop"] = left.strip()


def _cpu(p: psutil.Process | None) -> float:
    if p is None:
        return 0.0
    t = p.cpu_times()
    return t.user + t.system


def _usage(p: psutil.Process, cpu0: float, wall: float) -> dict[str, float]:
    """The daemon's CPU over the loaded part of the run and its resident memory."""
    try:
        return {"cpu_percent": 100 * (_cpu(p) - cpu0) / wall,
                "rss_bytes": p.memory_info().rss}
    except psutil.NoSuchProcess:
        return {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError) as exc:
        return {"error": f"{path.name}: {exc}"}
