"""End-to-end check on the real stack: the real daemon (`voipqos run`, python-ubus 0.1.3)
behind rpcd's ucode plugin, ubusd, uhttpd, LuCI's real client JS in headless Chromium,
the ubus CLI and `voipqos --router URL`. Prints one line per check; exit 1 on a failure.

    .venv/bin/python -m realstack.check      (as root, PYTHONPATH=tests; docs/real-stack.md)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from realstack import stack

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
    if not ok:
        FAILED.append(name)


def cli(s: stack.Stack) -> None:
    for argv, want in [
        (["call", "voipqos", "status"], "state"),
        (["call", "voipqos", "flows"], "flows"),
        (["call", "voipqos", "flows", '{"all":true}'], "flows"),
        (["call", "voipqos", "set_mode", '{"mode":"on"}'], "forced_on"),
        (["call", "voipqos", "set_mode", '{"mode":"auto","expires":0}'], "auto"),
        (["call", "voipqos", "reload"], "reloaded"),
        (["call", "voipqos", "check"], "features"),
    ]:
        r = s.ubus_run(*argv)
        check("ubus " + " ".join(argv), r.returncode == 0 and want in r.stdout,
              f"exit {r.returncode} {r.stderr.strip()[:80]}")
    r = s.ubus_run("call", "voipqos", "set_mode", '{"mode":"loud"}')
    check("ubus set_mode loud is refused with the daemon's message",
          r.returncode != 0 and "mode must be on, off or auto" in r.stdout)


def router_cli(s: stack.Stack) -> None:
    env = {**os.environ, "VOIPQOS_PASSWORD": stack.PASSWORD,
           "PYTHONPATH": str(stack.ROOT / "src")}
    for cmd, want in ((["status"], "atching"), (["on"], "orced"), (["auto"], "auto"),
                      (["flows", "--all"], "")):
        r = subprocess.run([sys.executable, "-m", "voipqos.cli", *cmd, "--router", stack.URL],
                           capture_output=True, text=True, env=env, timeout=30)
        check("voipqos " + " ".join(cmd) + " --router URL", r.returncode == 0 and want in r.stdout,
              (r.stdout + r.stderr).strip().splitlines()[-1][:100] if r.returncode else "")


def browser():
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="vq-realstack-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1100,1400"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts,
                            service=webdriver.ChromeService("/usr/bin/chromedriver"))


def luci(s: stack.Stack, daemon) -> None:
    from selenium.webdriver.common.by import By

    drv = browser()

    def badge() -> str:
        return drv.find_element(By.ID, "vq-badge").get_attribute("data-state") or ""

    def wait_badge(want: str, timeout: float = 10) -> bool:
        try:
            return bool(stack.wait(lambda: badge() == want, timeout, want))
        except TimeoutError:
            return False

    try:
        drv.get(s.page("voipqos/status", s.login()))
        try:
            state = stack.wait(lambda: badge() in ("watching", "on") and badge(), 20, "state")
        except TimeoutError:
            state = badge()
        check("LuCI status page shows the daemon's state", state in ("watching", "on"),
              state)
        for button, want in (("vq-force-on", "forced_on"), ("vq-force-off", "forced_off"),
                             ("vq-auto", "watching")):
            drv.find_element(By.ID, button).click()
            check(f"LuCI {button} -> {want}", wait_badge(want), badge())
        rows = drv.find_element(By.ID, "vq-transitions").text
        check("LuCI's ui.Table lists the transitions", "Forced off" in rows,
              (rows.splitlines() or [""])[-1][-60:])
        daemon.terminate()
        daemon.wait(10)
        ok = wait_badge("not_running")
        check("LuCI tells 'not running' when the daemon stopped", ok,
              drv.find_element(By.ID, "vq-reason").text)
        drv.find_element(By.ID, "vq-force-on").click()
        try:
            note = stack.wait(lambda: drv.find_element(By.ID, "vq-mode-error").text, 10,
                              "the mode error")
        except TimeoutError:
            note = ""
        check("LuCI Force on while not running shows an error", "not running" in note, note)
        drv.save_screenshot(str(s.logs / "luci-status.png"))
        errors = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
        print("     browser console (SEVERE):", json.dumps([e["message"][:120]
                                                         for e in errors]))
    finally:
        drv.quit()


def main() -> int:
    stack.enter("realstack.check")
    s = stack.Stack().start()
    print("upstream:", json.dumps(stack.upstream_commits()))
    try:
        daemon = s.start_daemon(s.daemon_config())
        cli(s)
        router_cli(s)
        t0 = time.monotonic()
        luci(s, daemon)
        print(f"     LuCI part took {time.monotonic() - t0:.1f} s")
    finally:
        s.stop()
        log = (s.logs / "voipqos.log").read_text()
        check("daemon log has no traceback", "Traceback" not in log)
        check("SIGTERM stops the daemon cleanly with python-ubus's uloop loaded",
              "stopping: removing the profile" in log)
        refusals = [ln for ln in log.splitlines() if "mode must be on, off or auto" in ln]
        check("a refused call is one log line", len(refusals) == 1, f"{len(refusals)} lines")
        print(f"     logs and screenshot in {s.logs}")
    print(f"{len(FAILED)} failed" if FAILED else "all checks passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
