"""The settings view on the real LuCI client (luci.js, form.js, ui.js, validation.js,
network.js, uci.js) against the real uhttpd + rpcd, in headless Chromium: the WAN field
keeps a device name it does not list, takes a typed device name, refuses what
or(uciname,netdevname) refuses, and Save writes only what changed.

Not collected by pytest (CI has no upstream build): run as root after building the
upstream stack (tests/realstack, docs/real-stack.md):

    python -m tests.check_settings_real_luci
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from tests.realstack import stack as rs

ROOT = Path(__file__).resolve().parents[1]
ACL = ROOT / "luci-app/root/usr/share/rpcd/acl.d/luci-app-voipqos.json"
# what luci-base's own ACL grants every LuCI page: reading the network config
NETWORK_ACL = {"luci-network-read": {"description": "network config for network.js",
                                     "read": {"uci": ["network"]}}}


def changes(st: rs.Stack, sid: str) -> dict:
    return st.post({"jsonrpc": "2.0", "id": 1, "method": "call", "params": [
        sid, "uci", "changes", {"config": "voipqos"}]})["result"][1].get("changes", [])


def main() -> None:
    rs.enter("tests.check_settings_real_luci")
    with rs.Stack() as st:
        share = rs.PREFIX / "share/rpcd/acl.d"
        (share / ACL.name).write_text(ACL.read_text())
        (share / "luci-network.json").write_text(json.dumps(NETWORK_ACL))
        subprocess.run(["pkill", "-HUP", "-x", "rpcd"], check=False)  # re-read the ACLs
        Path("/etc/config/network").write_text(
            "config interface 'lan'\n\toption device 'br-lan'\n\n"
            "config interface 'wan'\n\toption device 'eth0.2'\n\toption proto 'pppoe'\n")
        # a device set from the CLI that no list shows
        Path("/etc/config/voipqos").write_text(
            "config voipqos 'main'\n\toption interface 'pppoe-wan'\n\toption upload '10000'\n")
        sid = rs.wait(st.login, 10, "a login after the ACL reload")
        opts = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu"):
            opts.add_argument(flag)
        drv = webdriver.Chrome(options=opts)
        results: dict[str, object] = {}
        try:
            drv.get(st.page("voipqos/settings", sid))
            rs.wait(lambda: drv.find_elements(By.ID, "widget.cbid.voipqos.main.interface")
                    or drv.find_elements(By.ID, "cbid.voipqos.main.interface"), 15,
                    "the WAN field")
            def box():  # found afresh: a save renders the form again
                return drv.find_element(By.ID, "cbid.voipqos.main.interface")

            def value() -> str:
                return drv.execute_script(
                    "return L.dom.callClassMethod(arguments[0], 'getValue')", box())

            results["shown"] = value()
            results["offered"] = [li.get_attribute("data-value") for li in
                                  box().find_elements(By.CSS_SELECTOR, "li[data-value]")]

            def save() -> list:
                drv.execute_script("window.__saved = null; L.require('ui').then(ui => "
                                   "ui.instantiateView && document.querySelector('.cbi-map') "
                                   "&& L.dom.findClassInstance(document.querySelector("
                                   "'.cbi-map')).save().then(() => window.__saved = 'ok', "
                                   "e => window.__saved = String(e)))")
                rs.wait(lambda: drv.execute_script("return window.__saved"), 10, "save")
                return [drv.execute_script("return window.__saved"), changes(st, sid)]

            # an unrelated edit: the unlisted device must stay as it is
            up = drv.find_element(By.ID, "widget.cbid.voipqos.main.upload")
            up.clear()
            up.send_keys("12000")
            results["save_other_field"] = save()

            def type_in(text: str) -> None:
                rs.wait(lambda: box().is_displayed(), 10, "the form after saving")
                box().click()
                inp = box().find_element(By.CSS_SELECTOR, "input.create-item-input")
                inp.send_keys(text, Keys.ENTER)

            type_in("eth0.100")
            results["typed_device"] = value()
            results["save_typed_device"] = save()
            type_in("eth0:1")
            results["typed_bad"] = value()
            results["bad_is_flagged"] = bool(box().find_elements(
                By.CSS_SELECTOR, ".cbi-input-invalid")) or value() != "eth0:1"
            results["console"] = [e["message"] for e in drv.get_log("browser")
                                  if e["level"] == "SEVERE"]
        finally:
            drv.quit()
        json.dump(results, sys.stdout, indent=1)
        sys.stdout.write("\n")
        ok = (results["shown"] == "pppoe-wan"
              and results["save_other_field"][0] == "ok"
              and not any(c[2] == "interface" for c in results["save_other_field"][1]
                          if len(c) > 2)
              and results["typed_device"] == "eth0.100"
              and ["set", "main", "interface", "eth0.100"] in results["save_typed_device"][1])
        print("OK" if ok else "FAILED", file=sys.stderr)
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
