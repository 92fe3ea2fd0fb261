#!/usr/bin/env python3
"""Replays the probes of issues 14 and 16 that concern the local endpoint and the config
reader against a REAL daemon (`voipqos run --foreground --dry-run`, JSON-RPC on TCP
loopback) and prints PASS/FAIL per row, with its figures and the time it took.

    .venv/bin/python tests/probe_endpoint_config.py [--seconds 10] [--fuzz 2000]

Rows: the issue's "service dies" and "keeps serving badly" tables (endpoint and config
rows) and issue 16's config and failed-login rows. Needs root only for the `nobody`
rows (skipped with a note otherwise). `uci show` from $UCI (the real openwrt/uci) is
compared where given. tests/test_endpoint_fuzz.py runs the fuzzer from here in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

NULL = "0" * 32
SRC = [str(Path(__file__).resolve().parents[1] / "src")]  # the voipqos under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(sid: str, obj: str, method: str, args: dict | str) -> bytes:
    args_text = args if isinstance(args, str) else json.dumps(args)
    return (f'{{"jsonrpc":"2.0","id":1,"method":"call","params":["{sid}","{obj}",'
            f'"{method}",{args_text}]}}').encode()


def post(data: bytes, extra: str = "") -> bytes:
    return (f"POST /ubus HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n{extra}"
            "\r\n").encode() + data


STATUS = body(NULL, "voipqos", "status", {})  # the null session: access denied, cheaply


def read_response(sock: socket.socket) -> bytes:
    """One whole response (headers + Content-Length body), or what came before EOF."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        if not chunk:
            return got
        got += chunk
    head, _, rest = got.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return head + b"\r\n\r\n" + rest


class Daemon:
    """A real daemon in a temporary directory: dry-run profile on `lo`, JSON-RPC on
    127.0.0.1:PORT, log on stderr into a file."""

    def __init__(self, tmp: Path, options: str = "") -> None:
        self.tmp = tmp
        self.port = free_port()
        self.conf = tmp / "voipqos"
        # header_evidence 0: a daemon on the host must not attach BPF to its lo
        self.good = (f"config voipqos 'main'\n\toption interface 'lo'\n"
                     f"\toption conntrack_acct '0'\n\toption header_evidence '0'\n"
                     f"\toption run_dir '{tmp}/run'\n"
                     f"\toption rpc_listen '127.0.0.1:{self.port}'\n{options}")
        self.conf.write_text(self.good)
        self.log = tmp / "daemon.log"
        self.sid = NULL
        env = dict(os.environ, PYTHONPATH=SRC[0])
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voipqos.cli", "run", "--foreground", "--dry-run",
                 "--config", str(self.conf)], stderr=log, env=env)
        deadline = time.monotonic() + 20
        while not self.answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"daemon did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.05)

    @property
    def secret(self) -> str:
        return (self.tmp / "run/rpc.secret").read_text().strip()

    def connect(self, timeout: float = 5) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def exchange(self, data: bytes, timeout: float = 5) -> bytes:
        with self.connect(timeout) as s:
            s.sendall(data)
            return read_response(s)

    def call(self, sid: str, obj: str, method: str, args: dict | str) -> dict:
        resp = self.exchange(post(body(sid, obj, method, args)))
        return json.loads(resp.partition(b"\r\n\r\n")[2])

    def status_body(self) -> bytes:
        """A `voipqos status` call as root (rpcd's null session may not call it)."""
        if self.sid == NULL:
            self.sid = self.login()
        return body(self.sid, "voipqos", "status", {})

    def status(self) -> dict:
        resp = self.exchange(post(self.status_body()))
        return json.loads(resp.partition(b"\r\n\r\n")[2])["result"][1]

    def answers(self) -> bool:
        """The daemon answers `status` (through a logged-in session: the null session
        has only rpcd's `unauthenticated` group)."""
        try:
            return bool(self.status())
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return False

    def login(self) -> str:
        res = self.call(NULL, "session", "login", {"username": "root",
                                                   "password": self.secret})
        return res["result"][1]["ubus_rpc_session"]

    def polls(self) -> int:
        """How many polls the daemon has made (its cadence is 1 s here)."""
        return self.status()["metrics"]["polls"]

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def alive(self) -> bool:
        return self.proc.poll() is None and self.answers()

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the fuzzer (also run by tests/test_endpoint_fuzz.py) ---------------------------------

