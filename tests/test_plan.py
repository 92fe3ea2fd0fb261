"""plan.py: the desired tree, the u32 fallback rules and the diff, with plain values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voipqos import config
from voipqos import plan as P
from voipqos.profile import ProfileError

NO_FQ = P.Features(fq_codel=False)


def cfg(**opts: str | list[str]) -> config.Config:
    return config.from_options(opts)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_port_blocks_cover_exactly_the_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    blocks = P.port_blocks(lo, hi)
    covered = []
    for value, mask in blocks:
        assert value & ~mask & 0xFFFF == 0  # aligned
        size = (~mask & 0xFFFF) + 1
        covered.extend(range(value, value + size))
    assert covered == list(range(lo, hi + 1))  # in order, no gaps, no overlaps
    assert len(blocks) <= 32


def test_port_blocks_examples() -> None:
    assert P.port_blocks(5060, 5060) == [(5060, 0xFFFF)]
    assert P.port_blocks(0, 0xFFFF) == [(0, 0)]
    assert P.port_blocks(16384, 32767) == [(16384, 0xC000)]


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-_", min_size=1, max_size=15))
def test_ifb_name_fits_and_is_ours(dev: str) -> None:
    name = P.ifb_name(dev)
    assert len(name) <= P.IFNAMSIZ and name.startswith(P.IFB_PREFIX)


def test_ifb_name_long_devices_stay_distinct() -> None:
    assert P.ifb_name("wan0") == "vqi-wan0"
    assert P.ifb_name("pppoe-wan-a1234") != P.ifb_name("pppoe-wan-b1234")


rates = st.integers(1, 10_000_000)


@given(rates, st.integers(0, 10_000_000), st.integers(8, 1_000_000), st.booleans(),
       st.sampled_from(["bpf", "u32"]))
def test_tree_invariants(up: int, down: int, voice: int, fq: bool, clf: str) -> None:
    voice = min(voice, max(up, 8))
    up = max(up, voice)
    c = cfg(upload=str(up), download=str(down), voice_rate=str(voice),
            voice_ports=["10000-20000"], trust_ef="1")
    p = P.build(c, "wan0", P.Features(fq_codel=fq), clf, [(17, "10.0.0.1", "10.0.0.2", 1, 2)])
    classes = p.of(P.Class)
    handles = {(k.dev, k.handle) for k in classes}
    for k in classes:
        assert k.handle & 0xFFFF != 0  # never X:0 (HTB "direct")
        assert k.rate <= k.ceil
    for q in p.of(P.Qdisc):
        if q.kind == "htb":
            default = dict(q.opts)["default"]
            leaf = (q.dev, P.handle(default))
            assert leaf in handles  # default minor exists ...
            assert not any((k.dev, k.parent) == leaf for k in classes)  # ... and is a leaf
            assert any(x.parent == P.handle(default) for x in p.of(P.Qdisc) if x.dev == q.dev)
    devs = {q.dev for q in p.of(P.Qdisc) if q.kind == "htb"}
    assert devs == ({"wan0", P.ifb_name("wan0")} if down else {"wan0"})
    assert all(f.flowid == P.VOICE_CLASSID for f in p.of(P.FilterGroup) if not f.redirect)
    assert bool(p.of(P.FilterGroup)) == (clf == "u32" or down > 0 or not fq)  # ACKs: pfifo
    keys = [o.key for o in p.objects]
    assert len(keys) == len(set(keys))
    assert P.diff(p, p) == []


def test_voice_class_is_strict_priority() -> None:
    p = P.build(cfg(upload="10000", download="0", voice_rate="1000"), "wan0", P.Features())
    by = {k.handle: k for k in p.of(P.Class)}
    voice, default = by[P.handle(P.VOICE)], by[P.handle(P.DEFAULT)]
    assert (voice.prio, voice.rate, voice.ceil) == (0, 1000, 10000)
    assert (default.prio, default.rate, default.ceil) == (1, 9000, 10000)
    assert {q.kind for q in p.of(P.Qdisc)} == {"htb", "fq_codel"}
    assert p.alerts == ()


def test_pfifo_fallback_is_announced() -> None:
    p = P.build(cfg(), "wan0", NO_FQ)
    assert {q.kind for q in p.of(P.Qdisc) if q.parent != P.TC_H_ROOT} >= {"pfifo"}
    assert [a.code for a in p.alerts] == ["leaf_fallback"]


def test_download_zero_has_no_ingress_part() -> None:
    p = P.build(cfg(download="0"), "wan0", P.Features())
    assert not p.of(P.Ifb) and all(o.dev == "wan0" for o in p.of(P.Qdisc))


def test_missing_kernel_parts_refuse_in_one_line() -> None:
    with pytest.raises(ProfileError, match="kernel lacks ifb"):
        P.build(cfg(), "wan0", P.Features(ifb=False))
    P.build(cfg(download="0"), "wan0", P.Features(ifb=False))  # not needed without download


def test_u32_rules_for_ports_ef_and_flows() -> None:
    rules = P.static_rules([(5060, 5061)], True, v6=False)
    udp = P.Match(17 << 16, 0xFF0000, 8)
    assert (udp, P.Match(5060 << 16, 0xFFFE << 16, 20)) in rules  # sport
    assert (udp, P.Match(5060, 0xFFFE, 20)) in rules  # dport
    assert (P.EF4,) in rules and P.EF4.value >> 16 == 0xB8  # TOS byte 0xb8 = DSCP 46
    flows = P.flow_rules([(17, "192.0.2.1", "198.51.100.2", 4000, 5000),
                          (17, "2001:db8::1", "2001:db8::2", 1, 2)], v6=False)
    assert flows == ((udp, P.Match(0xC0000201, 0xFFFFFFFF, 12),
                      P.Match(0xC6336402, 0xFFFFFFFF, 16),
                      P.Match((4000 << 16) | 5000, 0xFFFFFFFF, 20)),)
    v6 = P.flow_rules([(17, "2001:db8::1", "2001:db8::2", 1, 2)], v6=True)
    assert len(v6) == 1 and len(v6[0]) == 10


def test_rate_change_is_a_change_not_a_teardown() -> None:
    old = P.build(cfg(upload="10000"), "wan0", NO_FQ)
    new = P.build(cfg(upload="20000"), "wan0", NO_FQ)
    steps = P.diff(new, old)
    assert {s.op for s in steps} == {"change"}
    # classes change rate; pfifo fallback leaves change limit (sized by the rate)
    assert all(s.old is not None for s in steps)
    assert {type(s.obj) for s in steps} == {P.Class, P.Qdisc}
    assert all(s.obj.kind == "pfifo" for s in steps if isinstance(s.obj, P.Qdisc))


def test_new_flows_make_a_new_group_before_the_old_goes() -> None:
    c = cfg(download="0")
    a = P.build(c, "wan0", NO_FQ, "u32", [(17, "10.0.0.1", "10.0.0.2", 1, 2)])
    b = P.build(c, "wan0", NO_FQ, "u32", [(17, "10.0.0.1", "10.0.0.2", 1, 3)])
    steps = P.diff(b, a)
    assert [s.op for s in steps] == ["add", "delete"]
    assert all(isinstance(s.obj, P.FilterGroup) for s in steps)


def test_remove_deletes_roots_and_ifb_only() -> None:
    have = P.build(cfg(), "wan0", NO_FQ, "u32", [(17, "10.0.0.1", "10.0.0.2", 1, 2)])
    steps = P.diff(P.Plan(), have)
    assert all(s.op == "delete" for s in steps)
    kinds = [(type(s.obj).__name__, getattr(s.obj, "kind", "")) for s in steps]
    assert kinds == [("FilterGroup", ""), ("Qdisc", "htb"), ("Qdisc", "clsact"), ("Ifb", "")]


def test_protected_clsact_is_kept() -> None:
    have = P.build(cfg(), "wan0", NO_FQ)
    clsact = next(q for q in have.of(P.Qdisc) if q.kind == "clsact")
    observed = P.Plan(have.objects, protected=frozenset({clsact.key}))
    assert clsact not in [s.obj for s in P.diff(P.Plan(), observed)]


@given(st.lists(st.sampled_from(["10000", "20000"]), min_size=1, max_size=3),
       st.sampled_from(["0", "30000"]))
def test_diff_converges(uploads: list[str], down: str) -> None:
    """Applying diff(want, have) to `have` (as a dict of keys) yields `want`'s keys."""
    have = P.Plan()
    for up in uploads:
        want = P.build(cfg(upload=up, download=down), "wan0", NO_FQ)
        state = {o.key: o for o in have.objects}
        for s in P.diff(want, have):
            if s.op == "delete":
                dev = getattr(s.obj, "dev", getattr(s.obj, "name", ""))
                state = {k: o for k, o in state.items() if k != s.obj.key and not (
                    isinstance(s.obj, P.Ifb) and getattr(o, "dev", None) == dev)}
            else:
                state[s.obj.key] = s.obj
        assert set(state) == {o.key for o in want.objects}
        have = P.Plan(tuple(state.values()))


