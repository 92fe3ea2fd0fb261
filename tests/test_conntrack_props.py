"""Property tests: whatever text the parser gets, it never raises, every non-blank line is
accounted for exactly once, and what it does return is sane."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from voipqos.conntrack import Snapshot, parse

DATA = Path(__file__).parent / "data" / "conntrack"
REAL = [line for name in ("acct-on.txt", "acct-off.txt")
        for line in (DATA / name).read_text().splitlines()]
ALPHABET = "0123456789abcdefipvudtcpsrcdt=.: []ASUREDNPLIOFHW_-\t\r\n"


def check(s: Snapshot) -> None:
    assert s.lines == s.parsed + s.skipped + s.malformed
    assert min(s.lines, s.parsed, s.skipped, s.malformed) >= 0
    assert len(s.entries) <= s.parsed
    for key, e in s.entries.items():
        assert key == e.key and e.proto in ("udp", "tcp") and e.family in (4, 6)
        assert e.timeout >= 0 and 0 <= e.mark < 2**32 and 0 <= e.zone < 2**16
        for t in (e.orig, e.reply):
            assert 0 <= t.sport < 2**16 and 0 <= t.dport < 2**16
        counters = (e.orig_packets, e.orig_bytes, e.reply_packets, e.reply_bytes)
        assert all(c is None for c in counters) or all(c >= 0 for c in counters)


@given(st.lists(st.text(alphabet=ALPHABET, max_size=300), max_size=20))
def test_random_lines_never_raise(lines):
    check(parse(lines))


@given(st.lists(st.text(max_size=200), max_size=10))
def test_random_unicode_never_raises(lines):
    check(parse(lines))


@st.composite
def mutated(draw) -> str:
    """A real kernel line with a few characters replaced, inserted, deleted or cut."""
    line = draw(st.sampled_from(REAL))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(("replace", "insert", "delete", "cut")))
        ch = draw(st.sampled_from(ALPHABET + "-+_é٣"))
        if op == "replace":
            line = line[:i] + ch + line[i + 1:]
        elif op == "insert":
            line = line[:i] + ch + line[i:]
        elif op == "delete":
            line = line[:i] + line[i + 1:]
        else:
            line = line[:i]
    return line


@given(st.lists(st.one_of(mutated(), st.sampled_from(REAL)), max_size=30),
       st.lists(st.integers(0, 65535), max_size=3))
def test_mutated_real_lines_never_raise(lines, sip_ports):
    check(parse(lines, sip_ports=sip_ports))


@given(st.lists(st.sampled_from(REAL), max_size=30))
def test_real_lines_are_never_malformed(lines):
    s = parse(lines)
    check(s)
    assert s.malformed == 0 and s.lines == len(lines)