SEEDS = [
    post(STATUS), post(STATUS, "Connection: close\r\n"),
    post(body(NULL, "session", "login", {"username": "root", "password": "x"})),
    post(body(NULL, "voipqos", "flows", {"all": True})),
    post(b'[' + b','.join([STATUS] * 3) + b']'),
    b"GET /ubus HTTP/1.0\r\n\r\n",
    post(body(NULL, "voipqos", "set_mode", {"mode": "on", "expires": 5})),
]
TOKENS = [b"\r\n", b"\r\n\r\n", b"Content-Length: ", b"\xc2\xb2", b"9" * 30, b"[" * 40,
          b"\x00", b"\xff", b"{", b"}", b'"', b"\\", b"1e400", b"NaN", b"-", b" ",
          b"Transfer-Encoding: chunked\r\n", b"Connection: close\r\n", b"\t"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few byte-level edits: flips, inserts of interesting tokens, cuts, repeats."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 2:
            del buf[pos:pos + rng.randint(1, 20)]
        elif op == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            buf += bytes(buf[pos:pos + 200]) * rng.randint(1, 3)
    return bytes(buf)


def send_and_check(d: Daemon, data: bytes) -> str | None:
    """Send one input on a fresh connection, half-close, read to EOF. None if what
    came back is nothing or well-formed HTTP responses; else what was wrong."""
    with d.connect(timeout=10) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused early (e.g. 413): the answer is still to be read
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            return f"reset after {len(got)} bytes"
        except TimeoutError:
            return "no answer and no close within 10 s"
    while got:
        if not got.startswith(b"HTTP/1.1 ") or b"\r\n\r\n" not in got:
            return f"not HTTP: {got[:60]!r}"
        head, _, rest = got.partition(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        got = rest[length:]
    return None


def fuzz(d: Daemon, count: int, seed: int = 14) -> tuple[int, list[str]]:
    """`count` mutated requests; returns how many were sent and what went wrong."""
    rng = random.Random(seed)
    problems = []
    seeds = [*SEEDS, post(d.status_body()), post(d.status_body(), "Connection: close\r\n")]
    for _ in range(count):
        data = mutate(rng, rng.choice(seeds))
        problem = send_and_check(d, data)
        if problem:
            problems.append(f"{data[:80]!r}: {problem}")
    return count, problems


# -- the probes ---------------------------------------------------------------------------

def as_nobody(code: str, timeout: float = 60) -> str:
    """Run a Python snippet as user nobody (the base interpreter, from /: a checkout
    under /root is not readable for nobody); its stdout."""
    python = getattr(sys, "_base_executable", sys.executable)
    res = subprocess.run([python, "-c", code], user="nobody", capture_output=True,
                         text=True, timeout=timeout, cwd="/")
    return res.stdout.strip() or res.stderr.strip()[-200:]


def cli(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=SRC[0])
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "voipqos.cli", *args], capture_output=True,
                         text=True, timeout=timeout, env=env)
    return res, time.monotonic() - t0


RAW_SEND = """
import socket, sys
s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
s.sendall({data!r})
print(s.recv(200).split(b"\\r\\n")[0].decode())
"""


def alive(d: Daemon) -> tuple[bool, str]:
    ok = d.alive()
    return ok, "alive and answering" if ok else "NOT ANSWERING"


