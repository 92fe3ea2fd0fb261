"""The CLI contract: exit codes, one-line errors, analyze's JSON, and the commands that
talk to a running daemon (a real `voipqos run --dry-run` process on a unix socket)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from voipqos.cli import main

LINE_A = ("ipv4     2 udp      17 119 src=192.168.1.20 dst=203.0.113.9 sport=40000 dport=20000 "
          "packets={a} bytes={ab} src=203.0.113.9 dst=198.51.100.1 sport=20000 dport=40000 "
          "packets={b} bytes={bb} [ASSURED] mark=0 zone=0 use=2\n")
LINE_DNS = ("ipv4     2 udp      17 29 src=192.168.1.20 dst=203.0.113.53 sport=41000 dport=53 "
            "packets=1 bytes=60 src=203.0.113.53 dst=198.51.100.1 sport=53 dport=41000 "
            "packets=1 bytes=120 mark=0 zone=0 use=2\n")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voipqos.cli", *args], capture_output=True,
                          text=True, timeout=30)


def test_check_config_bad_value_exit_2_one_line(tmp_path):
    conf = tmp_path / "voipqos"
    conf.write_text("config voipqos 'main'\n\toption min_pps 'lots'\n")
    res = run_cli("check-config", "--config", str(conf))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "voipqos: main.min_pps: 'lots' is not allowed; expected a number from 1 to 1000"]
    conf.write_text("config voipqos 'main'\n")
    assert run_cli("check-config", "--config", str(conf)).returncode == 0


def test_analyze_json(tmp_path, capsys):
    before, after = tmp_path / "before", tmp_path / "after"
    before.write_text(LINE_A.format(a=100, ab=20000, b=100, bb=20000) + LINE_DNS)
    after.write_text(LINE_A.format(a=200, ab=40000, b=200, bb=40000) + LINE_DNS
                     + "ipv4     2 udp      17 119 src=192.168.1.20 dst=20\n")
    assert main(["analyze", str(before), str(after), "--interval", "2", "--json",
                 "--config", str(tmp_path / "none")]) == 2  # an explicit missing config
    capsys.readouterr()
    conf = tmp_path / "voipqos"
    conf.write_text("config voipqos 'main'\n")
    assert main(["analyze", str(before), str(after), "--interval", "2", "--json",
                 "--config", str(conf)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["calls"] == 1 and doc["malformed"] == 1
    media = doc["flows"][0]
    assert (media["proto"], media["src"], media["dst"], media["sport"], media["dport"]) == \
           ("udp", "192.168.1.20", "203.0.113.9", 40000, 20000)
    assert media["verdict"] == "media" and media["pps_out"] == 50.0
    assert doc["flows"][1]["reasons"] == ["port 53 excluded"]
    assert main(["analyze", str(before), str(after), "--config", str(conf)]) == 0
    assert "media" in capsys.readouterr().out


@pytest.fixture
def daemon(tmp_path):
    """A dry-run daemon on the host's lo (header_evidence 0: no BPF on the host)."""
    run_dir = tmp_path / "run"
    conf = tmp_path / "voipqos"
    conf.write_text(f"""config voipqos 'main'
\toption interface 'lo'
\toption conntrack_acct '0'
\toption header_evidence '0'
\toption run_dir '{run_dir}'
\toption rpc_listen 'unix:{run_dir}/rpc.sock'
""")
    p = subprocess.Popen([sys.executable, "-m", "voipqos.cli", "run", "--foreground",
                          "--dry-run", "--config", str(conf)], stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if (run_dir / "rpc.sock").exists():
            break
        time.sleep(0.05)
    yield p, conf
    if p.poll() is None:
        p.kill()
    p.wait()


def test_override_commands_and_signals(daemon):
    p, conf = daemon
    res = run_cli("on", "--expires", "60", "--config", str(conf))
    assert res.returncode == 0, res.stderr
    assert "mode on, state forced_on" in res.stdout
    doc = json.loads(run_cli("status", "--json", "--config", str(conf)).stdout)
    assert doc["state"] == "forced_on" and doc["mode_expires"] > time.time() + 50
    assert run_cli("off", "--config", str(conf)).returncode == 0
    assert "FORCED OFF" in run_cli("status", "--config", str(conf)).stdout
    assert run_cli("auto", "--config", str(conf)).returncode == 0
    # one instance per run_dir
    second = run_cli("run", "--foreground", "--dry-run", "--config", str(conf))
    assert second.returncode == 1 and "already running" in second.stderr
    # SIGHUP with a bad config keeps the running one
    good = conf.read_text()
    conf.write_text(good + "\toption upload 'x'\n")
    p.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    conf.write_text(good)
    doc = json.loads(run_cli("status", "--json", "--config", str(conf)).stdout)
    assert any(w["code"] == "config_rejected" for w in doc["warnings"])
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0


def test_unreachable_daemon_is_one_line_exit_1(tmp_path):
    conf = tmp_path / "voipqos"
    conf.write_text(f"config voipqos 'main'\n\toption rpc_listen 'unix:{tmp_path}/no.sock'\n")
    res = run_cli("status", "--config", str(conf))
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1


def test_endpoint_that_cannot_listen_is_one_line_and_nothing_applied(tmp_path):
    busy = tmp_path / "not-a-socket"
    busy.write_text("")
    conf = tmp_path / "voipqos"
    conf.write_text(f"config voipqos 'main'\n\toption interface 'lo'\n"
                    f"\toption conntrack_acct '0'\n\toption run_dir '{tmp_path}/run'\n"
                    f"\toption rpc_listen 'unix:{busy}'\n")
    res = run_cli("run", "--foreground", "--dry-run", "--config", str(conf))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == \
        f"voipqos: rpc_listen: {busy} exists and is not a socket"
