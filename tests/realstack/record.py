"""Record conformance transcripts from the real stack into tests/data/transcripts/.

    sudo .venv/bin/python -m realstack.record      (from tests/, or PYTHONPATH=tests)

Behind the public `voipqos` object (rpcd ucode plugin) runs tests/realstack/stub_daemon.py:
the real UbusObject on the real python-ubus with the tests' stub handlers, so CI can replay
every exchange against the doubles (tests/transcripts.py) and expect the same answers.
"""

from __future__ import annotations

import json
import os
import re
import sys

from realstack import stack

OUT = stack.ROOT / "tests/data/transcripts"
SID = "<sid>"

# ubus CLI: argv after `ubus`, against the plugin (`voipqos`) and the daemon's object
CLI = [
    ["call", "voipqos", "status"],
    ["call", "voipqos", "flows"],
    ["call", "voipqos", "flows", '{"all":true}'],
    ["call", "voipqos", "flows", '{"all":1}'],
    ["call", "voipqos", "set_mode", '{"mode":"on"}'],
    ["call", "voipqos", "set_mode", '{"mode":"off","expires":60}'],
    ["call", "voipqos", "set_mode", '{"mode":"loud"}'],
    ["call", "voipqos", "set_mode"],
    ["call", "voipqos", "set_mode", '{"mode":"on","bogus":1}'],
    ["call", "voipqos", "reload"],
    ["call", "voipqos", "check"],
    ["call", "voipqos", "nosuch"],
    ["call", "voipqos.daemon", "status"],
    ["call", "voipqos.daemon", "status", '{"ubus_rpc_session":"x"}'],
    ["call", "voipqos.daemon", "flows"],
    ["call", "voipqos.daemon", "flows", '{"all":false}'],
    ["call", "voipqos.daemon", "flows", '{"all":1}'],
    ["call", "voipqos.daemon", "flows", '{"all":"yes"}'],
    ["call", "voipqos.daemon", "set_mode", '{"mode":"on"}'],
    ["call", "voipqos.daemon", "set_mode", '{"mode":"on","expires":0}'],
    ["call", "voipqos.daemon", "set_mode", '{"mode":"on","expires":1099511627776}'],
    ["call", "voipqos.daemon", "set_mode", '{"mode":1,"expires":0}'],
    ["call", "voipqos.daemon", "set_mode", '{"mode":"loud","expires":0}'],
    ["call", "voipqos.daemon", "check"],
    ["call", "nosuch", "status"],
]


def rpc(rid, sid, obj, method, args):
    return {"jsonrpc": "2.0", "id": rid, "method": "call", "params": [sid, obj, method, args]}


NULL = stack.NULL_SESSION
# /ubus JSON-RPC: (name, body); a str body is sent as is, SID stands for a logged-in session
HTTP: list[tuple[str, object]] = [
    ("login wrong password", rpc(1, NULL, "session", "login",
                                 {"username": "root", "password": "wrong"})),
    ("login", rpc(2, NULL, "session", "login",
                  {"username": "root", "password": stack.PASSWORD})),
    ("list voipqos", {"jsonrpc": "2.0", "id": 3, "method": "list", "params": ["voipqos"]}),
    ("status", rpc(4, SID, "voipqos", "status", {})),
    ("flows", rpc(5, SID, "voipqos", "flows", {})),
    ("flows all", rpc(6, SID, "voipqos", "flows", {"all": True})),
    ("set_mode", rpc(7, SID, "voipqos", "set_mode", {"mode": "on"})),
    ("set_mode expires", rpc(8, SID, "voipqos", "set_mode", {"mode": "auto", "expires": 30})),
    ("set_mode refused", rpc(9, SID, "voipqos", "set_mode", {"mode": "loud"})),
    ("bad argument type", rpc(10, SID, "voipqos", "flows", {"all": "yes"})),
    ("unknown argument", rpc(11, SID, "voipqos", "status", {"bogus": 1})),
    ("caller-supplied session", rpc(12, SID, "voipqos", "status",
                                    {"ubus_rpc_session": NULL})),
    ("handler bug", rpc(13, SID, "voipqos", "check", {})),
    ("reload", rpc(14, SID, "voipqos", "reload", {})),
    ("unknown method", rpc(15, SID, "voipqos", "nosuch", {})),
    ("unknown object", rpc(16, SID, "nosuch", "status", {})),
    ("unknown object null session", rpc(17, NULL, "nosuch", "status", {})),
    ("daemon object denied", rpc(18, SID, "voipqos.daemon", "status", {})),
    ("null session read denied", rpc(19, NULL, "voipqos", "status", {})),
    ("null session write denied", rpc(20, NULL, "voipqos", "set_mode", {"mode": "on"})),
    ("unknown session denied", rpc(21, "f" * 32, "voipqos", "status", {})),
    ("malformed json", "{not json"),
    ("not an object", "42"),
    ("no jsonrpc", {"id": 22, "method": "call", "params": [SID, "voipqos", "status", {}]}),
    ("unknown rpc method", {"jsonrpc": "2.0", "id": 23, "method": "nosuch", "params": []}),
    ("params not an array", {"jsonrpc": "2.0", "id": 24, "method": "call", "params": {}}),
    ("call with 3 params", {"jsonrpc": "2.0", "id": 25, "method": "call",
                            "params": [SID, "voipqos", "status"]}),
    ("args not an object", {"jsonrpc": "2.0", "id": 26, "method": "call",
                            "params": [SID, "voipqos", "status", []]}),
    ("empty batch", []),
    ("batch", [rpc(27, SID, "voipqos", "status", {}), rpc(28, SID, "nosuch", "x", {}),
               rpc(29, NULL, "voipqos", "reload", {})]),
    ("batch with junk", [rpc(30, SID, "voipqos", "status", {}), 7]),
    ("destroy", rpc(31, SID, "session", "destroy", {})),
    ("after destroy", rpc(32, SID, "voipqos", "status", {})),
]


