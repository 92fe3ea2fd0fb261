"""Cost of the ubus design on the real stack (docs/design.md, ubus): call latency of the
daemon's python-ubus object directly vs through rpcd's ucode plugin, both from a ubus
client and through uhttpd's /ubus, and rpcd's memory with and without the plugin.

    cd tests && PYTHONPATH=. ../.venv/bin/python -m realstack.measure
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from realstack import stack

N = 400
CLIENT = """
import sys, time, json, ubus
ubus.connect(socket_path="/var/run/ubus/ubus.sock")
obj, method, args, n = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
t = []
for _ in range(n):
    t0 = time.perf_counter(); ubus.call(obj, method, args); t.append(time.perf_counter() - t0)
print(json.dumps(t))
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def summary(name: str, samples: list[float]) -> None:
    ms = sorted(x * 1000 for x in samples)
    print(f"{name:58s} median {statistics.median(ms):6.3f} ms  p90 "
          f"{ms[int(len(ms) * 0.9)]:6.3f} ms  (n={len(ms)})")


def via_ubus(s: stack.Stack, env: dict, obj: str, method: str, args: dict) -> list[float]:
    out = subprocess.run([sys.executable, "-c", CLIENT, obj, method, json.dumps(args), str(N)],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out)


def via_uhttpd(sid: str, obj: str, method: str, args: dict) -> list[float]:
    """One connection per call: on a kept-alive one uhttpd's separate header and body
    writes meet delayed ACKs (about 40 ms per call here, whatever the object)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "call",
                       "params": [sid, obj, method, args]})
    t = []
    for _ in range(N):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", stack.PORT, timeout=5)
        conn.request("POST", "/ubus", body, {"Content-Type": "application/json"})
        reply = json.loads(conn.getresponse().read())
        conn.close()
        t.append(time.perf_counter() - t0)
    assert "result" in reply and reply["result"][0] == 0, reply
    return t


def main() -> int:
    if not os.environ.get(stack.INSIDE) and not os.environ.get("VOIPQOS_NO_PLUGIN"):
        # rpcd alone first, without the plugin: the memory baseline of the same run
        subprocess.run([sys.executable, "-m", "realstack.measure"],
                       env={**os.environ, "VOIPQOS_NO_PLUGIN": "1"}, check=True)
    stack.enter("realstack.measure")
    s = stack.Stack().start()
    if os.environ.get("VOIPQOS_NO_PLUGIN"):
        rpcd = next(p for p in s.procs if p.name == "rpcd")  # type: ignore[attr-defined]
        print(f"rpcd VmRSS without the plugin (baseline): {rss_kib(rpcd.pid)} KiB")
        s.stop()
        return 0
    try:
        print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {platform.node()}, "
              f"kernel {platform.release()}; shared with other jobs")
        rpcd = next(p for p in s.procs if p.name == "rpcd")  # type: ignore[attr-defined]
        print(f"rpcd VmRSS with the voipqos ucode plugin loaded: {rss_kib(rpcd.pid)} KiB")
        site = next((stack.UPSTREAM / "venv/lib").glob("python3*/site-packages"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(stack.ROOT / "src"), str(stack.ROOT / "tests"), str(site)])}
        s.spawn("stub", [sys.executable, "-m", "realstack.stub_daemon"], env)
        stack.wait(lambda: "voipqos.daemon" in s.ubus("list").split(), 10, "stub daemon")
        summary("ubus client -> voipqos.daemon (python-ubus) status",
                via_ubus(s, env, "voipqos.daemon", "status", {}))
        summary("ubus client -> voipqos (rpcd plugin) -> daemon status",
                via_ubus(s, env, "voipqos", "status", {}))
        summary("ubus client -> rpcd session.access (C, baseline)",
                via_ubus(s, env, "session", "access", {"ubus_rpc_session": "0" * 32,
                                                        "scope": "ubus", "object": "x",
                                                        "function": "y"}))
        sid = s.login()
        summary("uhttpd /ubus -> voipqos (plugin) -> daemon status",
                via_uhttpd(sid, "voipqos", "status", {}))
        summary("uhttpd /ubus -> session.access (C, baseline)",
                via_uhttpd(sid, "session", "access", {"scope": "ubus", "object": "voipqos",
                                                      "function": "status"}))
        print(f"rpcd VmRSS after {2 * N} forwarded calls: {rss_kib(rpcd.pid)} KiB")
        for _ in range(5):
            via_uhttpd(sid, "voipqos", "status", {})
        print(f"rpcd VmRSS after {7 * N} forwarded calls: {rss_kib(rpcd.pid)} KiB")
    finally:
        s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
