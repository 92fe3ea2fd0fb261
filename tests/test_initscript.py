"""The procd init script, the uci-defaults script and shell hygiene of every shell file.

procd cannot run here: the init script is sourced after tests/openwrt_stubs/procd.sh,
a stub that records each procd/UCI/ubus call, and the test compares what was recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from voipqos.lab import netns

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "files/etc/init.d/voipqos"
DEFAULTS = ROOT / "files/etc/uci-defaults/90-voipqos"
STUBS = ROOT / "tests/openwrt_stubs"

# dash (Debian's sh) always; busybox ash, the router's shell, when installed
SHELLS = [["sh"]] + ([["busybox", "ash"]] if shutil.which("busybox") else [])


def shell_files() -> list[Path]:
    found = [ROOT / "tests/compile_bpf.sh"]
    for base in ("files", "package"):
        for path in sorted((ROOT / base).rglob("*")):
            if path.is_file() and path.read_bytes()[:64].split(b"\n")[0] in (
                    b"#!/bin/sh", b"#!/bin/bash", b"#!/bin/sh /etc/rc.common"):
                found.append(path)
    return found


def run_init(tmp_path: Path, action: str, uci: dict[str, str], shell: list[str],
             **env: str) -> list[str]:
    calls = tmp_path / "calls"
    calls.write_text("")
    script = (f". {STUBS}/procd.sh\n. {INIT}\n"
              'call "PROG=$PROG START=$START STOP=$STOP USE_PROCD=$USE_PROCD"\n'
              f"PROG=fake_voipqos\n{action}\n")
    env = {"PATH": os.environ["PATH"], "CALLS": str(calls), **env}
    env.update({f"UCI_{k.replace('.', '_')}": v for k, v in uci.items()})
    subprocess.run([*shell, "-c", script], env=env, check=True, stdin=subprocess.DEVNULL,
                   timeout=10, cwd=tmp_path)
    return calls.read_text().splitlines()


ENABLED = {"network.wan.TYPE": "interface", "voipqos.main.enabled": "1"}
RUN = ["open_instance", "set_param command fake_voipqos run --foreground",
       "set_param respawn 3600 5 5", "set_param stdout 1", "set_param stderr 1",
       "close_instance"]
TRIGGERS = ["reload_trigger voipqos",
            "interface_trigger interface.* wan /etc/init.d/voipqos reload"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[-1])
def test_start_runs_daemon_under_procd_with_triggers(tmp_path, shell):
    calls = run_init(tmp_path, "start", ENABLED, shell)
    assert calls == ["PROG=/usr/bin/voipqos START=90 STOP=10 USE_PROCD=1",
                     "open_service", *RUN, *TRIGGERS, "close_service"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[-1])
def test_enabled_0_idles_and_removes_leftover_profile(tmp_path, shell):
    calls = run_init(tmp_path, "start", {**ENABLED, "voipqos.main.enabled": "0"}, shell)
    assert "open_instance" not in calls
    assert calls[1:] == ["open_service",
                         "logger -t voipqos disabled (voipqos.main.enabled=0): not starting",
                         "logger -t voipqos voipqos remove", *TRIGGERS, "close_service"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[-1])
def test_stop_waits_for_the_daemon_then_removes_what_is_left(tmp_path, shell):
    calls = run_init(tmp_path, "stop", ENABLED, shell)
    assert calls[1:] == ["procd_kill", "logger -t voipqos voipqos remove --wait 15"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[-1])
def test_reload_reregisters_then_signals_the_running_daemon(tmp_path, shell):
    calls = run_init(tmp_path, "reload", ENABLED, shell, PROCD_RUNNING="1")
    assert calls[1:] == ["procd_running voipqos", "open_service", *RUN, *TRIGGERS,
                         "close_service", "procd_send_signal voipqos * HUP"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[-1])
def test_reload_starts_a_stopped_daemon_without_signalling_it(tmp_path, shell):
    """A daemon procd starts just now reads the config anyway; a SIGHUP before its
    handler is set would kill it."""
    calls = run_init(tmp_path, "reload", ENABLED, shell, PROCD_RUNNING="0")
    assert calls[1:] == ["procd_running voipqos", "open_service", *RUN, *TRIGGERS,
                         "close_service"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[-1])
def test_reload_with_enabled_0_drops_the_instance_and_never_races_the_daemon(tmp_path, shell):
    """procd stops the running daemon after the service is re-registered without an
    instance; the remove before that does not wait (it would wait for itself) and, the
    daemon still holding its lock, leaves the cleanup to it."""
    calls = run_init(tmp_path, "reload", {**ENABLED, "voipqos.main.enabled": "0"}, shell,
                     PROCD_RUNNING="1")
    assert calls[1:] == ["procd_running voipqos", "open_service",
                         "logger -t voipqos disabled (voipqos.main.enabled=0): not starting",
                         "logger -t voipqos voipqos remove", *TRIGGERS, "close_service"]


def test_save_and_apply_reaches_the_reload_trigger(tmp_path):
    """tests/data/rpcd_config_change.json: what the real rpcd sent procd's `service`
    object (`event`) for `uci commit` and for LuCI's apply-with-rollback + confirm
    (tests/record_config_change.py). procd runs `/etc/init.d/voipqos reload` for a
    config.change whose package is what procd_add_reload_trigger named (procd.sh)."""
    rec = json.loads((ROOT / "tests/data/rpcd_config_change.json").read_text())
    [trigger] = [c for c in run_init(tmp_path, "start", ENABLED, SHELLS[-1])
                 if c.startswith("reload_trigger ")]
    package = trigger.split()[1]
    for path in ("commit", "apply_rollback"):
        assert all(c["returncode"] == 0 for c in rec[path]["uci_calls"]), path
        assert rec[path]["service_event"] == [
            {"type": "config.change", "data": {"package": package}}], path


# the init script's way to a stopped daemon, with procd's SIGTERM where procd sends it:
# stop (procd_kill), or reload with `enabled 0` (the service registered without instance)
STOPS = {
    "stop": ("procd_kill() { call procd_kill; kill -TERM $DAEMON; }\nstop\n", {}, [
        "procd_kill", "logger -t voipqos voipqos: profile removed (htb)"]),
    "reload_enabled_0": (
        'call() { echo "$*" >>"$CALLS"; [ "$1" != close_service ] || kill -TERM $DAEMON; }\n'
        "reload\n", {"UCI_voipqos_main_enabled": "0", "PROCD_RUNNING": "1"}, [
            "procd_running voipqos", "open_service",
            "logger -t voipqos disabled (voipqos.main.enabled=0): not starting",
            # the daemon still runs here: remove leaves the profile to it
            "logger -t voipqos voipqos: voipqos is already running (pid $DAEMON, RUN/voipqos"
            ".pid): it switches the profile itself (voipqos on|off|auto), and removes it "
            "when stopped (/etc/init.d/voipqos stop)",
            "reload_trigger voipqos", "close_service"]),
}


@pytest.mark.kernel
@pytest.mark.parametrize("how", list(STOPS))
def test_stopping_the_shaping_daemon_leaves_nothing_and_no_error(tmp_path, how):
    """The real daemon shaping (HTB + IFB + BPF) in a namespace; the init script under
    busybox ash, SIGTERM sent where procd sends it: `voipqos remove` runs at once, as on a
    router, and must neither overlap the daemon's own removal nor fail."""
    run_dir = tmp_path / "run"
    conf = tmp_path / "voipqos"
    conf.write_text(
        f"config voipqos 'main'\n\toption interface '{netns.ROUTER_WAN_DEV}'\n"
        f"\toption download '20000'\n\toption run_dir '{run_dir}'\n"
        f"\toption rpc_listen 'unix:{run_dir}/rpc.sock'\n")
    with netns.three_hosts(f"vqin{os.getpid() % 100000}-") as lab:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return lab.exec("router", [sys.executable, "-m", "voipqos.cli", *args,
                                       "--config", str(conf)], check=False)

        def state() -> str:
            """Root and clsact qdiscs of wan0, voipqos's IFB, BPF filters on wan0."""
            return "".join(lab.exec("router", cmd).stdout for cmd in (
                f"tc qdisc show dev {netns.ROUTER_WAN_DEV}", "ip -o link show type ifb",
                f"tc filter show dev {netns.ROUTER_WAN_DEV} egress"))

        def wait(pred, what: str) -> None:
            deadline = time.monotonic() + 15
            while not pred():
                assert time.monotonic() < deadline, f"no {what} in 15 s"
                time.sleep(0.1)

        daemon = lab.popen("router", [sys.executable, "-m", "voipqos.cli", "run",
                                      "--foreground", "--config", str(conf)])
        wait(lambda: cli("on").returncode == 0, "daemon answering")
        wait(lambda: all(w in state() for w in ("htb", "clsact", "vqi-", "voipqos")),
             "profile on (BPF classifier: make bpf)")
        # a second daemon is refused the lock and leaves the running one's profile alone
        assert cli("run", "--foreground").returncode == 1
        assert "htb" in state()
        # nor does a remove without --wait: the daemon still holds its lock
        res = cli("remove")
        assert res.returncode == 1 and "already running" in res.stderr
        assert "htb" in state()

        prog = tmp_path / "voipqos-in-router"
        prog.write_text(f'#!/bin/sh\nexec ip netns exec {lab.ns("router")} '
                        f'{sys.executable} -m voipqos.cli "$@" --config {conf}\n')
        prog.chmod(0o755)
        calls = tmp_path / "calls"
        calls.write_text("")
        action, env, want = STOPS[how]
        script = f". {STUBS}/procd.sh\n. {INIT}\nPROG={prog}\n{action}"
        subprocess.run([*SHELLS[-1], "-c", script], check=True, timeout=60, cwd=tmp_path,
                       env={"PATH": os.environ["PATH"], "CALLS": str(calls),
                            "PYTHONPATH": str(ROOT / "src"), "DAEMON": str(daemon.pid), **env})
        assert daemon.wait(10) == 0
        assert calls.read_text().splitlines() == [
            line.replace("$DAEMON", str(daemon.pid)).replace("RUN", str(run_dir))
            for line in want]
        assert not [w for w in ("htb", "clsact", "vqi-", "voipqos") if w in state()]


