"""LocalClient and RemoteClient against the local endpoint (unix socket, TCP loopback) and
against an HTTPS front with a self-signed certificate made by openssl in the test."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import socket
import ssl
import subprocess
import threading

import pytest

from test_rpc import SECRET, Clock, stub_dispatcher
from voipqos import rpc
from voipqos.endpoints import Endpoints
from voipqos.remote import RemoteClient, from_args
from voipqos.rpc_client import LocalClient, RpcError, add_remote_arguments


@contextlib.contextmanager
def serving(listen: str, tmp_path):
    """The endpoint served from a thread, as the daemon's loop would."""
    (tmp_path / "rpc.secret").write_text(SECRET + "\n")
    (tmp_path / "rpc.secret").chmod(0o600)
    ep = Endpoints(stub_dispatcher(), listen, str(tmp_path / "rpc.secret"), False)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [ep.wait(0.02) for _ in iter(stop.is_set, True)])
    thread.start()
    try:
        yield ep
    finally:
        stop.set()
        thread.join()
        ep.close()


@pytest.fixture(params=["unix", "tcp"])
def local(request, tmp_path):
    listen = f"unix:{tmp_path}/rpc.sock" if request.param == "unix" else "127.0.0.1:0"
    with serving(listen, tmp_path) as ep:
        yield ep, LocalClient(ep.listen, str(tmp_path / "rpc.secret"))


@pytest.fixture
def tcp(tmp_path):
    with serving("127.0.0.1:0", tmp_path) as ep:
        yield ep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg
    return msg


def test_local_read_logs_in_too(local):
    _ep, client = local  # the null session has only rpcd's `unauthenticated` group
    assert client.call("status") == {"state": "watching"}
    assert client.sid != rpc.NULL_SESSION


def test_local_write_logs_in_with_the_secret(local):
    _ep, client = local
    assert client.call("set_mode", {"mode": "on"}) == {"mode": "on"}
    assert client.sid != rpc.NULL_SESSION


def test_local_invalid_argument(local):
    _ep, client = local
    with pytest.raises(RpcError) as exc:
        client.call("set_mode", {"mode": "loud"})
    assert "invalid argument: set_mode: mode must be on, off or auto" in one_line(exc)


def test_local_unknown_method(local):
    _ep, client = local
    with pytest.raises(RpcError) as exc:  # not in the ACL: uhttpd says -32002
        client.call("explode")
    assert one_line(exc).endswith("may not call voipqos.explode (rpcd ACL: "
                                  "/usr/share/rpcd/acl.d/voipqos.json)")


def test_local_wrong_secret(local, tmp_path):
    ep, _client = local
    (tmp_path / "other").write_text("guess\n")
    with pytest.raises(RpcError) as exc:
        LocalClient(ep.listen, str(tmp_path / "other")).call("reload")
    assert "wrong user name or password" in one_line(exc)


def test_local_daemon_not_running(tmp_path):
    (tmp_path / "s").write_text("left by an earlier run\n")
    with pytest.raises(RpcError) as exc:
        LocalClient(f"unix:{tmp_path}/none.sock", str(tmp_path / "s")).call("status")
    assert "is the voipqos daemon running" in one_line(exc)
    with pytest.raises(RpcError) as exc:
        LocalClient(f"127.0.0.1:{free_port()}", str(tmp_path / "s")).call("status")
    assert "connection refused" in one_line(exc)


def remote(ep: Endpoints, password: str = SECRET, **kw) -> RemoteClient:
    return RemoteClient(f"http://{ep.listen}", "root", password, **kw)


def test_remote_logs_in_like_luci(tcp):
    client = remote(tcp)
    assert client.call("flows", {"all": True}) == {"all": True}
    sid = client.sid
    assert len(sid) == 32
    assert client.call("reload") == {"reloaded": True}
    assert client.sid == sid  # one session for many calls
    client.logout()  # rpcd refuses session.destroy to LuCI's ACL groups: it just expires
    assert client.sid == rpc.NULL_SESSION and tcp.rpc.sessions.touch(sid)


def test_remote_wrong_password(tcp):
    with pytest.raises(RpcError) as exc:
        remote(tcp, "nope").call("status")
    msg = one_line(exc)
    assert "login as root failed: wrong user name or password" in msg
    assert "nope" not in msg


def test_remote_relogs_in_once_after_expiry(tcp):
    clock = Clock()
    tcp.rpc.sessions = rpc.Sessions(SECRET, clock)
    client = remote(tcp)
    client.call("status")
    first = client.sid
    clock.now += 301  # the router forgot the session
    assert client.call("reload") == {"reloaded": True}
    assert client.sid != first


def test_remote_permission_denied_after_relogin(tcp):
    tcp.rpc.sessions = rpc.Sessions(SECRET, Clock(), timeout=1)
    client = remote(tcp)
    client.login()
    tcp.rpc.sessions.touch = lambda sid: False  # an ACL that never lets this user in
    with pytest.raises(RpcError) as exc:
        client.call("reload")
    assert "permission denied: user root may not call voipqos.reload" in one_line(exc)