def row_unicode_length(d: Daemon, tmp: Path) -> tuple[bool, str]:
    firsts = []
    for digit in (b"\xb2", b"\xc2\xb2"):  # '²' in latin-1 and in UTF-8
        data = b"POST /ubus HTTP/1.1\r\nContent-Length: " + digit + b"\r\n\r\n{}"
        if os.geteuid() == 0:
            firsts.append(as_nobody(RAW_SEND.format(port=d.port, data=data)))
            who = "as nobody"
        else:
            firsts.append(d.exchange(data).split(b"\r\n")[0].decode())
            who = "(not root: as this user)"
    up, state = alive(d)
    ok = all(f.startswith("HTTP/1.1 400") for f in firsts) and up
    return ok, f"{who}: {' / '.join(f or 'no answer' for f in firsts)}; {state}"


def row_long_length(d: Daemon, tmp: Path) -> tuple[bool, str]:
    first = d.exchange(b"POST /ubus HTTP/1.1\r\nContent-Length: " + b"9" * 5000
                       + b"\r\n\r\n").split(b"\r\n")[0].decode()
    up, state = alive(d)
    return first.startswith("HTTP/1.1 400") and up, f"{first or 'no answer'}; {state}"


def row_deep_json(d: Daemon, tmp: Path) -> tuple[bool, str]:
    resp = d.exchange(post(b"[" * 30000 + b"]" * 30000))
    code = json.loads(resp.partition(b"\r\n\r\n")[2] or b"{}").get("error", {}).get("code")
    up, state = alive(d)
    return code == -32700 and up, f"JSON-RPC {code}; {state}"


def row_timeout_1e400(d: Daemon, tmp: Path) -> tuple[bool, str]:
    out = []
    for timeout in ("1e400", "1" + "0" * 400):
        args = f'{{"username":"root","password":"{d.secret}","timeout":{timeout}}}'
        res = d.call(NULL, "session", "login", args)
        out.append(str(res.get("error", res.get("result")))[:60])
    up, state = alive(d)
    ok = all("-32700" in o for o in out) and up
    return ok, f"timeout 1e400 / 10^400: {out[0]} / {out[1]}; {state}"