@pytest.mark.kernel
def test_reload_signal_while_the_daemon_starts_does_not_kill_it(tmp_path):
    """SIGHUP all through start-up: the launcher ignores it from its first lines until the
    daemon's handler is set (a reload during the seconds of imports on a router must not
    kill it); the window left is the interpreter's own start, before any of our code."""
    run_dir = tmp_path / "run"
    conf = tmp_path / "voipqos"
    conf.write_text(f"config voipqos 'main'\n\toption interface 'lo'\n"
                    f"\toption run_dir '{run_dir}'\n"
                    f"\toption rpc_listen 'unix:{run_dir}/rpc.sock'\n")
    launcher = ROOT / "package/voipqos/files/voipqos"
    with netns.Topology(f"vqh{os.getpid() % 100000}-") as t:
        t.add("r")
        daemon = t.popen("r", [sys.executable, str(launcher), "run", "--foreground",
                               "--dry-run", "--config", str(conf)],
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        deadline = time.monotonic() + 15

        def hup_ignored() -> bool:  # the launcher's first lines ran (SigIgn bit 0)
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{daemon.pid}/status").read_text()
                return bool(int(status.split("SigIgn:")[1].split()[0], 16) & 1)
            return False

        while not hup_ignored():
            assert time.monotonic() < deadline, "the launcher never ignored SIGHUP"
            time.sleep(0.001)
        # from here on, all through the imports, until the daemon's socket is up
        while not (run_dir / "rpc.sock").exists():
            daemon.send_signal(signal.SIGHUP)
            assert daemon.poll() is None, "a SIGHUP during start-up killed the daemon"
            assert time.monotonic() < deadline, "no daemon socket in 15 s"
            time.sleep(0.01)
        daemon.send_signal(signal.SIGHUP)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(10) == 0


@pytest.mark.parametrize(("iface", "uci", "trigger"), [
    ("wan", {}, None),  # no network.wan section: not a logical interface
    ("eth1", {}, None),  # a device name
    ("@wan6", {"network.wan6.TYPE": "interface"}, "wan6"),  # netifd alias syntax
    ("pppoe-wan", {}, None),  # a device name: never passed to config_get's eval
    ("eth0.2", {}, None),
    ("$(touch${IFS}pwned)", {}, None),
    (None, {"network.wan.TYPE": "interface"}, "wan"),  # option unset: default wan
])
def test_interface_trigger_only_for_logical_interfaces(tmp_path, iface, uci, trigger):
    cfg = {"voipqos.main.enabled": "1", **uci}
    if iface:
        cfg["voipqos.main.interface"] = iface
    calls = [c for c in run_init(tmp_path, "start", cfg, SHELLS[-1])
             if c.startswith("interface_trigger")]
    want = [f"interface_trigger interface.* {trigger} /etc/init.d/voipqos reload"]
    assert calls == (want if trigger else [])
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("path", shell_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_files_parse_and_are_shellcheck_clean(path):
    shells = [["bash"]] if path.read_text().startswith("#!/bin/bash") else SHELLS
    for shell in shells:
        subprocess.run([*shell, "-n", str(path)], check=True)
    subprocess.run(["shellcheck", str(path)], check=True)


def test_shell_file_list_covers_what_ships():
    names = {p.relative_to(ROOT).as_posix() for p in shell_files()}
    assert {"files/etc/init.d/voipqos", "files/etc/uci-defaults/90-voipqos",
            "package/build-ipk.sh"} <= names


@pytest.fixture
def defaults_env(tmp_path):
    """Runs 90-voipqos in a private mount namespace where a scratch dir stands in for
    /etc/sysctl.d, with the UCI stub."""
    sysctl_d = tmp_path / "sysctl.d"
    sysctl_d.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(STUBS / "uci", bin_dir / "uci")
    state, calls = tmp_path / "uci", tmp_path / "calls"

    def run(uci_lines: list[str]) -> int:
        state.write_text("".join(line + "\n" for line in uci_lines))
        calls.write_text("")
        script = f"mount --bind {sysctl_d} /etc/sysctl.d && {' '.join(SHELLS[-1])} {DEFAULTS}"
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
               "UCI_STATE": str(state)}
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               script], env=env, timeout=10).returncode

    return SimpleNamespace(run=run, state=state, sysctl_d=sysctl_d, calls=calls)