def test_remote_not_an_endpoint(tcp):
    client = RemoteClient(f"http://{tcp.listen}/cgi-bin/luci", "root", SECRET)
    with pytest.raises(RpcError) as exc:
        client.call("status")
    assert "HTTP 404" in one_line(exc) and "not a /ubus endpoint?" in one_line(exc)


def test_remote_server_error_names_the_likely_cause():
    """uhttpd answers 5xx when it cannot reach ubus/rpcd: not "not a /ubus endpoint"."""
    class Busy(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_error(503)

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        with pytest.raises(RpcError) as exc:
            RemoteClient(f"http://127.0.0.1:{srv.server_address[1]}", "root", "x").call("status")
        srv.shutdown()
    assert "HTTP 503" in one_line(exc) and "is rpcd running?" in one_line(exc)
    assert "not a /ubus" not in one_line(exc)


def test_remote_unreachable_and_timeout():
    with pytest.raises(RpcError) as exc:
        RemoteClient(f"http://127.0.0.1:{free_port()}", "root", "x").call("status")
    assert "connection refused" in one_line(exc)
    with socket.socket() as mute:  # accepts (backlog) but never answers
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        port = mute.getsockname()[1]
        with pytest.raises(RpcError) as exc:
            RemoteClient(f"http://127.0.0.1:{port}", "root", "x", timeout=0.2).call("status")
    assert "no answer within 0.2 s" in one_line(exc)


def test_remote_url_forms():
    assert RemoteClient("192.168.1.1", "root", "x").where == "https://192.168.1.1:443"
    c = RemoteClient("http://[fd00::1]:8080/ubus", "root", "x")
    assert (c.where, c.path) == ("http://[fd00::1]:8080", "/ubus")
    with pytest.raises(RpcError, match="--router"):
        RemoteClient("ftp://x y", "root", "x")
    with pytest.raises(RpcError, match="--fingerprint"):
        RemoteClient("https://r", "root", "x", fingerprint="abc")


# -- HTTPS with a self-signed router certificate --------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=OpenWrt", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    der = ssl.PEM_cert_to_DER_cert((d / "cert.pem").read_text())
    return d / "cert.pem", d / "key.pem", hashlib.sha256(der).hexdigest()


@pytest.fixture
def https(cert):
    """uhttpd's stand-in: TLS in front of the same protocol object (test-only server)."""
    certfile, keyfile, _ = cert
    service = rpc.UbusRpc(stub_dispatcher(), rpc.Sessions(SECRET))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = service.handle(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()
    server.server_close()


def test_https_untrusted_by_default(https):
    with pytest.raises(RpcError) as exc:
        RemoteClient(https, "root", SECRET).call("status")
    assert "TLS certificate not trusted" in one_line(exc)


def test_https_trusted_via_cafile(https, cert):
    assert RemoteClient(https, "root", SECRET, cafile=str(cert[0])).call("status") == {
        "state": "watching"}


def test_https_pinned_fingerprint(https, cert):
    pin = ":".join(cert[2][i:i + 2] for i in range(0, 64, 2)).upper()  # openssl's format
    assert RemoteClient(https, "root", SECRET, fingerprint=pin).call("status")["state"]
    with pytest.raises(RpcError) as exc:
        RemoteClient(https, "root", SECRET, fingerprint="00" * 32).call("status")
    assert "does not match --fingerprint" in one_line(exc)


def test_https_insecure_only_when_asked(https):
    assert RemoteClient(https, "root", SECRET, insecure=True).call("status")


# -- argument wiring ------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_remote_arguments(p)
    return p.parse_args(argv)


def test_client_from_args_password_sources(https, cert, tmp_path, monkeypatch):
    (tmp_path / "pw").write_text(SECRET + "\n")
    args = parse(["--router", https, "--cafile", str(cert[0]),
                  "--password-file", str(tmp_path / "pw")])
    assert from_args(args).call("status")
    monkeypatch.setenv("VOIPQOS_PASSWORD", SECRET)
    args = parse(["--router", https, "--cafile", str(cert[0])])
    assert from_args(args).call("status")
    monkeypatch.delenv("VOIPQOS_PASSWORD")
    monkeypatch.setattr("sys.stdin", open("/dev/null"))  # noqa: SIM115  (not a terminal)
    with pytest.raises(RpcError, match="no password"):
        from_args(args)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: SECRET)
    assert from_args(args).call("status")


def test_cli_exits_non_zero_with_one_line(tmp_path):
    """What the CLI does with an RpcError: one line on stderr, exit status 1."""
    port = free_port()
    script = ("import sys\nfrom voipqos.remote import RemoteClient, RpcError\n"
              "try:\n    RemoteClient(sys.argv[1], 'root', 'x').call('status')\n"
              "except RpcError as e:\n    sys.exit(f'voipqos: {e}')\n")
    res = subprocess.run([__import__("sys").executable, "-c", script,
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "connection refused" in res.stderr
