"""luci-app-voipqos without a browser: syntax, the logic module's node tests, menu/ACL JSON,
the three-way method check (views, ACL, api.SPECS), the .pot, and the settings fields
against the daemon's option table (config.OPTIONS).

Regenerate the .pot after changing strings: `python tests/test_luci_static.py > \
luci-app/po/templates/voipqos.pot`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from voipqos import api, config

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "luci-app"
RESOURCES = APP / "htdocs/luci-static/resources"
VIEWS = sorted((RESOURCES / "view/voipqos").glob("*.js"))
MENU = APP / "root/usr/share/luci/menu.d/luci-app-voipqos.json"
ACL = APP / "root/usr/share/rpcd/acl.d/luci-app-voipqos.json"
POT = APP / "po/templates/voipqos.pot"
LUCI_TESTS = ROOT / "tests/luci"

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")

JS_STRING = r"""'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)\""""
TRANSLATE = re.compile(r"(?<![\w$.])_\(\s*(?:" + JS_STRING + r")\s*\)")
DECLARE = re.compile(r"rpc\.declare\(\{(.*?)\}\)", re.S)


def js_unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def translatable() -> dict[str, list[str]]:
    """msgid -> places, from _('...') in the app's JS and the menu titles (as LuCI's
    i18n-scan does)."""
    found: dict[str, list[str]] = {}
    for path in sorted(APP.rglob("*.js")):
        text = path.read_text()
        for m in TRANSLATE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            msgid = js_unescape(m.group(1) if m.group(1) is not None else m.group(2))
            found.setdefault(msgid, []).append(f"{path.relative_to(APP)}:{line}")
    for key, entry in json.loads(MENU.read_text()).items():
        found.setdefault(entry["title"], []).append(f"{MENU.relative_to(APP)}:{key}")
    return found


def pot_text() -> str:
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    out = ['msgid ""', 'msgstr "Content-Type: text/plain; charset=UTF-8"', ""]
    for msgid, places in sorted(translatable().items()):
        out += [f"#: {' '.join(places)}", f"msgid {q(msgid)}", 'msgstr ""', ""]
    return "\n".join(out)


def pot_msgids() -> set[str]:
    ids = set()
    for m in re.finditer(r'^msgid "((?:[^"\\]|\\.)*)"', POT.read_text(), re.M):
        ids.add(re.sub(r"\\(.)", r"\1", m.group(1)))
    return ids - {""}


def declared_methods() -> dict[str, tuple[str, list[str]]]:
    """method -> (object, params) for every rpc.declare in the views."""
    out = {}
    for view in VIEWS:
        for m in DECLARE.finditer(view.read_text()):
            body = m.group(1)
            obj = re.search(r"object:\s*'([^']+)'", body).group(1)
            method = re.search(r"method:\s*'([^']+)'", body).group(1)
            params = re.findall(r"'([^']+)'", (re.search(r"params:\s*\[([^\]]*)\]", body)
                                               or re.match("()", "")).group(1))
            out[method] = (obj, params)
    return out


