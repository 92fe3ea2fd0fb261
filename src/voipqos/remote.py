"""A router's `/ubus` behind uhttpd, as LuCI talks to it (`voipqos --router URL ...`).

Separate from rpc_client because of TLS: the router itself never imports this module,
so it needs no python3-openssl.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import re
import ssl

from .rpc_client import RpcError, SessionClient, read_password


class _PinnedConnection(http.client.HTTPSConnection):
    """HTTPS that trusts exactly one certificate, by its SHA-256 fingerprint (what a
    router's self-signed certificate needs: its name rarely matches the address)."""

    def __init__(self, host: str, port: int, timeout: float, pin: str) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        super().__init__(host, port, timeout=timeout, context=ctx)
        self.pin = pin

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) or b""
        got = hashlib.sha256(der).hexdigest()
        if got != self.pin:
            self.close()
            raise RpcError(f"https://{self.host}:{self.port}: certificate fingerprint "
                           f"{_colons(got)} does not match --fingerprint")


def _colons(hexdigest: str) -> str:
    return ":".join(hexdigest[i:i + 2] for i in range(0, len(hexdigest), 2)).upper()


def parse_fingerprint(text: str) -> str:
    """`AB:CD:...` or `abcd...` (SHA-256, as `openssl x509 -fingerprint -sha256` prints)."""
    hexed = re.sub(r"^sha256[:=]|[:\s]", "", text.strip(), flags=re.I).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hexed):
        raise RpcError("--fingerprint: expected the certificate's SHA-256 as 64 hex digits "
                       "(openssl x509 -noout -fingerprint -sha256 -in CERT)")
    return hexed


class RemoteClient(SessionClient):
    """A router's `/ubus` behind uhttpd, logged in as LuCI does. TLS trust: the system's
    CAs, or `cafile`, or a pinned SHA-256 `fingerprint` (for the router's self-signed
    certificate), or none at all only with `insecure`."""

    def __init__(self, url: str, user: str, password: str, cafile: str | None = None,
                 insecure: bool = False, timeout: float = 5,
                 fingerprint: str | None = None) -> None:
        m = re.fullmatch(r"(?:(https?)://)?(\[[0-9a-fA-F:.]+\]|[^/:\[\]]+)(?::(\d{1,5}))?"
                         r"(/[^?#]*)?", url.strip())
        if not m:
            raise RpcError(f"--router: {url!r} is not a URL like https://192.168.1.1")
        scheme = m.group(1) or "https"
        host = m.group(2).strip("[]")
        port = int(m.group(3) or (443 if scheme == "https" else 80))
        super().__init__(f"{scheme}://{m.group(2)}:{port}", user, timeout)
        self.path = m.group(4) if m.group(4) not in (None, "", "/") else "/ubus"
        self._host, self._port, self._scheme = host, port, scheme
        self._secret = password
        self._pin = parse_fingerprint(fingerprint) if fingerprint else None
        self._ctx: ssl.SSLContext | None = None
        if scheme == "https" and self._pin is None:
            try:
                self._ctx = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise RpcError(f"--cafile {cafile}: {getattr(exc, 'strerror', None) or exc}") \
                    from None
            if insecure:
                self._ctx.check_hostname = False
                self._ctx.verify_mode = ssl.CERT_NONE

    def _connection(self) -> http.client.HTTPConnection:
        if self._scheme == "http":
            return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        if self._pin is not None:
            return _PinnedConnection(self._host, self._port, self.timeout, self._pin)
        return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                           context=self._ctx)

    def _describe(self, exc: OSError) -> str:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return (f"TLS certificate not trusted ({exc.verify_message}); use --cafile FILE "
                    "or --fingerprint SHA256")
        if isinstance(exc, ssl.SSLError):
            return f"TLS error: {exc.reason or exc}"
        return super()._describe(exc)

    def _needs_login(self, method: str) -> bool:
        return True  # as LuCI: a router's null session rarely may read voipqos

    def _password(self) -> str:
        return self._secret


def from_args(args: argparse.Namespace) -> RemoteClient:
    """The client for --router and friends (see rpc_client.add_remote_arguments)."""
    return RemoteClient(args.router, args.user, read_password(args), args.cafile,
                        args.insecure, args.timeout, args.fingerprint)
