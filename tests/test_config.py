"""UCI syntax and the config schema: every bad value gives one line naming section.option."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipqos import config
from voipqos.uci import MAX_FILE, Section, UciSyntaxError, format_uci, parse_uci, quote

SHIPPED = Path(__file__).parents[1] / "files/etc/config/voipqos"
UCI_CASES = Path(__file__).parent / "data/uci/cases"
# where we refuse on purpose what libuci takes: values that are not UTF-8, NUL bytes
# (libuci's fgets/strlen cut the line there; its error then names another line)
REFUSED_ON_PURPOSE = {"latin1_value": "2: not UTF-8 text", "nul_in_value": "2: NUL byte",
                      "binary_garbage": "2: NUL byte"}


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
    ("config voipqos 'main'\n\toption a 'b' 'c'", "<config>:2"),
])
def test_uci_errors_name_the_line(text, where):
    with pytest.raises(UciSyntaxError, match=where):
        parse_uci(text)


def uci_show(sections: list[Section], package: str = "voipqos") -> str:
    """Our sections as `uci show PACKAGE` prints them."""
    lines = []
    for sec in sections:
        lines.append(f"{package}.{sec.name}={sec.type}")
        for key, value in sec.options.items():
            shown = " ".join(map(quote, value)) if isinstance(value, list) else quote(value)
            lines.append(f"{package}.{sec.name}.{key}={shown}")
    return "".join(line + "\n" for line in lines)


@pytest.mark.parametrize("case", sorted(p.stem for p in UCI_CASES.glob("*.conf")))
def test_reads_files_as_the_real_uci_does(case):
    """Replays what openwrt/uci's `uci show` made of each file (tests/data/uci/record.py)."""
    data = (UCI_CASES / f"{case}.conf").read_bytes()
    want = (UCI_CASES / f"{case}.show").read_bytes()
    if case in REFUSED_ON_PURPOSE:
        with pytest.raises(UciSyntaxError, match=f"^f:{REFUSED_ON_PURPOSE[case]}"):
            parse_uci(data, "f")
    elif want.startswith(b"ERROR line "):
        line, reason = want[11:].decode().strip().split(": ", 1)
        with pytest.raises(UciSyntaxError) as exc:
            parse_uci(data, "f")
        assert str(exc.value) == f"f:{line}: {reason}"
    else:
        assert uci_show(parse_uci(data, "f")).encode() == want


def test_random_files_read_as_the_real_uci_does():
    """400 seeded random files of tricky syntax and what `uci show` made of each
    (tests/data/uci/record_random.py): same sections and values, or an error on the
    same line, save for values that are not UTF-8 (refused on purpose) and the last
    line of a file without a final newline, which libuci does not count (we name it)."""
    cases = json.loads((UCI_CASES.parent / "random.json").read_text())
    mismatches = []
    for i, case in enumerate(cases):
        data = base64.b64decode(case["conf"])
        try:
            got = uci_show(parse_uci(data, "f"))
        except UciSyntaxError as exc:
            line, reason = str(exc)[2:].split(": ", 1)
            got = f"ERROR line {line}: {reason}\n"
        want = case["show"]
        if not data.endswith(b"\n") and want.startswith("ERROR line "):
            line, rest = want[11:].split(":", 1)
            if got.startswith(f"ERROR line {int(line) + 1}:"):
                want = f"ERROR line {int(line) + 1}:{rest}"
        if "not UTF-8" not in got and got.encode() != want.encode("latin-1"):
            mismatches.append((i, data, case["show"], got))
    assert not mismatches[:3], f"{len(mismatches)} of {len(cases)} differ"


names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
set_values = values.filter(bool)  # an empty `option` value changes nothing in libuci


@given(st.dictionaries(names, st.tuples(names, st.dictionaries(
    names, st.one_of(set_values, st.lists(values, min_size=1, max_size=3)), max_size=4)),
    max_size=4))
def test_format_then_parse_round_trips(raw):
    """Sections have unique names here: same-named ones merge on reading."""
    secs = [Section(t, n, opts) for n, (t, opts) in raw.items()]
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


# -- issues 14 and 16: the config as libuci reads it, bounded, every failure one line ----

def load_error(path) -> str:
    with pytest.raises(config.ConfigError) as exc:
        config.load(path)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_same_named_sections_merge_later_options_override(tmp_path):
    conf = tmp_path / "voipqos"
    conf.write_text("config voipqos 'main'\n\toption upload '10000'\n\toption download '7'\n"
                    "config voipqos 'main'\n\toption upload '20000'\n")
    cfg = config.load(conf)
    assert (cfg.upload, cfg.download) == (20000, 7)  # what `uci show` and LuCI show


def test_same_name_other_type_is_refused(tmp_path):
    conf = tmp_path / "voipqos"
    conf.write_text("config voipqos 'main'\nconfig interface 'main'\n")
    assert load_error(conf) == (f"{conf}:2: section of different type overwrites prior "
                                "section with same name")


@pytest.mark.parametrize("value", ["１２３４５", "١٢", "5²", "1e3", " 5"])
def test_numbers_are_ascii_digits_only(value):
    with pytest.raises(config.ConfigError, match=r"main\.upload: .* is not allowed"):
        config.from_options({"upload": value})


@pytest.mark.parametrize("data, line", [
    (b"# caf\xe9\nconfig voipqos 'main'\n\toption interface 'caf\xe9'\n", 3),
    (b"config voipqos 'main'\n\x89PNG\r\n\x1a\n\x00\x00\xff", 4),
])
def test_bytes_that_are_not_utf8_are_one_line_naming_the_line(tmp_path, data, line):
    conf = tmp_path / "voipqos"
    conf.write_bytes(data)
    assert load_error(conf).startswith(f"{conf}:{line}: ")


def test_a_latin1_comment_is_fine_as_for_uci(tmp_path):
    conf = tmp_path / "voipqos"
    conf.write_bytes(b"# r\xe9glages\nconfig voipqos 'main' # caf\xe9\n")
    assert config.load(conf) == config.defaults()


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a plain open() would block forever
    assert load_error(fifo) == f"{fifo}: cannot read config: not a regular file"
    assert load_error(tmp_path).endswith("cannot read config: Is a directory")
    assert "No such file" in load_error(tmp_path / "missing")


def test_size_limit(tmp_path):
    conf = tmp_path / "voipqos"
    conf.write_bytes(b"config voipqos 'main'\n" + b"#" * MAX_FILE)
    assert load_error(conf) == f"{conf}: cannot read config: larger than {MAX_FILE} bytes"


def test_a_huge_value_is_quoted_by_a_short_prefix(tmp_path):
    conf = tmp_path / "voipqos"
    conf.write_text("config voipqos 'main'\n\toption upload '" + "9" * 60_000 + "'\n")
    message = load_error(conf)
    assert message == "main.upload: '9999999999999999999999999999999999999999'... " \
                      "(60000 characters) is not allowed; expected a whole number from " \
                      "0 to 10000000"