@needs_node
@pytest.mark.parametrize("path", sorted(APP.rglob("*.js")) + sorted(LUCI_TESTS.rglob("*.js"))
                         + sorted(LUCI_TESTS.glob("*.mjs")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_js_syntax(path):
    res = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@needs_node
def test_logic_module_node_tests():
    files = [str(p) for p in sorted(LUCI_TESTS.glob("*.test.mjs"))]
    res = subprocess.run([NODE, "--test", *files], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert re.search(r"^# fail 0$", res.stdout, re.M) and re.search(r"^# pass [1-9]", res.stdout,
                                                                     re.M)


def test_menu_json():
    menu = json.loads(MENU.read_text())
    acl_names = set(json.loads(ACL.read_text()))
    root = menu.pop("admin/services/voipqos")
    assert root["action"] == {"type": "firstchild"} and root["title"] == "VoIP QoS"
    assert set(root["depends"]["acl"]) <= acl_names
    assert root["depends"]["uci"] == {config.SECTION_TYPE: True}
    assert sorted(menu) == ["admin/services/voipqos/settings", "admin/services/voipqos/status"]
    for key, entry in menu.items():
        assert isinstance(entry["title"], str) and isinstance(entry["order"], int)
        assert entry["action"]["type"] == "view"
        view = RESOURCES / "view" / (entry["action"]["path"] + ".js")
        assert view.is_file(), f"{key}: no view file {view}"
    assert {RESOURCES / "view" / (e["action"]["path"] + ".js") for e in menu.values()} \
        == set(VIEWS)


def test_acl_json_shape():
    acl = json.loads(ACL.read_text())
    assert list(acl) == ["luci-app-voipqos"]
    grant = acl["luci-app-voipqos"]
    assert isinstance(grant["description"], str)
    assert set(grant) == {"description", "read", "write"}
    for kind in ("read", "write"):
        assert set(grant[kind]) == {"ubus", "uci"}
        assert grant[kind]["uci"] == [config.SECTION_TYPE]
        assert set(grant[kind]["ubus"]) == {api.OBJECT}
        assert all(isinstance(m, str) for m in grant[kind]["ubus"][api.OBJECT])


def test_views_acl_and_method_table_agree():
    grant = json.loads(ACL.read_text())["luci-app-voipqos"]
    read = grant["read"]["ubus"][api.OBJECT]
    write = grant["write"]["ubus"][api.OBJECT]
    assert sorted(read) == api.READ_METHODS
    assert sorted(write) == api.WRITE_METHODS
    declared = declared_methods()
    assert {"status", "set_mode"} <= set(declared)
    for method, (obj, params) in declared.items():
        assert obj == api.OBJECT, f"{method}: object {obj}"
        assert method in api.SPECS, f"views call {method}, not in api.SPECS"
        assert params == list(api.SPECS[method].args), f"{method}: params {params}"
        assert method in (write if api.SPECS[method].write else read)


def test_pot_has_every_translatable_string():
    want = set(translatable())
    have = pot_msgids()
    assert not want - have, f"missing from {POT.name} (regenerate it): {sorted(want - have)}"
    assert not have - want, f"stale in {POT.name}: {sorted(have - want)}"


@pytest.fixture(scope="module")
def settings_form() -> dict:
    if NODE is None:
        pytest.skip("node is not installed")
    res = subprocess.run([NODE, str(LUCI_TESTS / "dump_settings.mjs")], capture_output=True,
                         text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_settings_section_and_tabs(settings_form):
    assert settings_form["config"] == "voipqos"
    [section] = settings_form["sections"]
    assert (section["name"], section["type"]) == (config.SECTION, config.SECTION_TYPE)
    assert section["tabs"] == ["general", "detection", "classifier", "advanced"]


def test_settings_fields_match_config_options(settings_form):
    fields = settings_form["sections"][0]["options"]
    assert [f["name"] for f in fields] == [o.name for o in config.OPTIONS]
    for f in fields:
        opt = config.OPTION_BY_NAME[f["name"]]
        where = f"settings field {opt.name}"
        assert f["tab"] == opt.tab, where
        assert f["description"] == opt.doc, where
        assert f["title"], where
        if opt.is_list:
            assert f["widget"] == "DynamicList" and f["default"] == list(opt.default), where
        else:
            assert f["default"] == opt.default, where
        if opt.datatype == "bool":
            # LuCI has no `bool` datatype; a Flag that keeps '0' is the boolean field
            assert f["widget"] == "Flag" and f["datatype"] is None and f["rmempty"] is False
        elif f["widget"] == "ListValue":
            assert f["datatype"] is None, where  # its choices are the check (below)
        else:
            assert f["widget"] != "Flag" and f["datatype"] == opt.datatype, where
        for choice in f["choices"]:
            opt.parse(choice)  # every offered choice is valid for the daemon
        if f["widget"] == "ListValue":
            assert opt.default in f["choices"], where


def test_settings_choice_lists_are_complete(settings_form):
    fields = {f["name"]: f for f in settings_form["sections"][0]["options"]}
    for f in fields.values():
        if f["widget"] != "ListValue":
            continue
        opt = config.OPTION_BY_NAME[f["name"]]
        for word in ("htb", "sqm", "debug", "info", "warning", "error", "proc", "netlink",
                     "cake", "none", "auto"):
            accepted = True
            try:
                opt.parse(word)
            except ValueError:
                accepted = False
            assert accepted == (word in f["choices"]), f"{f['name']}: {word}"


def test_settings_wan_field_takes_networks_and_devices(settings_form):
    """Not widgets.NetworkSelect (logical networks only, uciname, drops a device name set
    from the CLI): a Value suggesting networks and devices, which LuCI renders as a
    combobox that keeps a value it does not list."""
    fields = {f["name"]: f for f in settings_form["sections"][0]["options"]}
    wan = fields["interface"]
    assert wan["widget"] == "Value" and wan["datatype"] == "or(uciname,netdevname)"
    assert wan["choices"] == ["lan", "wan", "wan6", "br-lan", "eth0", "eth0.2", "pppoe-wan"]
    assert fields["sqm_section"]["depends"] == [["backend", "sqm"]]


def test_wan_datatype_and_daemon_agree_as_recorded_from_real_luci():
    """tests/data/luci_datatypes.json: what LuCI's own validation.js answered for each
    value (tests/record_luci_datatypes.mjs); the daemon takes exactly those."""
    rec = json.loads((ROOT / "tests/data/luci_datatypes.json").read_text())
    opt = config.OPTION_BY_NAME["interface"]
    assert rec["datatype"] == opt.datatype
    for value in ("wan", "wan6", "@wan", "pppoe-wan", "eth0.2", "eth1"):
        assert rec["verdicts"][value], value
    for value, luci_ok in rec["verdicts"].items():
        try:
            opt.parse(value)
            daemon_ok = True
        except ValueError:
            daemon_ok = False
        assert daemon_ok == luci_ok, repr(value)


def test_settings_view_is_written_in_luci_idiom():
    """One `o = s.taboption(...)` per option with its own settings, as luci-app-sqm:
    no field tables, no patching of s.children."""
    text = (RESOURCES / "view/voipqos/settings.js").read_text()
    assert "children" not in text and "FIELDS" not in text
    assert text.count("o = s.taboption(") == len(config.OPTIONS)


if __name__ == "__main__":
    sys.stdout.write(pot_text())