def _subst(doc, sid: str):
    return json.loads(json.dumps(doc).replace(SID, sid))


def record_cli(s: stack.Stack) -> list[dict]:
    out = []
    for argv in CLI:
        r = s.ubus_run(*argv)
        stdout = r.stdout.strip()
        out.append({"argv": argv, "status": (256 - r.returncode) % 256,
                    "reply": json.loads(stdout) if stdout else None,
                    "stderr": r.stderr.splitlines()[0] if r.stderr else ""})
    return out


def record_http(s: stack.Stack) -> list[dict]:
    out, sid = [], None
    for name, doc in HTTP:
        body = doc if isinstance(doc, str) else json.dumps(_subst(doc, sid or SID))
        status, raw = s.post_raw(body.encode())
        reply = json.loads(raw) if raw else None
        if name == "login":
            sid = reply["result"][1]["ubus_rpc_session"]
        text = json.dumps(reply)
        if sid:
            text = text.replace(sid, SID)
        out.append({"name": name, "request": doc, "http_status": status,
                    "reply": json.loads(text)})
    return out


def main() -> int:
    stack.enter("realstack.record")
    s = stack.Stack().start()
    try:
        site = next((stack.UPSTREAM / "venv/lib").glob("python3*/site-packages"))
        env = {"PYTHONPATH": os.pathsep.join([str(stack.ROOT / "src"),
                                              str(stack.ROOT / "tests"), str(site)])}
        stub = s.spawn("stub", [sys.executable, "-m", "realstack.stub_daemon"], env)
        stack.wait(lambda: "voipqos.daemon" in s.ubus("list").split(), 10, "the stub daemon")
        OUT.mkdir(parents=True, exist_ok=True)
        cli = record_cli(s)
        http = record_http(s)
        listing = s.ubus("-v", "list", "voipqos*")
        stub.kill()  # uloop inside python-ubus swallows SIGTERM
        stub.wait()
        stack.wait(lambda: "voipqos.daemon" not in s.ubus("list").split(), 5, "stub gone")
        absent = record_cli_absent(s)
    finally:
        s.stop()
    stub_log = (s.logs / "stub.log").read_text()
    meta = {"upstream": stack.upstream_commits(),
            "ubus -v list voipqos*": listing.splitlines(),
            "stub daemon log": stub_log.splitlines(),
            "note": "recorded by tests/realstack/record.py from the real ubusd, rpcd "
                    "(ucode plugin files/usr/share/rpcd/ucode/voipqos.uc), uhttpd and "
                    "python-ubus 0.1.3; the daemon object runs test_rpc.stub_dispatcher"}
    for name, doc in (("ubus_cli", cli + absent), ("jsonrpc", http), ("meta", meta)):
        (OUT / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"recorded {len(cli) + len(absent)} ubus CLI calls and {len(http)} /ubus "
          f"exchanges into {OUT}")
    if re.search(r"Traceback", stub_log):
        print("python-ubus printed a traceback:\n" + stub_log)
        return 1
    return 0


def record_cli_absent(s: stack.Stack) -> list[dict]:
    """The plugin's answer while the daemon is not running."""
    rows = []
    for argv in (["call", "voipqos", "status"], ["call", "voipqos", "set_mode",
                                                 '{"mode":"on"}']):
        r = s.ubus_run(*argv)
        stdout = r.stdout.strip()
        rows.append({"argv": argv, "daemon": "absent", "status": (256 - r.returncode) % 256,
                     "reply": json.loads(stdout) if stdout else None,
                     "stderr": r.stderr.splitlines()[0] if r.stderr else ""})
    return rows


if __name__ == "__main__":
    sys.exit(main())
