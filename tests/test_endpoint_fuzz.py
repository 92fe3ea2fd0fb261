"""Fuzz the local endpoint of a RUNNING daemon (`voipqos run --dry-run`, a real process on
TCP loopback): every input gets well-formed HTTP answers or a clean close (no reset, no
hang), and the daemon is alive and answering at the end with no traceback in its log.
Bounded: a fixed number of inputs, a few seconds in all."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probe_endpoint_config import NULL, STATUS, Daemon, body, fuzz, post, send_and_check

BYTE_FUZZ = 3000  # mutated requests
FUZZ_SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("fuzz"))
    yield d
    d.stop()


def test_byte_fuzzer(daemon):
    sent, problems = fuzz(daemon, BYTE_FUZZ)
    assert sent == BYTE_FUZZ and not problems[:5]
    assert daemon.alive()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                             max_size=4),
    max_leaves=40)
objects = st.sampled_from(["voipqos", "session", "file", ""])
methods = st.sampled_from(["status", "flows", "check", "set_mode", "reload", "login",
                           "destroy", "nope"])


@FUZZ_SETTINGS
@given(st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(objects, methods, json_values).map(
        lambda t: body(NULL, t[0], t[1], json.dumps(t[2]))),
    st.integers(1, 40_000).map(lambda n: b"[" * n + b"]" * n),
    st.binary(max_size=300)))
def test_any_body_gets_a_json_rpc_answer(daemon, data):
    assert send_and_check(daemon, post(data, "Connection: close\r\n")) is None


@FUZZ_SETTINGS
@given(st.lists(st.one_of(
    st.sampled_from([post(STATUS), b"\r\n", b"Content-Length: \xc2\xb2\r\n",
                     b"Content-Length: " + b"9" * 5000 + b"\r\n", b"X: \x00\r\n",
                     b"Transfer-Encoding: chunked\r\n", b"POST /ubus HTTP/1.1\r\n",
                     b"GET / HTTP/1.0\r\n", b"Connection: close\r\n", b"{}"]),
    st.binary(max_size=40)), max_size=8).map(b"".join))
def test_any_byte_stream_gets_http_answers_or_a_clean_close(daemon, data):
    assert send_and_check(daemon, data) is None


def test_alive_and_answering_after_the_fuzzers(daemon):
    assert daemon.alive()
    assert not [line for line in daemon.log_lines() if "Traceback" in line]
