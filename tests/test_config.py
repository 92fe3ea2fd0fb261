"""UCI syntax and the config schema: every bad value gives one line naming section.option."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipqos import config
from voipqos.uci import Section, UciSyntaxError, format_uci, parse_uci

SHIPPED = Path(__file__).parents[1] / "files/etc/config/voipqos"


def test_shipped_config_equals_defaults():
    assert config.load(SHIPPED) == config.defaults()


def test_shipped_config_names_every_option():
    text = SHIPPED.read_text()
    for opt in config.OPTIONS:
        assert f" {opt.name} " in text, opt.name


def test_uci_syntax():
    text = """
package voipqos
# comment
config voipqos 'main'
\toption interface "eth1"   # trailing comment
\toption upload 20000
\tlist sip_ports '5060'
\tlist sip_ports 5080
config other
\toption x 'it'\\''s'
config other
"""
    secs = parse_uci(text)
    assert [s.name for s in secs] == ["main", "@other[0]", "@other[1]"]
    assert secs[0].options == {"interface": "eth1", "upload": "20000",
                               "sip_ports": ["5060", "5080"]}
    assert secs[1].options["x"] == "it's"


@pytest.mark.parametrize("text, where", [
    ("option a 'b'", "<config>:1"),
    ("config voipqos 'main'\n\toption a 'unterminated", "<config>:2"),
    ("config voipqos 'main'\n\tfoo bar", "<config>:2"),
    ("config voipqos 'main'\n\toption a", "<config>:2"),
])
def test_uci_errors_name_the_line(text, where):
    with pytest.raises(UciSyntaxError, match=where):
        parse_uci(text)


names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


@given(st.lists(st.tuples(names, names, st.dictionaries(
    names, st.one_of(values, st.lists(values, min_size=1, max_size=3)), max_size=4)),
    max_size=4))
def test_format_then_parse_round_trips(raw):
    secs = [Section(t, n, opts) for t, n, opts in raw]
    assert [(s.type, s.name, s.options) for s in parse_uci(format_uci(secs))] == \
           [(s.type, s.name, s.options) for s in secs]


@pytest.mark.parametrize("opts, message", [
    ({"upload": "fast"}, "main.upload: 'fast' is not allowed; expected a whole number"),
    ({"upload": "-5"}, "main.upload: '-5' is not allowed"),
    ({"poll_interval": "0.01"}, "main.poll_interval: '0.01' is not allowed; expected a number "
                                "from 0.2 to 10"),
    ({"backend": "cake"}, "main.backend: 'cake' is not allowed; expected one of htb, sqm"),
    ({"enabled": "maybe"}, "main.enabled: 'maybe' is not allowed; expected a boolean"),
    ({"sip_ports": ["5060", "70000"]}, "main.sip_ports: '70000' is not allowed"),
    ({"rtp_ports": ["20000-10000"]}, "main.rtp_ports: '20000-10000' is not allowed; expected a "
                                     "port 1-65535 or a range LOW-HIGH"),
    ({"interface": "eth 0"}, "main.interface: 'eth 0' is not allowed"),
    ({"rpc_listen": "0.0.0.0:80"}, "main.rpc_listen: '0.0.0.0:80' is not allowed; expected "
                                   "unix:/PATH"),
    ({"min_pps": "50", "max_pps": "20"}, "main.max_pps: 20.0 is not allowed; expected at least "
                                         "min_pps"),
    ({"voice_rate": "20000", "upload": "1000"}, "main.voice_rate: 20000 is not allowed"),
    ({"upload": "0"}, "main.upload: 0 is not allowed; expected a rate in kbit/s above 0"),
    ({"uplaod": "1"}, "main.uplaod: unknown option"),
    ({"upload": ["1", "2"]}, "main.upload: given as a list"),
])
def test_bad_values_give_one_line_naming_the_option(opts, message):
    with pytest.raises(config.ConfigError) as exc:
        config.from_options(opts)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_sqm_backend_needs_no_upload_rate():
    cfg = config.from_options({"backend": "sqm", "upload": "0"})
    assert cfg.upload == 0


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.load(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("config voipqos 'other'\n")
    with pytest.raises(config.ConfigError, match="no `config voipqos 'main'` section"):
        config.load(bad)


def test_list_values_parse():
    cfg = config.from_options({"voice_ports": ["10000-10100", "5004"], "sip_ports": "5060 5080"})
    assert cfg.voice_ports == ((10000, 10100), (5004, 5004))
    assert cfg.sip_ports == (5060, 5080)
    assert config.to_dict(cfg)["voice_ports"] == ["10000-10100", "5004-5004"]


def test_readme_documents_every_option():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for opt in config.OPTIONS:
        assert f"| `{opt.name}`" in readme, opt.name
