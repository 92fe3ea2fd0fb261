"""HTTP/1.1 framing for the local `/ubus` endpoint, apart from its socket loop (as h11
keeps readers and writers apart from I/O): a buffer goes in, a request (and how many bytes it
took) or one HttpError comes out, and responses are bytes.

Strict and bounded, so no input can make the daemon raise or grow: header bytes and
count, body size and Content-Length (ASCII digits only) are limited, and every refusal
is an HTTP status uhttpd gives for the same input (its client.c), after which the
endpoint closes the connection (tests/data/uhttpd/ holds the real uhttpd's answers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEADER = 8 * 1024  # request line + headers; uhttpd allows 16 KiB, we need < 1 KiB
MAX_HEADERS = 100  # uhttpd's UH_LIMIT_HEADER_COUNT
MAX_BODY = 64 * 1024  # uhttpd's UH_UBUS_MAX_POST_SIZE; a voipqos request is < 1 KiB
PATH = b"/ubus"

_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_REQUEST_LINE = re.compile(rb"(%s+) ([!-~]+) HTTP/1\.([01])" % _TCHAR)
_HEADER = re.compile(rb"(%s+):(.*)" % _TCHAR, re.S)
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB, not in a field value
_LENGTH = re.compile(rb"[0-9]{1,10}")


class HttpError(Exception):
    """A request the endpoint will not serve: answered with this status, then closed."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code, self.reason = code, reason


BAD_REQUEST = (400, "Bad Request")


@dataclass(frozen=True)
class Request:
    body: bytes
    keep_alive: bool


def parse_request(buf: bytes | bytearray) -> tuple[Request, int] | None:
    """The first complete `POST /ubus` request in `buf` and how many bytes it took; None
    while incomplete; HttpError for anything the endpoint will not serve."""
    start = 0
    while buf.startswith(b"\r\n", start):  # empty lines before a request are skipped
        start += 2
    end = buf.find(b"\r\n\r\n", start, start + MAX_HEADER + 4)
    if end < 0:
        if len(buf) - start > MAX_HEADER:
            raise HttpError(431, "Request Header Fields Too Large")
        return None
    head = bytes(buf[start:end]).split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(head[0])
    if not line:
        raise HttpError(*BAD_REQUEST)
    if len(head) - 1 > MAX_HEADERS:
        raise HttpError(431, "Request Header Fields Too Large")
    headers: dict[bytes, list[bytes]] = {}
    for field in head[1:]:
        m = _HEADER.fullmatch(field)
        if not m or _CTL.search(m.group(2)):
            raise HttpError(*BAD_REQUEST)
        headers.setdefault(m.group(1).lower(), []).append(m.group(2).strip(b" \t"))
    length = _length(headers)
    if line.group(2).split(b"?", 1)[0] != PATH:
        raise HttpError(404, "Not Found")
    if line.group(1) != b"POST":
        raise HttpError(405, "Method Not Allowed")
    if length is None:
        raise HttpError(411, "Length Required")
    total = end + 4 + length
    if len(buf) < total:
        return None
    tokens = b",".join(headers.get(b"connection", [])).lower()
    keep = b"close" not in tokens if line.group(3) == b"1" else b"keep-alive" in tokens
    return Request(bytes(buf[end + 4:total]), keep), total


def _length(headers: dict[bytes, list[bytes]]) -> int | None:
    """The body length; None when the request gives none."""
    lengths = headers.get(b"content-length", [])
    codings = headers.get(b"transfer-encoding", [])
    if len(lengths) > 1 or (lengths and codings):  # ambiguous framing: smuggling
        raise HttpError(*BAD_REQUEST)
    if codings:
        if b",".join(codings).strip().lower() != b"chunked":
            raise HttpError(501, "Not Implemented")
        return None  # chunked bodies are not taken: ask for a length
    if not lengths:
        return None
    if not _LENGTH.fullmatch(lengths[0]):  # ASCII digits only: no '²', no sign
        raise HttpError(*BAD_REQUEST)
    if int(lengths[0]) > MAX_BODY:
        raise HttpError(413, "Request Entity Too Large")
    return int(lengths[0])


def response(code: int, reason: str, body: bytes, keep_alive: bool,
             ctype: str = "application/json", extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n{extra}"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + body


def error_response(code: int, reason: str, extra: str = "") -> bytes:
    """A refusal: plain text, and the connection closes after it."""
    return response(code, reason, reason.encode() + b"\n", False, "text/plain", extra)
