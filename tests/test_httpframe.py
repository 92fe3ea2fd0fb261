"""HTTP framing (httpframe), sans-I/O: every malformed or oversized request is one
HttpError with uhttpd's status for it, never another exception."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipqos.httpframe import MAX_BODY, HttpError, error_response, parse_request


def req(*headers: str, body: bytes = b"", line: str = "POST /ubus HTTP/1.1") -> bytes:
    return ("\r\n".join([line, *headers]) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize(("data", "code"), [
    # issue 14: the daemon exited on these two
    (req("Content-Length: ²"), 400),
    (req("Content-Length: " + "9" * 5000), 400),
    (req("Content-Length: ١٢"), 400),
    (req("Content-Length: +2"), 400),
    (req("Content-Length: 0x10"), 400),
    (req("Content-Length: 2", "Content-Length: 2", body=b"{}"), 400),  # uhttpd: any repeat
    (req("Content-Length: 2", "Transfer-Encoding: chunked", body=b"{}"), 400),
    (req("Transfer-Encoding: gzip"), 501),
    (req(f"Content-Length: {MAX_BODY + 1}"), 413),
    (req("X: a\x01b", "Content-Length: 0"), 400),  # a control byte in a value
    (req("X : y", "Content-Length: 0"), 400),  # space before the colon (smuggling)
    (req("Content-Length: 0", " folded"), 400),  # obs-fold
    (req("Content-Length: 0", *[f"X{i}: y" for i in range(101)]), 431),
    (req(line="POST /ubus HTTP/2.0"), 400),
    (req(line="POST  /ubus HTTP/1.1"), 400),
    (req(line="PO\xffST /ubus HTTP/1.1"), 400),
])
def test_refusals(data, code):
    with pytest.raises(HttpError) as exc:
        parse_request(data)
    assert exc.value.code == code


def test_header_too_large_before_its_end_arrives():
    with pytest.raises(HttpError) as exc:
        parse_request(b"POST /ubus HTTP/1.1\r\nX: " + b"y" * 9000)
    assert exc.value.code == 431


def test_empty_lines_before_a_request_and_spaces_around_values():
    parsed, used = parse_request(b"\r\n\r\n" + req("Content-Length:  2 \t", body=b"{}"))
    assert parsed.body == b"{}" and used == 4 + len(req("Content-Length:  2 \t", body=b"{}"))


def test_error_response_closes():
    assert error_response(400, "Bad Request").startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in error_response(400, "Bad Request")


header_names = st.sampled_from(["Content-Length", "content-length", "Transfer-Encoding",
                                "Connection", "Host", "X-\u00e9", "", " Host"])
header_values = st.one_of(st.sampled_from(["0", "2", "²", "-1", "chunked", "close",
                                           "99999999999", " 2 ", "2, 2"]),
                          st.text(max_size=20))


@given(st.sampled_from(["POST", "GET", "post", "", "P\u00d6ST"]),
       st.sampled_from(["/ubus", "/ubus?x", "/", "*", "/ubus/../x", ""]),
       st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/0.9", "http/1.1", ""]),
       st.lists(st.tuples(header_names, header_values), max_size=6),
       st.binary(max_size=40))
def test_any_request_is_framed_or_refused(method, path, version, headers, body):
    data = (f"{method} {path} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
            + "\r\n").encode("utf-8", "surrogatepass") + body
    with contextlib.suppress(HttpError):
        parsed = parse_request(data)
        if parsed is not None:
            assert 0 < parsed[1] <= len(data)
