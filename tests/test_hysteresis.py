"""Hysteresis: scenario tests and properties (no flapping, override wins)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from voipqos.hysteresis import Hysteresis, HysteresisConfig, Mode, State

CFG = HysteresisConfig(on_polls=2, off_hold=15, min_on=30)


def run(seq: list[int], cfg: HysteresisConfig = CFG, dt: float = 1.0) -> Hysteresis:
    h = Hysteresis(cfg, 0.0)
    for i, calls in enumerate(seq, 1):
        h.step(i * dt, calls)
    return h


def test_switches_on_after_n_polls_and_off_after_hold():
    h = Hysteresis(CFG, 0.0)
    assert not h.step(1, 1) and h.state is State.WATCHING
    assert h.step(2, 1) and h.state is State.ON
    assert h.reason == "call detected in 2 polls in a row"
    for t in range(3, 40):  # call lasts until t=39
        h.step(t, 1)
    for t in range(40, 54):
        assert not h.step(t, 0)
    assert h.step(54, 0) and h.state is State.WATCHING  # 15 s after the last sighting
    assert [t.state for t in h.transitions] == [State.WATCHING, State.ON, State.WATCHING]


def test_min_on_holds_a_short_call():
    h = run([1, 1] + [0] * 20)  # on at t=2, last call t=2; off_hold passed at 17
    assert h.active  # but min_on (30 s) not yet
    h.step(32, 0)
    assert not h.active


def test_override_wins_and_expires():
    h = Hysteresis(CFG, 0.0)
    h.set_mode(Mode.ON, 1.0, expires=11.0)
    assert h.active and h.state is State.FORCED_ON
    h.step(5, 0)
    assert h.active
    h.step(11, 0)  # expired: back to auto, held for off_hold from the override's end
    assert h.mode is Mode.AUTO and h.active and "expired" in h.transitions[-1].reason
    h.step(26, 0)
    h.step(31, 0)
    assert not h.active
    h.set_mode(Mode.OFF, 40.0)
    for t in range(41, 60):
        h.step(t, 3)
    assert not h.active and h.state is State.FORCED_OFF


def test_history_is_bounded():
    h = Hysteresis(CFG, 0.0, history=5)
    for i in range(100):
        h.set_mode(Mode.ON if i % 2 else Mode.OFF, float(i))
    assert len(h.transitions) == 5


seqs = st.lists(st.integers(min_value=0, max_value=3), max_size=300)


@given(seqs, st.integers(1, 5), st.floats(0, 40), st.floats(0, 60))
def test_no_flapping(seq, on_polls, off_hold, min_on):
    cfg = HysteresisConfig(on_polls, off_hold, min_on)
    h = Hysteresis(cfg, 0.0, history=1000)
    last_call = None
    streak = 0
    for t, calls in enumerate(seq, 1):
        was = h.active
        h.step(float(t), calls)
        streak = streak + 1 if calls else 0
        if calls:
            last_call = t
        if h.active and not was:
            assert streak >= on_polls  # never on without on_polls polls in a row
        if was and not h.active:
            assert last_call is not None and t - last_call >= off_hold
    ons = [tr.at for tr in h.transitions if tr.active]
    offs = [tr.at for tr in h.transitions if not tr.active][1:]  # skip "started"
    for on, off in zip(ons, offs, strict=False):
        assert off - on >= min_on  # never shorter than min_on


@given(seqs, st.sampled_from([Mode.ON, Mode.OFF]))
def test_override_always_wins(seq, mode):
    h = Hysteresis(CFG, 0.0)
    h.set_mode(mode, 0.0)
    for t, calls in enumerate(seq, 1):
        h.step(float(t), calls)
        assert h.active is (mode is Mode.ON)
