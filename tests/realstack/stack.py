"""The real OpenWrt userland (ubusd, rpcd, uhttpd, python-ubus 0.1.3, LuCI's client JS) run
in a private mount + network namespace, for the real-stack check and the transcript
recorder. Not collected by pytest: CI has no upstream build (see docs/real-stack.md).

`VOIPQOS_UPSTREAM` (default /work/upstream) holds the builds: prefix/{bin,sbin,lib,share},
venv/ with python-ubus, luci/ with luci-base's htdocs. `enter()` re-executes the calling
module inside `unshare --mount --net` once; there /etc gets a private overlay, /run a
tmpfs, and rpcd's share directory (ACLs, ucode plugins) this checkout's files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = Path(os.environ.get("VOIPQOS_UPSTREAM", "/work/upstream"))
PREFIX = UPSTREAM / "prefix"
LUCI = UPSTREAM / "luci/modules/luci-base/htdocs/luci-static"
BOOTSTRAP = UPSTREAM / "luci/themes/luci-theme-bootstrap/htdocs/luci-static/bootstrap"
APP = ROOT / "luci-app/htdocs/luci-static/resources"
FILES = ROOT / "files/usr/share/rpcd"
PASSWORD = "realstack-secret"
PORT = 8080
URL = f"http://127.0.0.1:{PORT}"
NULL_SESSION = "0" * 32
INSIDE = "VOIPQOS_REALSTACK_NS"

LUCI_ACL = UPSTREAM / "luci/modules/luci-base/root/usr/share/rpcd/acl.d/luci-base.json"


def upstream_commits() -> dict[str, str]:
    out = {}
    for name in ("libubox", "ubus", "uci", "ucode", "rpcd", "uhttpd"):
        path = UPSTREAM / "src" / f"{name}.commit"
        out[name] = path.read_text().strip() if path.exists() else "?"
    luci = UPSTREAM / "luci.commit"
    out["luci"] = luci.read_text().strip() if luci.exists() else "?"
    out["python-ubus"] = "ubus==0.1.3 (PyPI)"
    return out


def enter(module: str) -> None:
    """Re-run `python -m module` inside a fresh mount + network namespace (once)."""
    if os.environ.get(INSIDE):
        return
    if not (PREFIX / "sbin/ubusd").exists():
        sys.exit(f"{PREFIX}/sbin/ubusd missing: build the upstream stack first "
                 "(docs/real-stack.md)")
    env = dict(os.environ, **{INSIDE: "1"})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")])
    cmd = ["unshare", "--mount", "--net", "--propagation", "private", "--",
           sys.executable, "-m", module, *sys.argv[1:]]
    sys.exit(subprocess.run(cmd, env=env, cwd=ROOT).returncode)


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


class Stack:
    """ubusd + rpcd + uhttpd (+ the daemon, optionally) with private /etc/config and /run."""

    def __init__(self) -> None:
        assert os.environ.get(INSIDE), "call stack.enter() first"
        self.tmp = Path(tempfile.mkdtemp(prefix="vq-realstack-"))
        self.procs: list[subprocess.Popen] = []
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.docroot = self.tmp / "www"

    # -- namespace setup -----------------------------------------------------------------

    def _private_fs(self) -> None:
        _sh("ip", "link", "set", "lo", "up")
        for d in ("upper", "work"):
            (self.tmp / "etc" / d).mkdir(parents=True)
        _sh("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir=/etc,upperdir={self.tmp}/etc/upper,workdir={self.tmp}/etc/work", "/etc")
        _sh("mount", "-t", "tmpfs", "tmpfs", "/run")
        _sh("mount", "-t", "sysfs", "sysfs", "/sys")  # this netns's devices
        Path("/etc/config").mkdir(exist_ok=True)
        Path("/var/run/ubus").mkdir(parents=True, exist_ok=True)
        share = self.tmp / "rpcd-share"
        (share / "acl.d").mkdir(parents=True)
        (share / "ucode").mkdir()
        shutil.copy(LUCI_ACL, share / "acl.d")
        # rpcd's own file, as its package installs it
        shutil.copy(UPSTREAM / "src/rpcd/unauthenticated.json", share / "acl.d")
        subs = ("acl.d",) if os.environ.get("VOIPQOS_NO_PLUGIN") else ("acl.d", "ucode")
        for sub in subs:
            for f in (FILES / sub).glob("*"):
                shutil.copy(f, share / sub / f.name)
        (PREFIX / "share/rpcd").mkdir(parents=True, exist_ok=True)
        _sh("mount", "--bind", str(share), str(PREFIX / "share/rpcd"))
        crypt = subprocess.run(["openssl", "passwd", "-1", PASSWORD], check=True,
                               capture_output=True, text=True).stdout.strip()
        Path("/etc/config/rpcd").write_text(
            "config rpcd\n\toption socket /var/run/ubus/ubus.sock\n\toption timeout 30\n\n"
            f"config login\n\toption username 'root'\n\toption password '{crypt}'\n"
            "\tlist read '*'\n\tlist write '*'\n")

    def _www(self) -> None:
        res = self.docroot / "luci-static/resources"
        res.mkdir(parents=True)
        for f in (LUCI / "resources").iterdir():
            (res / f.name).symlink_to(f)
        (res / "view").mkdir()
        (res / "view/voipqos").symlink_to(APP / "view/voipqos")
        (res / "voipqos").symlink_to(APP / "voipqos")
        (self.docroot / "luci-static/bootstrap").symlink_to(BOOTSTRAP)

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
              ) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        proc.name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def start(self) -> Stack:
        self._private_fs()
        self._www()
        self.spawn("ubusd", [str(PREFIX / "sbin/ubusd"), "-s", "/var/run/ubus/ubus.sock"])
        wait(lambda: os.path.exists("/var/run/ubus/ubus.sock"), 5, "ubusd's socket")
        self.spawn("rpcd", [str(PREFIX / "sbin/rpcd"), "-s", "/var/run/ubus/ubus.sock"])
        wait(lambda: "session" in self.ubus("list"), 5, "rpcd's session object")
        self.spawn("uhttpd", [str(PREFIX / "bin/uhttpd"), "-f", "-p", f"127.0.0.1:{PORT}",
                              "-h", str(self.docroot), "-u", "/ubus", "-t", "20"])
        wait(lambda: self.post({"jsonrpc": "2.0", "id": 0, "method": "list",
                                "params": []}) is not None, 5, "uhttpd")
        return self

    def daemon_config(self, **opts: str) -> Path:
        """A config for the daemon on a veth `wan0` in this namespace (its peer idle)."""
        if "wan0" not in subprocess.run(["ip", "-br", "link"], capture_output=True,
                                        text=True).stdout:
            _sh("ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wan0peer")
            for dev in ("wan0", "wan0peer"):
                _sh("ip", "link", "set", dev, "up")
        base = {"enabled": "1", "interface": "wan0", "backend": "htb", "upload": "10000",
                "download": "50000", "poll_interval": "1", "run_dir": "/var/run/voipqos",
                "rpc_listen": "", "log_level": "info"}
        body = "".join(f"\toption {k} '{v}'\n" for k, v in {**base, **opts}.items())
        path = Path("/etc/config/voipqos")
        path.write_text(f"config voipqos 'main'\n{body}")
        return path

    def start_daemon(self, config: Path) -> subprocess.Popen:
        """The real `voipqos run` with python-ubus 0.1.3 importable."""
        site = next((UPSTREAM / "venv/lib").glob("python3*/site-packages"))
        env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(site)])}
        proc = self.spawn("voipqos", [sys.executable, "-m", "voipqos.cli", "run",
                                      "--foreground", "--config", str(config)], env)
        wait(lambda: "voipqos.daemon" in self.ubus("list"), 15, "the daemon's ubus object")
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    # -- talking to it -------------------------------------------------------------------

    def ubus(self, *args: str) -> str:
        """The real ubus CLI; stdout (and stderr after it)."""
        r = subprocess.run([str(PREFIX / "bin/ubus"), "-s", "/var/run/ubus/ubus.sock", *args],
                           capture_output=True, text=True, timeout=30)
        return r.stdout + r.stderr

    def ubus_run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(PREFIX / "bin/ubus"), "-s", "/var/run/ubus/ubus.sock",
                               "-t", "10", *args], capture_output=True, text=True, timeout=30)

    def post_raw(self, body: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(URL + "/ubus", body,
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=8) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(self, doc: Any) -> Any:
        try:
            status, body = self.post_raw(json.dumps(doc).encode())
        except OSError:
            return None
        return json.loads(body) if body else {"http_status": status}

    def login(self) -> str:
        reply = self.post({"jsonrpc": "2.0", "id": 1, "method": "call",
                           "params": [NULL_SESSION, "session", "login",
                                      {"username": "root", "password": PASSWORD}]})
        return reply["result"][1]["ubus_rpc_session"]

    def page(self, view: str, sid: str) -> str:
        """A page as LuCI's header.ut + view.ut render it for `view` (the server side of
        LuCI, ucode templates, is not run here: the env it would print is written out)."""
        env = {"media": "/luci-static/bootstrap", "resource": "/luci-static/resources",
               "scriptname": "/cgi-bin/luci", "pathinfo": f"/admin/services/{view}",
               "documentroot": str(self.docroot), "requestpath": ["admin", "services", view],
               "dispatchpath": ["admin", "services", view], "pollinterval": 5,
               "ubuspath": "/ubus/", "sessionid": sid, "token": "0" * 32,
               "nodespec": {}, "apply_rollback": 90, "apply_holdoff": 4, "apply_timeout": 5,
               "apply_display": 1.5, "rollback_token": None}
        name = f"{view.replace('/', '-')}.html"
        (self.docroot / name).write_text(f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{view}</title>
<link rel="stylesheet" href="/luci-static/bootstrap/cascade.css">
<script src="/luci-static/resources/cbi.js"></script></head>
<body class="lang_en"><div id="maincontent" class="container">
<script src="/luci-static/resources/luci.js"></script>
<script>L = new LuCI({json.dumps(env)});</script>
<div id="view"><div class="spinning">Loading view…</div>
<script>L.require('ui').then(function(ui) {{ ui.instantiateView('{view}'); }});</script>
</div></div></body></html>
""")
        return f"{URL}/{name}"

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait(pred, timeout: float, what: str) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = pred()
        except Exception:  # not there yet
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