def row_non_utf8_config(d: Daemon, tmp: Path) -> tuple[bool, str]:
    garbage = (d.good + "\toption interface 'caf\xe9'\n").encode("latin-1")
    running = d.status()["config"]
    d.conf.write_bytes(garbage)
    before = len(d.log_lines())
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while len(d.log_lines()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    new = d.log_lines()[before:]
    said = [line for line in new if "not UTF-8 text" in line]
    rpc = d.call(d.login(), "voipqos", "reload", {})["result"]
    kept = d.status()["config"] == running
    d.conf.write_text(d.good)
    (tmp / "bad").write_bytes(garbage)
    check, _ = cli("check-config", "--config", str(tmp / "bad"))
    start, _ = cli("run", "--foreground", "--dry-run", "--config", str(tmp / "bad"))
    ok = (said and "Traceback" not in "".join(new) and d.alive() and rpc[0] == 2 and kept
          and len(check.stderr.splitlines()) == 1 and check.returncode == 2
          and len(start.stderr.splitlines()) == 1 and start.returncode == 2)
    return bool(ok), (f"SIGHUP: {len(new)} one-line log line(s) ({len(said)} with the "
                      f"error), running config {'kept' if kept else 'CHANGED'}, still "
                      f"serving; RPC reload: status {rpc[0]} {str(rpc[1:])[:70]}; "
                      f"check-config/start: {len(check.stderr.splitlines())}/"
                      f"{len(start.stderr.splitlines())} line(s), exit 2")


def cadence(d: Daemon, polls0: int, t0: float) -> tuple[bool, str]:
    """Whether the daemon kept polling once a second since (polls0, t0)."""
    polls, took = d.polls() - polls0, time.monotonic() - t0
    return polls >= int(took) - 1, f"{polls} polls in {took:.1f} s"


def row_non_reading_client(d: Daemon, tmp: Path, seconds: float) -> tuple[bool, str]:
    polls0, t_start = d.polls(), time.monotonic()
    base = d.rss_kib()
    stop = threading.Event()
    sent, closed = [0], [0]

    def hog() -> None:  # closed by the daemon after 5 s of unread answers: comes back
        req = post(d.status_body())
        while not stop.is_set():
            with d.connect() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(0.2)
                with contextlib.suppress(ConnectionError):
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            sent[0] += s.send(req)
            closed[0] += not stop.is_set()

    t = threading.Thread(target=hog)
    t.start()
    peak, worst = base, 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        ok = d.answers()
        worst = max(worst, time.monotonic() - t0 if ok else 99)
        peak = max(peak, d.rss_kib())
        time.sleep(0.2)
    stop.set()
    t.join()
    steady, polled = cadence(d, polls0, t_start)
    time.sleep(6)  # the hog's deadline passes: it is dropped
    after = d.rss_kib()
    ok = peak - base < 4096 and after - base < 2048 and worst < 0.5 and steady
    return ok, (f"{seconds:g} s, {sent[0] // 1024} KiB of requests sent, closed by the daemon "
                f"{closed[0]}x: RSS {base / 1024:.1f}"
                f" -> peak {peak / 1024:.1f} -> after {after / 1024:.1f} MiB; "
                f"slowest other answer {worst * 1000:.0f} ms; {polled}")


def row_parallel(d: Daemon, tmp: Path) -> tuple[bool, str]:
    results: list[str] = []

    def one() -> None:
        try:
            with d.connect() as s:
                s.sendall(post(d.status_body(), "Connection: close\r\n"))
                results.append(read_response(s)[9:12].decode() or "closed")
        except OSError as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally = {r: results.count(r) for r in sorted(set(results))}
    return set(tally) <= {"200", "503"} and d.alive(), f"200 calls: {tally}"


def row_idle_reconnect(d: Daemon, tmp: Path, seconds: float) -> tuple[bool, str]:
    stop = threading.Event()

    def idler() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError), d.connect(timeout=1) as s:
                s.settimeout(1)
                with contextlib.suppress(OSError):
                    s.recv(1)  # sits until the endpoint closes it

    polls0, t_start = d.polls(), time.monotonic()
    idlers = [threading.Thread(target=idler) for _ in range(100)]
    for t in idlers:
        t.start()
    asked = answered = 0
    slowest = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        asked += 1
        t0 = time.monotonic()
        answered += d.answers()
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.45)
    stop.set()
    for t in idlers:
        t.join()
    steady, polled = cadence(d, polls0, t_start)
    return answered >= 0.95 * asked and steady, (
        f"watcher got {answered} of {asked} answers, slowest {slowest * 1000:.0f} ms; "
        f"{polled}")


def row_fifo(d: Daemon, tmp: Path) -> tuple[bool, str]:
    d.conf.rename(tmp / "voipqos.file")
    os.mkfifo(d.conf)
    before = len(d.log_lines())
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    t0 = time.monotonic()
    ok = d.alive()
    took = time.monotonic() - t0
    new = d.log_lines()[before:]
    d.conf.unlink()
    (tmp / "voipqos.file").rename(d.conf)
    ok = ok and any("not a regular file" in line for line in new) and \
        "Traceback" not in "".join(new)
    return ok, f"answers after SIGHUP in {took * 1000:.0f} ms; log: {new[-1][-70:] if new else ''}"


def row_huge_value(d: Daemon, tmp: Path) -> tuple[bool, str]:
    """1 MB (over the file limit) and 60 KB (a valid name: the device lookup refuses it)."""
    ok, out = True, []
    for size in (1_000_000, 60_000):
        huge = d.good + "\toption interface '" + "x" * size + "'\n"
        d.conf.write_text(huge)
        before = len(d.log_lines())
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGHUP)
        while len(d.log_lines()) == before and time.monotonic() - t0 < 30:
            time.sleep(0.02)
        took = time.monotonic() - t0
        time.sleep(0.1)
        new = d.log_lines()[before:]
        d.conf.write_text(d.good)
        (tmp / "huge").write_text(huge)
        check, check_took = cli("check-config", "--config", str(tmp / "huge"))
        longest = max((len(line) for line in new), default=0)
        ok = ok and bool(new) and longest < 300 and len(check.stderr) < 300 and d.alive()
        out.append(f"{size // 1000} KB: reload rejected in {took:.2f} s, longest log line "
                   f"{longest} chars; check-config {check_took:.2f} s, "
                   f"{len(check.stderr)} chars")
    return ok, "; ".join(out)


