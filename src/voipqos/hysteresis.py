"""The on/off state machine: when the shaping profile should be applied. No I/O, no clock.

Auto mode switches on after `on_polls` consecutive polls that saw a call (at once for a
call whose packets carried RTP headers: the detector is sure), and off once no call has
been seen for `off_hold` seconds and the profile has been on for `min_on`.
A manual override (on/off, optionally expiring) wins over detection. Every change of
state is recorded with its time and reason.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .config import Config


class Mode(StrEnum):
    AUTO = "auto"
    ON = "on"
    OFF = "off"


class State(StrEnum):
    WATCHING = "watching"  # auto, no call: line not shaped
    ON = "on"  # auto, call active: shaped
    FORCED_ON = "forced_on"
    FORCED_OFF = "forced_off"


@dataclass(frozen=True)
class Transition:
    at: float
    state: State
    active: bool
    reason: str


@dataclass(frozen=True)
class HysteresisConfig:
    """The three options of the same names (defaults: config.OPTIONS)."""

    on_polls: int
    off_hold: float
    min_on: float

    @classmethod
    def from_config(cls, cfg: Config) -> HysteresisConfig:
        return cls(cfg.on_polls, cfg.off_hold, cfg.min_on)


class Hysteresis:
    """Feed it `step(now, calls)` once a poll; read `active` to know whether to shape."""

    def __init__(self, cfg: HysteresisConfig, now: float, history: int = 50) -> None:
        self.cfg = cfg
        self.mode = Mode.AUTO
        self.expires: float | None = None
        self.active = False
        self.streak = 0
        self.on_since = now
        self.last_call: float | None = None
        self.transitions: deque[Transition] = deque(maxlen=history)
        self._record(now, "started")

    @property
    def state(self) -> State:
        if self.mode is Mode.ON:
            return State.FORCED_ON
        if self.mode is Mode.OFF:
            return State.FORCED_OFF
        return State.ON if self.active else State.WATCHING

    @property
    def since(self) -> float:
        return self.transitions[-1].at

    @property
    def reason(self) -> str:
        return self.transitions[-1].reason

    def _record(self, now: float, reason: str) -> None:
        self.transitions.append(Transition(now, self.state, self.active, reason))

    def _set(self, now: float, active: bool, reason: str) -> None:
        if active and not self.active:
            self.on_since = now
        self.active = active
        self._record(now, reason)

    def step(self, now: float, calls: int, sure: bool = False) -> bool:
        """Account one poll that saw `calls` active calls, `sure` if RTP headers confirm
        one (Detection.sure); True if `active` changed."""
        was = self.active
        if self.expires is not None and now >= self.expires:
            self.set_mode(Mode.AUTO, now, reason=f"override {self.mode} expired")
        if calls:
            self.streak += 1
            self.last_call = now
        else:
            self.streak = 0
        if self.mode is not Mode.AUTO:
            return self.active != was
        if not self.active and calls and sure:
            self._set(now, True, "call confirmed by RTP headers")
        elif not self.active and self.streak >= self.cfg.on_polls:
            self._set(now, True, f"call detected in {self.streak} polls in a row")
        elif self.active and not calls:
            quiet = now - (self.last_call if self.last_call is not None else self.on_since)
            if quiet >= self.cfg.off_hold and now - self.on_since >= self.cfg.min_on:
                self._set(now, False, f"no call for {quiet:.0f} s")
        return self.active != was

    def set_mode(self, mode: Mode | str, now: float, expires: float | None = None,
                 reason: str | None = None) -> bool:
        """Manual override; `expires` is an absolute time on the same clock. True if
        `active` changed."""
        mode = Mode(mode)
        was = self.active
        self.mode = mode
        self.expires = expires if mode is not Mode.AUTO else None
        why = reason or f"mode set to {mode} by user"
        if mode is Mode.ON:
            self._set(now, True, why)
        elif mode is Mode.OFF:
            self._set(now, False, why)
        else:
            # back to detection: count the override's end as the last sighting, so an
            # active profile is held for off_hold rather than dropped mid-call
            if self.active:
                self.last_call = now
            self._record(now, why)
        return self.active != was

    def status(self, wall: Callable[[float], float]) -> dict[str, Any]:
        """Its part of the daemon's status; `wall` turns its times into epoch seconds."""
        return {
            "state": str(self.state),
            "mode": str(self.mode),
            "mode_expires": wall(self.expires) if self.expires else None,
            "since": wall(self.since),
            "reason": self.reason,
            "transitions": [{"at": wall(t.at), "state": str(t.state), "active": t.active,
                             "reason": t.reason} for t in reversed(self.transitions)],
        }
