#!/usr/bin/env python3
"""Record what the real uhttpd (openwrt/uhttpd with its ubus plugin, in front of a real
ubusd) answers to each malformed request of INPUTS: its status code and, for a 200, the
JSON-RPC error code. test_rpc_endpoints.py replays them against our endpoint.

Runs ubusd and uhttpd from $VOIPQOS_UPSTREAM/prefix (default /work/upstream/prefix) in a
private mount + network namespace (needs root):

    python3 tests/data/uhttpd/record.py     # writes tests/data/uhttpd/answers.json
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
PREFIX = Path(os.environ.get("VOIPQOS_UPSTREAM", "/work/upstream")) / "prefix"
PORT = 8080


def post(body: bytes, *headers: str, length: bytes | None = None) -> bytes:
    size = str(len(body)).encode() if length is None else length
    return (b"POST /ubus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + b"".join(h.encode() + b"\r\n" for h in headers)
            + b"Content-Length: " + size + b"\r\n\r\n" + body)


def nested(depth: int) -> bytes:
    """A valid call `depth` levels deep in all, nested in an extra member (a bare array
    would be a batch, answered per element)."""
    inner = b'{"a":' * (depth - 2) + b"{}" + b"}" * (depth - 2)
    return b'{"jsonrpc":"2.0","id":1,"method":"list","params":[],"x":' + inner + b"}"


CALL = b'{"jsonrpc":"2.0","id":1,"method":"list","params":[]}'
INPUTS: dict[str, bytes] = {
    "cl_superscript_latin1": post(b"{}", length=b"\xb2"),
    "cl_superscript_utf8": post(b"{}", length=b"\xc2\xb2"),
    "cl_5000_digits": post(b"", length=b"9" * 5000),
    "cl_20_digits": post(b"", length=b"9" * 20),
    "cl_negative": post(b"", length=b"-1"),
    "cl_hex": post(b"", length=b"0x10"),
    "cl_twice": post(CALL, f"Content-Length: {len(CALL)}"),
    "cl_and_chunked": post(CALL, "Transfer-Encoding: chunked"),
    "te_gzip": b"POST /ubus HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    "header_control_byte": post(CALL, "X: a\x01b"),
    "header_space_before_colon": post(CALL, "X : y"),
    "header_101_lines": post(CALL, *[f"X{i}: y" for i in range(101)]),
    "header_17k": post(CALL, "X: " + "y" * 17000),
    "version_2": b"POST /ubus HTTP/2.0\r\nContent-Length: 0\r\n\r\n",
    "request_line_junk": b"HELLO\r\n\r\n",
    "body_not_json": post(b"{oops"),
    "body_empty": post(b""),
    "json_nan": post(b'{"jsonrpc":"2.0","id":NaN,"method":"list","params":[]}'),
    "json_1e400": post(b'{"jsonrpc":"2.0","id":1e400,"method":"list","params":[]}'),
    "json_int_beyond_int64": post(b'{"jsonrpc":"2.0","id":1' + b"0" * 30
                                  + b',"method":"list","params":[]}'),
    "valid_list": post(CALL),
    "json_depth_32": post(nested(32)),
    "json_depth_33": post(nested(33)),
    "json_depth_30000": post(b"[" * 30000 + b"]" * 30000),
    "body_64k_plus_1": post(b" " * 65536 + b"{}"),
}


def answer(data: bytes) -> dict:
    """uhttpd's status and JSON-RPC error code, or how the connection ended."""
    with socket.create_connection(("127.0.0.1", PORT), timeout=5) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)  # (no half-close: uhttpd takes it as an abort)
        got, ended = b"", "closed"
        try:
            while chunk := s.recv(65536):
                got += chunk
        except OSError as exc:
            ended = type(exc).__name__  # a reset: what arrived before it still counts
    if not got.startswith((b"HTTP/1.", b"HTTP/0.9 ")):
        return {"status": None, "ended": ended, "start": got[:40].decode("latin-1")}
    status = int(got[9:12])
    out: dict = {"status": status, "ended": ended}
    body = got.partition(b"\r\n\r\n")[2]
    if status == 200 and body:
        start = body.find(b"{")
        try:
            doc = json.loads(body[start:body.rfind(b"}") + 1])
        except ValueError:
            doc = {}
        out["rpc_error"] = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
    return out


def main() -> None:
    if os.environ.get("VOIPQOS_UHTTPD_NS") != "1":
        env = dict(os.environ, VOIPQOS_UHTTPD_NS="1")
        sys.exit(subprocess.run(["unshare", "--mount", "--net", "--propagation", "private",
                                 sys.executable, __file__], env=env).returncode)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    os.makedirs("/var/run/ubus", exist_ok=True)
    sock = "/var/run/ubus/ubus.sock"
    with tempfile.TemporaryDirectory() as docroot:
        procs = [subprocess.Popen([str(PREFIX / "sbin/ubusd"), "-s", sock])]
        time.sleep(0.3)
        procs.append(subprocess.Popen([str(PREFIX / "bin/uhttpd"), "-f", "-p",
                                       f"127.0.0.1:{PORT}", "-h", docroot, "-u", "/ubus",
                                       "-U", sock]))
        time.sleep(0.5)
        try:
            answers = {name: answer(data) for name, data in INPUTS.items()}
        finally:
            for p in procs:
                p.terminate()
                p.wait()
    commit = (PREFIX.parent / "src/uhttpd.commit")
    doc = {"uhttpd": commit.read_text().strip() if commit.exists() else "?",
           "cases": {name: {"request": base64.b64encode(INPUTS[name]).decode(),
                            "answer": answers[name]} for name in INPUTS}}
    (HERE / "answers.json").write_text(json.dumps(doc, indent=1) + "\n")
    for name, ans in answers.items():
        print(f"{name}: {ans}")


if __name__ == "__main__":
    main()
