"""Record what the real rpcd tells procd when the voipqos config is committed or applied,
for tests/test_initscript.py to replay against the init script's reload trigger.

Needs the upstream ubusd, rpcd, ubus CLI and python-ubus 0.1.3 (not in this repository;
built under $VOIPQOS_UPSTREAM, default /work/upstream) and root:

    python tests/record_config_change.py > tests/data/rpcd_config_change.json

It runs in a private mount + network namespace (/etc gets an overlay with an
/etc/config/voipqos, /var/run a tmpfs). procd is not there: a stand-in `service` object
with procd's `event` method (registered through python-ubus) records each call. rpcd
only calls it when such an object exists (rpcd uci.c, rpc_uci_trigger_event).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UPSTREAM = Path(os.environ.get("VOIPQOS_UPSTREAM", "/work/upstream"))
PREFIX = UPSTREAM / "prefix"
SOCK = "/var/run/ubus/ubus.sock"
INSIDE = "VOIPQOS_RECORD_NS"

# procd's `service` object as far as rpcd uses it: method event {type, data}
SERVICE = """
import json, sys, ubus
ubus.connect(sys.argv[1])
def event(handler, data):
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps(data) + "\\n")
    handler.reply({})
ubus.add("service", {"event": {"method": event, "signature": {
    "type": ubus.BLOBMSG_TYPE_STRING, "data": ubus.BLOBMSG_TYPE_TABLE}}})
ubus.loop()
"""


def ubus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PREFIX / "bin/ubus"), "-s", SOCK, *args], capture_output=True,
                          text=True, timeout=10)


def wait_for(pred, what: str) -> None:
    deadline = time.monotonic() + 10
    while not pred():
        if time.monotonic() > deadline:
            sys.exit(f"no {what} in 10 s")
        time.sleep(0.05)


def inside() -> dict:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "upper").mkdir()
    (tmp / "work").mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/var/run"], check=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir=/etc,upperdir={tmp}/upper,workdir={tmp}/work", "/etc"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/etc/config").mkdir(exist_ok=True)
    Path("/etc/config/voipqos").write_text("config voipqos 'main'\n\toption upload '10000'\n")
    Path("/var/run/ubus").mkdir(parents=True)
    calls = tmp / "calls"
    calls.write_text("")
    procs = [subprocess.Popen([str(PREFIX / "sbin/ubusd"), "-s", SOCK])]
    try:
        wait_for(lambda: Path(SOCK).exists(), "ubusd socket")
        procs.append(subprocess.Popen([str(PREFIX / "sbin/rpcd"), "-s", SOCK]))
        wait_for(lambda: "uci" in ubus("list").stdout.split(), "rpcd's uci object")
        out: dict = {"commits": {k: (UPSTREAM / "src" / f"{k}.commit").read_text().strip()
                                 for k in ("rpcd", "ubus")}}
        # no service object: rpcd calls nobody (nothing to record but the reply)
        ubus("call", "uci", "set", json.dumps(
            {"config": "voipqos", "section": "main", "values": {"upload": "11000"}}))
        out["commit_without_service"] = ubus("call", "uci", "commit",
                                             json.dumps({"config": "voipqos"})).returncode
        procs.append(subprocess.Popen([str(UPSTREAM / "venv/bin/python"), "-c", SERVICE,
                                       SOCK, str(calls)]))
        wait_for(lambda: "service" in ubus("list").stdout.split(), "the service object")
        # `uci commit` without a session; then what LuCI's Save & Apply does: changes kept
        # in a session, `apply` with rollback, `confirm`
        sid = json.loads(ubus("call", "session", "create", '{"timeout": 300}').stdout)[
            "ubus_rpc_session"]
        ubus("call", "session", "grant", json.dumps(
            {"ubus_rpc_session": sid, "scope": "uci",
             "objects": [["voipqos", "read"], ["voipqos", "write"]]}))
        steps = {
            "commit": [("set", {"config": "voipqos", "section": "main",
                                "values": {"upload": "12000"}}),
                       ("commit", {"config": "voipqos"})],
            "apply_rollback": [("set", {"ubus_rpc_session": sid, "config": "voipqos",
                                        "section": "main", "values": {"upload": "13000"}}),
                               ("apply", {"ubus_rpc_session": sid, "rollback": True,
                                          "timeout": 30}),
                               ("confirm", {"ubus_rpc_session": sid})],
        }
        for name, calls_of_step in steps.items():
            before = calls.read_text()
            replies = []
            for method, args in calls_of_step:
                res = ubus("call", "uci", method, json.dumps(args))
                replies.append({"method": method, "args": {k: v for k, v in args.items()
                                                           if k != "ubus_rpc_session"},
                                "returncode": res.returncode})
            wait_for(lambda b=before: calls.read_text() != b, f"a service event after {name}")
            out[name] = {"uci_calls": replies, "service_event": [
                json.loads(x) for x in calls.read_text()[len(before):].splitlines()]}
        out["config_after"] = Path("/etc/config/voipqos").read_text()
        return out
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(5)


def main() -> None:
    if not os.environ.get(INSIDE):
        env = dict(os.environ, **{INSIDE: "1"})
        sys.exit(subprocess.run(["unshare", "--mount", "--net", "--propagation", "private",
                                 "--", sys.executable, __file__], env=env).returncode)
    json.dump(inside(), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
