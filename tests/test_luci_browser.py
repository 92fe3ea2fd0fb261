"""Both LuCI views rendered by Debian's headless Chromium (Selenium, no browser download).

The views run on the LuCI shim (tests/luci/shim) served by tests/luci/server.py, which
proxies /ubus to the daemon's JSON-RPC endpoint: the real `voipqos run` in a namespace lab
with a simulated call (kernel test), or the scripted fixture behind the same protocol.
Screenshots go to the pytest tmp dir; VOIPQOS_SCREENSHOTS=docs keeps the lab test's
(that is how docs/luci-status.png and docs/luci-settings.png were made).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver  # pip selenium (the project's test extra)
from selenium.webdriver.common.by import By

import transcripts
from luci.fixture import PASSWORD, FixtureDaemon
from luci.server import LuciServer, login, unix_upstream
from voipqos.lab import netns

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PREFIX = f"vqe{os.getpid() % 100000}-"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail("chromium and chromium-driver are needed (scripts/apt-packages.txt)")
    profile = tempfile.mkdtemp(prefix="vqe-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1100,1400"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(pred: Callable[[], object], timeout: float, what: str | Callable[[], str]) -> object:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = pred()
        except Exception:  # the element may not be there yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for "
                         f"{what() if callable(what) else what}")


def badge(drv: webdriver.Chrome) -> str:
    return drv.find_element(By.ID, "vq-badge").get_attribute("data-state") or ""


def page_state(drv: webdriver.Chrome) -> str:
    """What the page shows, for a timeout's message."""
    notes = [n.text for n in drv.find_elements(By.CSS_SELECTOR, ".alert-message")]
    return (f"badge {badge(drv)!r}, reason {drv.find_element(By.ID, 'vq-reason').text!r}, "
            f"notices {notes!r}, errors {page_errors(drv)!r}")


def page_errors(drv: webdriver.Chrome) -> list[str]:
    return drv.execute_script("return (window.__luciErrors || [])"
                              ".concat(window.__luciHandlerErrors || [])")


def screenshot(drv: webdriver.Chrome, shots: Path, name: str) -> Path:
    """The whole page, not just the window (Chrome DevTools' captureBeyondViewport)."""
    png = drv.execute_cdp_cmd("Page.captureScreenshot",
                              {"format": "png", "captureBeyondViewport": True})["data"]
    out = shots / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(png))
    return out


def write_config(path: Path, **opts: str) -> None:
    body = "".join(f"\toption {k} '{v}'\n" for k, v in opts.items())
    path.write_text(f"config voipqos 'main'\n{body}")


def check_status_page(drv: webdriver.Chrome, server: LuciServer, start_call: Callable,
                      stop_call: Callable, shots: Path, call_timeout: float,
                      off_timeout: float) -> None:
    """Watching -> call -> On with the call row -> Force off -> Auto (On again) -> the call
    ends -> Watching."""
    drv.get(server.url + "/status")
    wait(lambda: badge(drv) == "watching", 10, "badge Watching")
    assert "No active call" in drv.find_element(By.ID, "vq-calls").text

    start_call()
    wait(lambda: badge(drv) == "on", call_timeout, "badge On during the call")
    assert drv.find_element(By.ID, "vq-badge").text == "On: call active"
    row = wait(lambda: "192.168.77.2" in drv.find_element(By.ID, "vq-calls").text, 5,
               "the call row")
    assert row
    polls = server.ubus_calls.count(("voipqos", "status"))
    time.sleep(3)  # a few graph samples with the profile on; one request per 1 s poll
    assert server.ubus_calls.count(("voipqos", "status")) - polls <= 4
    assert drv.find_elements(By.CSS_SELECTOR, "#vq-graph rect.onband")
    shot = screenshot(drv, shots, "luci-status.png")
    assert shot.stat().st_size > 10_000

    drv.find_element(By.ID, "vq-force-off").click()
    wait(lambda: badge(drv) == "forced_off", 5, lambda: f"badge Forced off ({page_state(drv)})")
    drv.find_element(By.ID, "vq-auto").click()
    wait(lambda: badge(drv) == "on", call_timeout, "On again in auto mode, call still going")
    stop_call()
    wait(lambda: badge(drv) == "watching", off_timeout,
         lambda: f"badge Watching after the call ({page_state(drv)})")
    assert drv.find_element(By.ID, "vq-badge").text == "Watching"
    assert page_errors(drv) == []

    calls = [c for c in server.ubus_calls if c[0] == "voipqos"]
    assert set(calls) <= {("voipqos", "status"), ("voipqos", "set_mode")}


