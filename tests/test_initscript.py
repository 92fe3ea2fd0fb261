"""The procd init script, the uci-defaults script and shell hygiene of every shell file.

procd cannot run here: the init script is sourced after tests/openwrt_stubs/procd.sh,
a stub that records each procd/UCI/ubus call, and the test compares what was recorded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "files/etc/init.d/voipqos"
DEFAULTS = ROOT / "files/etc/uci-defaults/90-voipqos"
STUBS = ROOT / "tests/openwrt_stubs"

# dash (Debian's sh) always; busybox ash, the router's shell, when installed
SHELLS = [["sh"]] + ([["busybox", "ash"]] if shutil.which("busybox") else [])


def shell_files() -> list[Path]:
    found = []
    for base in ("files", "package"):
        for path in sorted((ROOT / base).rglob("*")):
            if path.is_file() and path.read_bytes()[:64].split(b"\n")[0] in (
                    b"#!/bin/sh", b"#!/bin/bash", b"#!/bin/sh /etc/rc.common"):
                found.append(path)
    return found


def run_init(tmp_path: Path, action: str, uci: dict[str, str], shell: list[str]) -> list[str]:
    calls = tmp_path / "calls"
    calls.write_text("")
    script = (f". {STUBS}/procd.sh\n. {INIT}\n"
              'call "PROG=$PROG START=$START STOP=$STOP USE_PROCD=$USE_PROCD"\n'
              f"PROG=fake_voipqos\n{action}\n")
    env = {"PATH": os.environ["PATH"], "CALLS": str(calls)}
    env.update({f"UCI_{k.replace('.', '_')}": v for k, v in uci.items()})
    subprocess.run([*shell, "-c", script], env=env, check=True, stdin=subprocess.DEVNULL,
                   timeout=10)
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
def test_stop_removes_profile_after_procd_killed_daemon(tmp_path, shell):
    calls = run_init(tmp_path, "stop", ENABLED, shell)
    assert calls[1:] == ["procd_kill", "logger -t voipqos voipqos remove"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[-1])
def test_reload_reregisters_then_asks_daemon(tmp_path, shell):
    calls = run_init(tmp_path, "reload", ENABLED, shell)
    assert calls[1:] == ["open_service", *RUN, *TRIGGERS, "close_service",
                         "ubus -t 5 call voipqos reload"]


@pytest.mark.parametrize(("iface", "uci", "trigger"), [
    ("wan", {}, None),  # no network.wan section: not a logical interface
    ("eth1", {}, None),  # a device name
    ("@wan6", {"network.wan6.TYPE": "interface"}, "wan6"),  # netifd alias syntax
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
    """Runs 90-voipqos in a private mount namespace where a scratch file stands in for
    /proc/sys/net/netfilter/nf_conntrack_acct and a scratch dir for /etc/sysctl.d."""
    acct, sysctl_d = tmp_path / "acct", tmp_path / "sysctl.d"
    sysctl_d.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(STUBS / "uci", bin_dir / "uci")
    (bin_dir / "logger").write_text('#!/bin/sh\necho "logger $*" >>"$CALLS"\n')
    (bin_dir / "logger").chmod(0o755)
    state, calls = tmp_path / "uci", tmp_path / "calls"

    def run(acct_value: str, uci_lines: list[str]) -> tuple[int, str]:
        acct.write_text(acct_value + "\n")
        state.write_text("".join(line + "\n" for line in uci_lines))
        calls.write_text("")
        script = (f"mount --bind {acct} /proc/sys/net/netfilter/nf_conntrack_acct && "
                  f"mount --bind {sysctl_d} /etc/sysctl.d && {' '.join(SHELLS[-1])} {DEFAULTS}")
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls),
               "UCI_STATE": str(state)}
        rc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], env=env, timeout=10).returncode
        return rc, acct.read_text().strip()

    return SimpleNamespace(run=run, state=state, sysctl_d=sysctl_d, calls=calls)


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_uci_defaults_turns_acct_on_and_persists_it(defaults_env):
    env = defaults_env
    rc, acct = env.run("0", ["voipqos.main=voipqos"])
    assert (rc, acct) == (0, "1")
    conf = env.sysctl_d / "90-voipqos.conf"
    assert "net.netfilter.nf_conntrack_acct=1" in conf.read_text()
    assert env.state.read_text() == "voipqos.main=voipqos\n"  # the user's config untouched


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_uci_defaults_respects_user_choices(defaults_env):
    env = defaults_env
    # conntrack_acct '0': voipqos must not touch the sysctl
    rc, acct = env.run("0", ["voipqos.main=voipqos", "voipqos.main.conntrack_acct=0"])
    assert (rc, acct) == (0, "0")
    assert not list(env.sysctl_d.iterdir())
    # an existing sysctl.d entry is never rewritten
    (env.sysctl_d / "90-voipqos.conf").write_text("# mine\n")
    rc, acct = env.run("0", ["voipqos.main=voipqos"])
    assert (rc, acct) == (0, "1")
    assert (env.sysctl_d / "90-voipqos.conf").read_text() == "# mine\n"


@pytest.mark.kernel
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_uci_defaults_creates_missing_main_section_only(defaults_env):
    env = defaults_env
    rc, acct = env.run("1", [])
    assert (rc, acct) == (0, "1")
    assert env.state.read_text() == "voipqos.main=voipqos\n"
    assert "uci -q commit voipqos" in env.calls.read_text()
    rc, _ = env.run("1", ["voipqos.main=voipqos", "voipqos.main.upload=5000"])
    assert rc == 0
    assert "set" not in env.calls.read_text()
