"""Issue 14 and 16 rows (endpoint and config) against a running daemon, each the probe
of tests/probe_endpoint_config.py with short durations: each failed before the fix."""

from __future__ import annotations

import pytest

import probe_endpoint_config as probe


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = probe.Daemon(tmp_path_factory.mktemp("probes"))
    yield d
    d.stop()


@pytest.mark.parametrize("row", [
    probe.row_unicode_length, probe.row_long_length, probe.row_deep_json,
    probe.row_timeout_1e400, probe.row_non_utf8_config, probe.row_parallel, probe.row_fifo,
    probe.row_huge_value,
    lambda d, tmp: probe.row_failed_logins(d, tmp, seconds=1),
    lambda d, tmp: probe.row_non_reading_client(d, tmp, seconds=2),
    lambda d, tmp: probe.row_idle_reconnect(d, tmp, seconds=3),
], ids=["unicode_length", "long_length", "deep_json", "timeout_1e400", "non_utf8_config",
        "parallel", "fifo", "huge_value", "failed_logins", "non_reading", "idle_reconnect"])
def test_row(daemon, tmp_path, row):
    ok, detail = row(daemon, daemon.tmp)
    assert ok, detail


@pytest.mark.parametrize("title, name, text, want_ok, check", probe.CONFIG_ROWS,
                         ids=[r[1] for r in probe.CONFIG_ROWS])
def test_config_row(tmp_path, title, name, text, want_ok, check):
    ok, detail = probe.config_row(tmp_path, name, text, want_ok, check)
    assert ok, detail