def check_settings_page(drv: webdriver.Chrome, server: LuciServer, confdir: Path,
                        shots: Path) -> None:
    """Fields show the config, a bad value is refused, Save & Apply writes and reloads."""
    drv.get(server.url + "/settings")
    wait(lambda: drv.find_elements(By.CSS_SELECTOR, ".cbi-page-actions .cbi-button-apply"),
         10, "the settings form")
    tabs = [t.text for t in drv.find_elements(By.CSS_SELECTOR, ".cbi-tabmenu li")]
    assert tabs == ["General", "Detection", "Classifier", "Advanced"]
    screenshot(drv, shots, "luci-settings.png")

    drv.find_element(By.LINK_TEXT, "Detection").click()
    field = drv.find_element(By.CSS_SELECTOR, "input[name=min_pps]")
    field.clear()
    field.send_keys("0.5")  # below range(1,1000)
    drv.find_element(By.CSS_SELECTOR, ".cbi-button-apply").click()
    wait(lambda: drv.find_elements(By.CSS_SELECTOR, ".alert-message.error"), 5,
         "the invalid-value notice")
    assert "min_pps" not in (confdir / "voipqos").read_text()

    field.clear()
    field.send_keys("14")
    drv.find_element(By.CSS_SELECTOR, ".cbi-button-apply").click()
    wait(lambda: drv.execute_script("return window.__luciApplied || 0"), 5, "apply")
    assert "option min_pps '14'" in (confdir / "voipqos").read_text()
    assert server.reloads == 1


def test_views_against_fixture(browser, tmp_path):
    confdir = tmp_path / "config"
    confdir.mkdir()
    write_config(confdir / "voipqos", enabled="1", interface="wan")
    (confdir / "network").write_text("config interface 'lan'\nconfig interface 'wan'\n")
    fixture = FixtureDaemon()
    sid = login(fixture, PASSWORD)
    with LuciServer(fixture, confdir, sid) as server:
        check_status_page(browser, server, lambda: setattr(fixture, "call_active", True),
                          lambda: setattr(fixture, "call_active", False), tmp_path, 5, 5)
        # daemon text is shown as text, never parsed as markup
        assert "<i>(counters freeze)</i>" in browser.find_element(By.ID, "vq-warnings").text
        check_settings_page(browser, server, confdir, tmp_path)
    assert fixture.reloads == 1


def plugin_without_daemon(body: bytes) -> bytes:
    """uhttpd + rpcd's voipqos plugin while the daemon is stopped, as recorded
    (tests/data/transcripts/ubus_cli.json: status 4 with the plugin's message)."""
    row = next(r for r in transcripts.load("ubus_cli") if r.get("daemon") == "absent")
    req = json.loads(body)
    return json.dumps({"jsonrpc": "2.0", "id": req.get("id"),
                       "result": [transcripts.cli_status(row), row["reply"]]}).encode()


def test_status_page_tells_not_running_from_failed(browser, tmp_path):
    with LuciServer(plugin_without_daemon, tmp_path, "0" * 32) as server:
        browser.get(server.url + "/status")
        wait(lambda: badge(browser) == "not_running", 10, "badge Not running")
        assert browser.find_element(By.ID, "vq-badge").text == "Not running"
        browser.find_element(By.ID, "vq-force-on").click()
        note = wait(lambda: browser.find_element(By.ID, "vq-mode-error").text, 5,
                    "the mode error")
        assert note == "Could not switch the mode: the voipqos service is not running"

    fixture = FixtureDaemon()
    sid = login(fixture, PASSWORD)

    def broken(args):
        raise RuntimeError("conntrack table unreadable")

    fixture.rpc.dispatcher.handlers["status"] = broken
    with LuciServer(fixture, tmp_path, sid) as server:
        browser.get(server.url + "/status")
        wait(lambda: badge(browser) == "failed", 10, "badge Error")
        assert browser.find_element(By.ID, "vq-reason").text == (
            "The status call failed: status failed: conntrack table unreadable")
    assert page_errors(browser) == []


@pytest.fixture
def lab():
    with netns.three_hosts(PREFIX) as topo:
        yield topo


@pytest.mark.kernel
def test_views_against_daemon_in_lab(browser, lab, tmp_path):
    confdir, run_dir = tmp_path / "config", tmp_path / "run"
    confdir.mkdir()
    (confdir / "network").write_text("config interface 'lan'\nconfig interface 'wan'\n")
    write_config(confdir / "voipqos", interface=netns.ROUTER_WAN_DEV, poll_interval="1",
                 on_polls="2", off_hold="3", min_on="0", run_dir=str(run_dir),
                 rpc_listen=f"unix:{run_dir}/rpc.sock", log_level="debug")
    log = (tmp_path / "daemon.log").open("w")
    lab.popen("router", [sys.executable, "-m", "voipqos.cli", "run", "--foreground",
                         "--config", str(confdir / "voipqos")], stderr=log)
    secret = wait(lambda: (run_dir / "rpc.secret").read_text().strip(), 15, "the rpc secret")
    upstream = unix_upstream(str(run_dir / "rpc.sock"))
    sid = wait(lambda: login(upstream, str(secret)), 15, "session.login on the daemon")

    def start_call() -> None:
        gen = [sys.executable, "-m", "voipqos.lab.udpgen"]
        lab.popen("wan", [*gen, "--bind", f"{netns.WAN_HOST4}:20000", "--answer",
                          "--pps", "50", "--size", "160", "--duration", "22"])
        time.sleep(0.3)
        lab.popen("lan", [*gen, "--to", f"{netns.WAN_HOST4}:20000", "--pps", "50",
                          "--size", "160", "--duration", "20"])

    shots = Path(os.environ.get("VOIPQOS_SCREENSHOTS", tmp_path))
    with LuciServer(upstream, confdir, sid) as server:
        check_status_page(browser, server, start_call, lambda: None, shots, 10, 30)
        check_settings_page(browser, server, confdir, shots)
