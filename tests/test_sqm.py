"""SqmProfile against a fake sqm install tree: the UCI edits and the run.sh commands."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from voipqos import config
from voipqos.profile import ProfileError
from voipqos.sqm import SqmProfile
from voipqos.uci import parse_uci

SQM_CONF = """
config queue 'eth1'
\toption enabled '0'
\toption interface 'eth1'
\toption download '85000'
\toption upload '10000'
\toption qdisc 'cake'
\toption script 'layer_cake.qos'

config queue 'guest'
\toption enabled '1'
\toption interface 'wlan1'
\toption upload '2000'
"""

# run.sh as documented: `start IFACE` writes the state file of an enabled queue, `stop IFACE`
# removes it; every call is logged
RUN_SH = """#!/bin/sh
echo "$@" >> {log}
case "$1" in
  start) touch {state}/$2.state ;;
  stop) rm -f {state}/$2.state ;;
esac
[ -e {fail} ] && exit 1
exit 0
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir()
    (tmp_path / "sqm").write_text(SQM_CONF)
    run = tmp_path / "run.sh"
    run.write_text(RUN_SH.format(log=tmp_path / "log", state=tmp_path / "state",
                                 fail=tmp_path / "fail"))
    run.chmod(0o755)
    return tmp_path


def make(tree: Path, device: str = "eth1", **opts: str) -> SqmProfile:
    cfg = config.from_options({"backend": "sqm", **opts})
    return SqmProfile(cfg, device, config_path=str(tree / "sqm"), run_sh=str(tree / "run.sh"),
                      state_dir=str(tree / "state"), use_bpf=False)


def enabled(tree: Path, name: str) -> str:
    return next(s for s in parse_uci((tree / "sqm").read_text()) if s.name == name
                ).options["enabled"]


def log(tree: Path) -> list[str]:
    p = tree / "log"
    return p.read_text().splitlines() if p.exists() else []


def test_apply_enables_and_restarts_only_that_queue(tree: Path) -> None:
    prof = make(tree)
    prof.apply()
    assert enabled(tree, "eth1") == "1"
    assert enabled(tree, "guest") == "1"  # untouched
    assert log(tree) == ["stop eth1", "start eth1"]
    sec = next(s for s in parse_uci((tree / "sqm").read_text()) if s.name == "eth1")
    assert sec.options["script"] == "layer_cake.qos"  # other options kept
    assert prof.status()["applied"] is True


def test_second_apply_changes_nothing(tree: Path) -> None:
    make(tree).apply()
    make(tree).apply()  # a restarted daemon finds the queue running
    assert log(tree) == ["stop eth1", "start eth1"]


def test_remove_disables_and_stops(tree: Path) -> None:
    prof = make(tree)
    prof.apply()
    prof.remove()
    assert enabled(tree, "eth1") == "0"
    assert log(tree)[-1] == "stop eth1"
    assert not (tree / "state" / "eth1.state").exists()
    make(tree).remove()  # stateless and idempotent
    assert enabled(tree, "eth1") == "0"


def test_section_by_name(tree: Path) -> None:
    make(tree, device="wan", sqm_section="guest").remove()
    assert enabled(tree, "guest") == "0"
    assert log(tree) == ["stop wlan1"]


def test_failed_start_restores_config(tree: Path) -> None:
    (tree / "fail").touch()
    with pytest.raises(ProfileError, match=r"run\.sh stop eth1"):
        make(tree).apply()
    assert enabled(tree, "eth1") == "0"


@pytest.mark.parametrize("device,opts,msg", [
    ("eth9", {}, "no sqm queue with interface 'eth9'"),
    ("eth1", {"sqm_section": "nope"}, "main\\.sqm_section: no queue 'nope'"),
])
def test_bad_section(tree: Path, device: str, opts: dict, msg: str) -> None:
    with pytest.raises(ProfileError, match=msg):
        make(tree, device, **opts).apply()
    assert log(tree) == []


def test_missing_sqm(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="is sqm-scripts installed"):
        make(tmp_path).apply()


# run.sh standing in for sqm's simple.qos in a namespace: an HTB root for upload and the
# plain `ingress` qdisc sqm uses for its download redirect
KERNEL_RUN_SH = """#!/bin/sh
case "$1" in
  start) ip netns exec {ns} tc qdisc replace dev $2 root handle 1: htb default 20
         ip netns exec {ns} tc qdisc add dev $2 handle ffff: ingress
         touch {state}/$2.state ;;
  stop)  ip netns exec {ns} tc qdisc del dev $2 root 2>/dev/null
         ip netns exec {ns} tc qdisc del dev $2 ingress 2>/dev/null
         rm -f {state}/$2.state ;;
esac
exit 0
"""


@pytest.mark.kernel
def test_real_classifier_marks_both_hooks_next_to_sqm(tree: Path) -> None:
    from voipqos.lab import netns

    (tree / "sqm").write_text(SQM_CONF.replace("'eth1'", "'wan0'"))
    with netns.three_hosts(f"vqs{os.getpid() % 100000}-") as t:
        (tree / "run.sh").write_text(KERNEL_RUN_SH.format(ns=t.ns("router"),
                                                          state=tree / "state"))
        prof = SqmProfile(config.from_options({"backend": "sqm"}), "wan0",
                          str(tree / "bpffs"), config_path=str(tree / "sqm"),
                          run_sh=str(tree / "run.sh"), state_dir=str(tree / "state"),
                          netns=t.ns("router"))
        prof.apply()
        assert prof.status()["classifier"] == "bpf", prof.status()
        assert "voipqos_eth" in t.exec("router", "tc filter show dev wan0 parent 1:").stdout
        assert "voipqos_eth" in t.exec("router", "tc filter show dev wan0 ingress").stdout
        prof.remove()
        assert "bpf" not in t.exec("router", "tc filter show dev wan0 ingress",
                                   check=False).stdout
        assert "htb" not in t.exec("router", "tc qdisc show dev wan0").stdout