def row_failed_logins(d: Daemon, tmp: Path, seconds: float = 5) -> tuple[bool, str]:
    code = f"""
import socket, time
s = socket.create_connection(("127.0.0.1", {d.port}))
req = {post(body(NULL, "session", "login", {"username": "root", "password": "guess"}))!r}
n, end, buf = 0, time.monotonic() + {seconds}, b""
while time.monotonic() < end:
    s.sendall(req * 20)
    while buf.count(b"HTTP/1.1 ") < 20:
        buf += s.recv(65536)
    n += 20
    buf = buf[buf.rfind(b"HTTP/1.1 "):][0:0]
print(n)
"""
    before = len(d.log_lines())
    polls0, t_start = d.polls(), time.monotonic()
    out = as_nobody(code) if os.geteuid() == 0 else subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    time.sleep(0.3)
    steady, polled = cadence(d, polls0, t_start)
    lines = [ln for ln in d.log_lines()[before:] if "failed login" in ln]
    return len(lines) <= 2 and d.alive() and steady, (
        f"{out} failed logins in {seconds:g} s -> {len(lines)} line(s); {polled}")


def row_fuzz(d: Daemon, tmp: Path, count: int) -> tuple[bool, str]:
    sent, problems = fuzz(d, count)
    up, state = alive(d)
    return not problems and up, f"{sent} mutated requests, {len(problems)} problems, {state}" + (
        f"; first: {problems[0]}" if problems else "")


# issue 16's config rows: what our reader makes of the file vs what uci show says

def uci_show(path: Path) -> str | None:
    uci = os.environ.get("UCI")
    if not uci:
        return None
    with tempfile.TemporaryDirectory() as confdir:
        shutil.copy(path, Path(confdir, "voipqos"))
        res = subprocess.run([uci, "-c", confdir, "show", "voipqos"], capture_output=True,
                             text=True)
    return (res.stdout + res.stderr).strip().replace("\n", " ")[:80]


def config_row(tmp: Path, name: str, text: str, want_ok: bool,
               check: Callable[[str], bool]) -> tuple[bool, str]:
    path = tmp / name
    path.write_text(text)
    res, took = cli("check-config", "--config", str(path))
    got = (res.stdout + res.stderr).strip()
    if want_ok and res.returncode == 0:
        env = dict(os.environ, PYTHONPATH=SRC[0])
        got = subprocess.run([sys.executable, "-c", "import sys, json; from voipqos import "
                              "config; print(json.dumps(config.to_dict(config.load("
                              "sys.argv[1]))))", str(path)], capture_output=True, text=True,
                             env=env).stdout
    ok = (res.returncode == 0) == want_ok and check(got) and len(got.splitlines()) <= 1
    shown = uci_show(path)
    return ok, (f"check-config {took:.2f} s: {got.strip()[:90]}"
                + (f" | uci: {shown}" if shown is not None else ""))


