"""LuCI's status page shows a call's quality, coloured, and the recent calls: the real
daemon (HTB + BPF classifier) in the namespace lab, real RTP calls through its NAT, the
view in Debian's headless Chromium (tests/test_luci_browser.py's harness).
VOIPQOS_SCREENSHOTS=docs keeps the screenshot (that is how docs/luci-quality.png was made).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from line_faults import write_config
from luci.server import LuciServer, login, unix_upstream
from test_callquality_kernel import RTP_PEER
from test_luci_browser import badge, browser, page_errors, screenshot, wait  # noqa: F401
from voipqos.lab import netns

pytestmark = pytest.mark.kernel
PREFIX = f"vqql{os.getpid() % 100000}-"


@pytest.fixture
def lab():
    with netns.three_hosts(PREFIX) as topo:
        yield topo


def rtp_call(lab: netns.Topology, packets: int, phone_skips: int, far_skips: int) -> list:
    """Both sides of an RTP call; every `*_skips`th packet not sent (0: none)."""
    far = lab.popen("wan", [sys.executable, "-c", RTP_PEER, f"{netns.WAN_HOST4}:5004",
                            "answer", str(packets), str(far_skips), "2222"])
    phone = lab.popen("lan", [sys.executable, "-c", RTP_PEER, f"{netns.LAN_HOST4}:40000",
                              f"{netns.WAN_HOST4}:5004", str(packets), str(phone_skips),
                              "1111"])
    return [far, phone]


def classes(drv, where: str) -> list[str]:
    return [e.get_attribute("class") for e in
            drv.find_elements(By.CSS_SELECTOR, f"#{where} .vq-quality div")]


def test_status_page_shows_call_quality_and_recent_calls(browser, lab, tmp_path):  # noqa: F811
    confdir, run_dir = tmp_path / "config", tmp_path / "run"
    confdir.mkdir()
    (confdir / "network").write_text("config interface 'lan'\nconfig interface 'wan'\n")
    conf = write_config(confdir / "voipqos", run_dir, download="20000")
    daemon = lab.popen("router", [sys.executable, "-m", "voipqos.cli", "run", "--foreground",
                                  "--config", str(conf)],
                       stderr=(tmp_path / "daemon.log").open("w"))
    try:
        secret = wait(lambda: (run_dir / "rpc.secret").read_text().strip(), 15, "rpc secret")
        upstream = unix_upstream(str(run_dir / "rpc.sock"))
        sid = wait(lambda: login(upstream, str(secret)), 15, "session.login on the daemon")
        shots = Path(os.environ.get("VOIPQOS_SCREENSHOTS", tmp_path))
        with LuciServer(upstream, confdir, sid) as server:
            drv = browser
            drv.get(server.url + "/status")
            wait(lambda: badge(drv) == "watching", 10, "badge Watching")
            assert "No finished call yet" in drv.find_element(By.ID, "vq-recent").text
            # a bad call: the phone's Wi-Fi loses every 12th packet (8 %)
            for p in rtp_call(lab, 450, 12, 0):
                assert p.wait(30) == 0
            wait(lambda: "192.168.77.2" in drv.find_element(By.ID, "vq-recent").text, 20,
                 "the finished call in Recent calls")
            recent = drv.find_element(By.ID, "vq-recent").text
            assert "on the Wi-Fi/LAN side" in recent and "Out: 8." in recent, recent
            assert classes(drv, "vq-recent")[0] == "vq-q-poor"
            # a good call, still running for the screenshot
            procs = rtp_call(lab, 1500, 0, 0)
            wait(lambda: classes(drv, "vq-calls")[:1] == ["vq-q-good"]
                 and "MOS 4.4" in drv.find_element(By.ID, "vq-calls").text, 20,
                 "the running call's quality, good")
            assert drv.find_element(By.ID, "vq-calls").text.count("0.0 % lost") == 2
            shot = screenshot(drv, shots, "luci-quality.png")
            assert shot.stat().st_size > 10_000
            assert page_errors(drv) == []
            for p in procs:
                p.kill()
    finally:
        daemon.terminate()
        assert daemon.wait(10) == 0
