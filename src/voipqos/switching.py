"""When to apply, re-apply, remove the profile and update its flow table. No I/O, no clock.

The hysteresis says whether shaping is *wanted*; this module turns that into profile
actions and remembers what the kernel holds, from the results it is told. The shape is
aioquic's connection timer: `step()` returns what to do now, the caller runs each action
and reports back with `done()`, and `next_deadline()` says when a retry or the end of the
drain burst is due. It owns:
- the drain burst: the first apply after switching on shapes at `drain_rate` percent for
  `drain_time` seconds (the modem's buffer, filled before the call, only empties below the
  line rate), then the configured rates are applied in place;
- retries: a failed apply, remove, rate change or flow update is retried `retry` seconds
  later (or at once when the kernel changed, see `lost()`/`kick()`), never recorded as done;
- the flow-set diff: the classifier's table is updated only when the call tuples changed.
`active` is the one record of whether the profile is on: set by a successful apply, cleared
by a successful remove or when a check of the kernel found it gone. What an apply that
failed or a lost profile may have left (an IFB whose device went away, pinned maps) is
`dirty` until a remove succeeds, so switching off always cleans up.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .config import Config
from .detect import Detection, FiveTuple


class Kind(StrEnum):
    APPLY = "apply"  # profile.apply(scale): switch on (scale < 1: the drain burst)
    RATES = "rates"  # profile.apply(1.0) while on: the configured rates, in place
    REMOVE = "remove"
    FLOWS = "flows"  # profile.set_flows(flows)


@dataclass(frozen=True)
class Action:
    kind: Kind
    scale: float = 1.0
    flows: frozenset[FiveTuple] = frozenset()


@dataclass(frozen=True)
class SwitchConfig:
    drain_time: float  # seconds of the drain burst (0: none)
    drain_rate: int  # percent of the configured rates during the drain burst
    retry: float  # seconds between attempts after a failure

    @classmethod
    def from_config(cls, cfg: Config, retry: float) -> SwitchConfig:
        return cls(cfg.drain_time, cfg.drain_rate, retry)

    @property
    def drain(self) -> bool:
        return self.drain_time > 0 and self.drain_rate < 100


class Switch:
    """Feed `step(now, wanted, tuples)` each poll; run the actions in order, stopping at
    the first failure, and report each with `done()`."""

    def __init__(self, cfg: SwitchConfig) -> None:
        self.cfg = cfg
        self.active = False
        self.dirty = False  # something of the profile may be in the kernel
        self.retry_at: dict[Kind, float] = {}  # kind -> not before (after a failure)
        self.rates_at: float | None = None  # end of the drain burst
        self.flows: frozenset[FiveTuple] | None = None  # what the table holds; None: unknown
        self.failed_flows: frozenset[FiveTuple] | None = None
        self.recovering = False  # the next apply restores a lost profile: no drain
        self.wanted = False  # as of the last step

    def _due(self, kind: Kind, now: float) -> bool:
        return now >= self.retry_at.get(kind, now)

    def step(self, now: float, wanted: bool, tuples: frozenset[FiveTuple]) -> list[Action]:
        self.wanted = wanted
        if not wanted:
            on = self.active or self.dirty
            return [Action(Kind.REMOVE)] if on and self._due(Kind.REMOVE, now) else []
        out = []
        if not self.active:
            if not self._due(Kind.APPLY, now):
                return []
            drain = self.cfg.drain and not self.recovering
            out.append(Action(Kind.APPLY, self.cfg.drain_rate / 100 if drain else 1.0))
        elif self.rates_at is not None and now >= self.rates_at:
            out.append(Action(Kind.RATES))
        retry_same = tuples == self.failed_flows and not self._due(Kind.FLOWS, now)
        if (tuples != self.flows or not self.active) and not retry_same:
            out.append(Action(Kind.FLOWS, flows=tuples))
        return out

    def done(self, action: Action, ok: bool, now: float) -> None:
        """Record what an action did; a failure changes nothing but the retry time."""
        if action.kind is Kind.APPLY:
            self.dirty = True
        if not ok:
            self.retry_at[action.kind] = now + self.cfg.retry
            if action.kind is Kind.RATES:
                self.rates_at = now + self.cfg.retry
            if action.kind is Kind.FLOWS:
                self.failed_flows = action.flows
            return
        self.retry_at.pop(action.kind, None)
        if action.kind is Kind.APPLY:
            self.active, self.recovering = True, False
            self.rates_at = now + self.cfg.drain_time if action.scale < 1 else None
            self.flows = None  # set again right after: the profile may hold an old set
        elif action.kind is Kind.RATES:
            self.rates_at = None
        elif action.kind is Kind.REMOVE:  # a failed apply still waits for its retry time
            apply_at = self.retry_at.get(Kind.APPLY)
            self._forget()
            if apply_at is not None:
                self.retry_at[Kind.APPLY] = apply_at
        else:
            self.flows, self.failed_flows = action.flows, None

    def _forget(self) -> None:
        self.active, self.rates_at, self.flows, self.failed_flows = False, None, None, None
        self.dirty = False
        self.retry_at.clear()

    def lost(self) -> None:
        """A check of the kernel found the profile gone (device re-created, tree deleted):
        not active any more; restore it at once, at the configured rates."""
        self._forget()
        self.recovering = self.dirty = True

    def kick(self) -> None:
        """The kernel changed (a device came back): retry a failed action now."""
        self.retry_at.clear()

    def reconfigured(self, cfg: SwitchConfig, same_profile: bool) -> None:
        """A reload: the running profile takes the new rates in place (no drain); a new
        profile (other device or backend) starts unapplied, the old one removed by the
        caller."""
        self.cfg = cfg
        if not same_profile:
            self._forget()
        elif self.active:
            self.rates_at = float("-inf")
            self.flows = None

    def next_deadline(self) -> float | None:
        """When `step()` will have something to do without new input (a retry, the end of
        the drain); None when nothing is pending for what was last wanted."""
        if not self.wanted:
            due = [self.retry_at.get(Kind.REMOVE)] if self.active or self.dirty else []
        elif not self.active:
            due = [self.retry_at.get(Kind.APPLY)]
        else:
            due = [self.rates_at, self.retry_at.get(Kind.FLOWS) if self.failed_flows else None]
        return min((t for t in due if t is not None), default=None)


# a call is a few media flows (audio, video, screen share, each with RTCP) per direction;
# a far host's other UDP flows must not fill the classifier's table (1024 directed tuples)
MAX_CALL_FLOWS = 16


def call_tuples(det: Detection | None, per_call: int = MAX_CALL_FLOWS) -> frozenset[FiveTuple]:
    """The 5-tuples to classify as voice: each call's busiest `per_call` flows (by packet
    rate both ways), so a host with thousands of UDP flows cannot take the whole table."""
    if det is None:
        return frozenset()
    ids = {c.id for c in det.calls}
    members: dict[str, list] = {cid: [] for cid in ids}
    for f in det.flows:
        if f.call in members:
            members[f.call].append(f)
    out: set[FiveTuple] = set()
    for flows in members.values():
        flows.sort(key=lambda f: -((f.out.pps if f.out else 0) + (f.inb.pps if f.inb else 0)))
        for f in flows[:per_call]:
            out.update(f.tuples())
    return frozenset(out)