CONFIG_ROWS = [
    ("two `config voipqos 'main'` sections: merged, later options override",
     "merged", "config voipqos 'main'\n\toption upload '10000'\n\toption download '7'\n"
     "config voipqos 'main'\n\toption upload '20000'\n", True,
     lambda got: '"upload": 20000' in got and '"download": 7' in got),
    ("`config interface 'main'` after the voipqos section: refused",
     "othertype", "config voipqos 'main'\nconfig interface 'main'\n", False,
     lambda got: ":2: section of different type" in got),
    ("upload '１２３４５' (full-width digits): refused",
     "fullwidth", "config voipqos 'main'\n\toption upload '１２３４５'\n", False,
     lambda got: "main.upload" in got),
    ("one 1 MB option value: refused at once by the size limit, not echoed",
     "megabyte", "config voipqos 'main'\n\toption upload '" + "9" * 1_000_000 + "'\n", False,
     lambda got: len(got) < 300),
    ("a 60 KB option value: linear, the message quotes a prefix",
     "sixtykb", "config voipqos 'main'\n\toption upload '" + "9" * 60_000 + "'\n", False,
     lambda got: "(60000 characters)" in got and len(got) < 300),
    ("a 64 MB line: refused by the size limit at once",
     "sixtyfour", "config voipqos 'main'\n\toption upload '" + "9" * 64_000_000 + "'\n",
     False, lambda got: "larger than" in got),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10,
                    help="length of the non-reading and reconnecting client rows (issue: 60/30)")
    ap.add_argument("--fuzz", type=int, default=2000, help="mutated requests to send")
    ap.add_argument("--src", default=SRC[0],
                    help="voipqos sources to probe, e.g. an older commit's (git archive)")
    ap.add_argument("--only", default="", help="run the rows whose title has this text")
    args = ap.parse_args()
    SRC[0] = args.src
    print(f"# {os.uname().nodename}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
          f", uid {os.geteuid()}, sources {SRC[0]}")
    seconds, count = args.seconds, args.fuzz
    rows: list[tuple[str, Callable[[Daemon, Path], tuple[bool, str]]]] = [
        ("14 dies: Content-Length '²' from nobody, no login", row_unicode_length),
        ("14 dies: Content-Length of 5,000 digits", row_long_length),
        ("14 dies: JSON nested 30,000 deep", row_deep_json),
        ("14 dies: session.login timeout 1e400", row_timeout_1e400),
        ("14 dies: non-UTF-8 config on SIGHUP / start / check-config / RPC reload",
         row_non_utf8_config),
        ("14 serves badly: pipelining client that never reads",
         lambda d, tmp: row_non_reading_client(d, tmp, seconds)),
        ("14 serves badly: 200 parallel status calls", row_parallel),
        ("14 serves badly: 100 idle clients reconnecting vs a watcher",
         lambda d, tmp: row_idle_reconnect(d, tmp, seconds)),
        ("14 serves badly: config path is a FIFO with no writer", row_fifo),
        ("14 serves badly: a 1 MB option value (log)", row_huge_value),
        ("16: failed logins on the local endpoint", row_failed_logins),
        ("14: fuzzed requests", lambda d, tmp: row_fuzz(d, tmp, count)),
    ]
    rows += [(f"16: {title}", lambda d, tmp, n=name, t=text, w=want, c=check:
              config_row(tmp, n, t, w, c))
             for title, name, text, want, check in CONFIG_ROWS]
    rows = [(title, probe) for title, probe in rows if args.only in title]
    failed = exits = 0
    with tempfile.TemporaryDirectory() as tmpdir:
        d = None
        try:
            for i, (title, probe) in enumerate(rows):
                if d is None or d.proc.poll() is not None:  # a row before killed it
                    exits += d is not None
                    tmp = Path(tmpdir, str(i))
                    tmp.mkdir()
                    d = Daemon(tmp)
                t0 = time.monotonic()
                try:
                    ok, detail = probe(d, tmp)
                except Exception as exc:  # a probe that breaks is a FAIL, not a stop
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                if d.proc.poll() is not None:
                    ok, detail = False, f"the daemon exited ({d.proc.returncode}); {detail}"
                failed += not ok
                print(f"{'PASS' if ok else 'FAIL'}  {title}  [{time.monotonic() - t0:.1f} s]"
                      f"\n      {detail}", flush=True)
        finally:
            if d is not None:
                tracebacks = sum("Traceback" in line for line in d.log_lines())
                d.stop()
                print(f"daemons that exited during the rows: {exits}; last one's exit code "
                      f"{d.proc.returncode}, {tracebacks} traceback(s) in its log")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