@given(st.integers(min_value=1, max_value=10_000_000))
def test_pfifo_fallback_holds_about_50ms_at_the_rate(rate):
    limit = P.pfifo_limit(rate)
    assert limit >= P.MIN_PFIFO_LIMIT
    if limit > P.MIN_PFIFO_LIMIT:
        seconds = limit * P.MTU_BYTES * 8 / (rate * 1000)
        assert 0.045 <= seconds <= 0.055


def test_pfifo_fallback_puts_pure_acks_in_voice_and_keeps_the_download_leaf_short() -> None:
    p = P.build(cfg(upload="10000", download="18000"), "wan0", NO_FQ)
    ifb = P.ifb_name("wan0")
    acks = [f for f in p.of(P.FilterGroup) if not f.redirect]
    assert {(f.dev, f.protocol) for f in acks} == {
        (d, proto) for d in ("wan0", ifb) for proto in (P.ETH_P_IP, P.ETH_P_IPV6)}
    assert all(f.flowid == P.VOICE_CLASSID and f.rules in (P.ACK4, P.ACK6) for f in acks)
    leaf = {(q.dev, q.parent): dict(q.opts)["limit"] for q in p.of(P.Qdisc) if q.kind == "pfifo"}
    assert leaf[(ifb, P.handle(P.DEFAULT))] == 16  # ~11 ms at 18 Mbit/s
    assert leaf[("wan0", P.handle(P.DEFAULT))] == P.pfifo_limit(10000)  # upload: 50 ms
    with_fq = P.build(cfg(), "wan0", P.Features()).of(P.FilterGroup)
    assert [f.redirect for f in with_fq] == [P.ifb_name("wan0")]  # fq_codel: no ACK rules