LEGACY_SYSCTL = ("# voipqos: call detection needs conntrack counters\n"
                 "net.netfilter.nf_conntrack_acct=1\n")


@pytest.mark.kernel
def test_uci_defaults_deletes_only_its_own_legacy_sysctl_file(defaults_env):
    """0.1.0 wrote /etc/sysctl.d/90-voipqos.conf, owned by no package, left after
    removal; the daemon turns accounting on itself, so the upgrade deletes that file
    and never touches one the user wrote."""
    env = defaults_env
    conf = env.sysctl_d / "90-voipqos.conf"
    conf.write_text(LEGACY_SYSCTL)
    assert env.run(["voipqos.main=voipqos"]) == 0
    assert not list(env.sysctl_d.iterdir())
    assert env.state.read_text() == "voipqos.main=voipqos\n"  # the user's config untouched
    conf.write_text(LEGACY_SYSCTL + "net.netfilter.nf_conntrack_helper=1\n")
    assert env.run(["voipqos.main=voipqos"]) == 0
    assert conf.read_text() == LEGACY_SYSCTL + "net.netfilter.nf_conntrack_helper=1\n"


@pytest.mark.kernel
def test_uci_defaults_creates_missing_main_section_only(defaults_env):
    env = defaults_env
    assert env.run([]) == 0
    assert env.state.read_text() == "voipqos.main=voipqos\n"
    assert "uci -q commit voipqos" in env.calls.read_text()
    assert env.run(["voipqos.main=voipqos", "voipqos.main.upload=5000"]) == 0
    assert "set" not in env.calls.read_text()
    assert not list(env.sysctl_d.iterdir())
