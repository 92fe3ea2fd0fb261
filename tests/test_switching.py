"""The switching rules as plain data: literal scenarios, then properties over any run."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from voipqos.switching import Action, Kind, Switch, SwitchConfig

CFG = SwitchConfig(drain_time=2, drain_rate=50, retry=10)
A = frozenset({(17, "192.168.1.2", "203.0.113.9", 4000, 5000)})
B = A | {(17, "203.0.113.9", "198.51.100.1", 5000, 4000)}


def run(sw: Switch, now: float, wanted: bool, tuples=frozenset(), fail=()) -> list[Action]:
    """Execute like the daemon: in order, stop at the first failure."""
    done = []
    for a in sw.step(now, wanted, tuples):
        ok = a.kind not in fail
        sw.done(a, ok, now)
        done.append(a)
        if not ok:
            break
    return done


def test_switch_on_drains_then_applies_rates_and_sets_flows_once():
    sw = Switch(CFG)
    assert run(sw, 0, True, A) == [Action(Kind.APPLY, 0.5), Action(Kind.FLOWS, flows=A)]
    assert sw.active and sw.next_deadline() == 2
    assert run(sw, 1, True, A) == []
    assert run(sw, 2, True, A) == [Action(Kind.RATES)]
    assert run(sw, 3, True, B) == [Action(Kind.FLOWS, flows=B)]
    assert run(sw, 4, True, B) == [] and sw.next_deadline() is None
    assert run(sw, 5, False, B) == [Action(Kind.REMOVE)]
    assert not sw.active and run(sw, 6, False) == []


def test_what_a_failed_or_lost_profile_left_is_removed_when_off():
    sw = Switch(SwitchConfig(0, 100, 10))
    run(sw, 0, True, fail={Kind.APPLY})
    assert run(sw, 1, False) == [Action(Kind.REMOVE)] and run(sw, 2, False) == []
    run(sw, 3, True)
    sw.lost()
    assert run(sw, 4, False) == [Action(Kind.REMOVE)] and not sw.dirty


def test_failed_apply_waits_for_retry_or_a_kernel_change():
    sw = Switch(SwitchConfig(0, 100, 10))
    assert run(sw, 0, True, A, fail={Kind.APPLY}) == [Action(Kind.APPLY, 1.0)]
    assert not sw.active and sw.next_deadline() == 10
    assert run(sw, 5, True, A) == []
    sw.kick()
    assert run(sw, 6, True, A) == [Action(Kind.APPLY, 1.0), Action(Kind.FLOWS, flows=A)]


def test_failed_flow_update_is_not_recorded_and_retried():
    sw = Switch(SwitchConfig(0, 100, 10))
    run(sw, 0, True, A)
    assert run(sw, 1, True, B, fail={Kind.FLOWS}) == [Action(Kind.FLOWS, flows=B)]
    assert sw.flows == A and sw.failed_flows == B
    assert run(sw, 2, True, B) == []  # the same set: not every poll
    assert run(sw, 3, True, A) == []  # back to what the table holds
    assert run(sw, 4, True, B) == []
    assert run(sw, 11, True, B) == [Action(Kind.FLOWS, flows=B)]
    assert sw.flows == B and sw.failed_flows is None


def test_lost_profile_is_restored_at_once_without_drain():
    sw = Switch(CFG)
    run(sw, 0, True, A)
    run(sw, 2, True, A)
    sw.lost()
    assert not sw.active
    assert run(sw, 3, True, A) == [Action(Kind.APPLY, 1.0), Action(Kind.FLOWS, flows=A)]
    assert sw.next_deadline() is None


def test_failed_remove_keeps_active_and_retries():
    sw = Switch(SwitchConfig(0, 100, 10))
    run(sw, 0, True)
    assert run(sw, 1, False, fail={Kind.REMOVE}) == [Action(Kind.REMOVE)]
    assert sw.active and run(sw, 2, False) == []
    assert run(sw, 11, False) == [Action(Kind.REMOVE)] and not sw.active


def test_reload_changes_rates_in_place_or_starts_over():
    sw = Switch(SwitchConfig(0, 100, 10))
    run(sw, 0, True, A)
    sw.reconfigured(CFG, same_profile=True)
    assert run(sw, 1, True, A) == [Action(Kind.RATES), Action(Kind.FLOWS, flows=A)]
    sw.reconfigured(CFG, same_profile=False)
    assert run(sw, 2, True, A) == [Action(Kind.APPLY, 0.5), Action(Kind.FLOWS, flows=A)]


steps = st.lists(st.tuples(st.booleans(), st.sampled_from([frozenset(), A, B]),
                           st.frozensets(st.sampled_from(list(Kind))),
                           st.sampled_from(["", "lost", "kick"])), max_size=40)


@settings(max_examples=300)
@given(steps)
def test_records_only_what_succeeded(seq):
    """`active` follows the last successful apply/remove (or a loss); the recorded flow set
    is the last one that was set successfully since the profile went on; a wanted-off
    profile is removed before anything else; nothing is applied while off is wanted."""
    sw = Switch(CFG)
    on = dirty = False
    table: frozenset | None = None
    for i, (wanted, tuples, fail, event) in enumerate(seq):
        now = float(i)
        if event == "lost":
            sw.lost()
            on, table, dirty = False, None, True
        elif event == "kick":
            sw.kick()
        acts = run(sw, now, wanted, tuples, fail)
        if not wanted:
            assert all(a.kind is Kind.REMOVE for a in acts)
        if acts and acts[0].kind is Kind.APPLY:
            dirty = True
        if any(a.kind is Kind.REMOVE and a.kind not in fail for a in acts):
            dirty = False
        for a in acts:
            ok = a.kind not in fail
            assert a.kind in (Kind.APPLY, Kind.REMOVE) or on, "rates/flows only while on"
            if a.kind is Kind.APPLY and ok:
                on, table = True, None
            elif a.kind is Kind.REMOVE and ok:
                on, table = False, None
            elif a.kind is Kind.FLOWS and ok:
                table = a.flows
        assert sw.active == on
        assert sw.flows == table
        deadline = sw.next_deadline()
        assert deadline is None or deadline > now, "nothing due is left undone"
        if wanted and not on:
            assert acts or sw.next_deadline() is not None, "a wanted profile is retried"
        if (on or dirty) and not wanted:
            assert acts or sw.next_deadline() is not None, "an unwanted profile is removed"
        assert sw.dirty == dirty


@settings(max_examples=1000)
@given(steps)
def test_a_failing_kernel_is_never_hammered(seq):
    """After a failure, the same action comes back only after the retry time or a kick."""
    sw = Switch(CFG)
    failed_at: dict[Kind, float] = {}
    for i, (wanted, tuples, fail, event) in enumerate(seq):
        now = float(i)
        if event == "kick":
            sw.kick()
            failed_at.clear()
        elif event == "lost":
            sw.lost()
            failed_at.clear()
        for a in run(sw, now, wanted, tuples, fail):
            if a.kind in failed_at and a.kind is not Kind.FLOWS:
                assert now >= failed_at[a.kind] + CFG.retry
            if a.kind in fail:
                failed_at[a.kind] = now
            elif a.kind is Kind.REMOVE:  # the profile is gone: only the apply's wait stays
                failed_at = {k: t for k, t in failed_at.items() if k is Kind.APPLY}
            else:
                failed_at.pop(a.kind, None)
