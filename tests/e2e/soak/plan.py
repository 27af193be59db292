"""The soak's plan: how many probes, how much traffic, and which fault when, all drawn from one seed.

Faults run one after another with random gaps, so that each loss has one cause: a probe's packets
missing at a time when no fault that can lose them was active cannot hide behind another fault.
Every kind appears once, in a random order, before any repeats; a long run then draws kinds at random
until its traffic ends.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

# What each kind of fault may do to the packets, as the injector writes it down and the check holds it.
#   "unseen":   packets sent while it lasts never reach a capture file, and nothing records them
#               (a probe that is not running, a link that is down): expected, explained by the window.
#   "recorded": packets may be lost, and every one is counted in the probe's loss log (spool full).
#   "none":     no packet may be lost.
LOSS_BY_KIND = {
    "probe-kill": "unseen",
    "server-kill": "none",
    "redis-outage": "none",
    "spool-full": "recorded",
    "link-flap": "unseen",
    "server-unreachable": "none",
    "clock-step": "none",
}
KINDS = tuple(LOSS_BY_KIND)
# Seconds each kind lasts (uniform in the range): long enough to matter, short enough for the short run.
DURATION_S = {
    "probe-kill": (3.0, 8.0),
    "server-kill": (2.0, 6.0),
    "redis-outage": (5.0, 15.0),
    "spool-full": (35.0, 45.0),  # the small spool fills in about 25 s at RATE_PPS; then drops
    "link-flap": (2.0, 6.0),
    "server-unreachable": (8.0, 20.0),
    "clock-step": (10.0, 20.0),
}
CLOCK_STEP_S = (30.0, 90.0)  # forward at the start, back at the end: both directions
GAP_S = (4.0, 10.0)
# The oldest file a full spool drops may hold packets from a few seconds before the uploads stopped:
# keep an earlier fault's losses clear of that.
SPOOL_FULL_EXTRA_GAP_S = 6.0
WARMUP_S = 8.0
COOLDOWN_S = 8.0
SHORT_RUN_SLACK_S = 240.0
SHORT_PROBES = 3
RATE_PPS = 200.0  # per probe
SMALL_SPOOL_PROBE = 0  # the probe whose spool is a small tmpfs with drop-oldest
SMALL_SPOOL_BYTES = 768 << 10


@dataclass(frozen=True)
class Fault:
    kind: str
    at_s: float  # after the traffic starts
    duration_s: float
    probe: int | None  # None: the server side (server, Redis)
    step_s: float = 0.0  # clock-step only

    @property
    def loss(self) -> str:
        return LOSS_BY_KIND[self.kind]


@dataclass(frozen=True)
class SoakPlan:
    seed: int
    traffic_s: float
    probes: int
    rate_pps: float
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    # Seconds the traffic may run past traffic_s so that every fault fits (the short run: faults wait
    # for the effect of the one before to be over); the run then stops the traffic after a cooldown.
    slack_s: float = 0.0
    small_spool_probe: int = SMALL_SPOOL_PROBE
    small_spool_bytes: int = SMALL_SPOOL_BYTES

    @classmethod
    def build(cls, seed: int, minutes: float | None = None, probes: int = SHORT_PROBES) -> SoakPlan:
        """A plan for `minutes` of traffic; None: the short run, just long enough for each kind once."""
        if probes < 2:
            raise ValueError("the soak needs at least 2 probes (one has the small spool)")
        rng = random.Random(seed)
        faults: list[Fault] = []
        cursor = WARMUP_S
        limit = minutes * 60.0 - COOLDOWN_S if minutes is not None else None
        round_kinds = list(KINDS)
        rng.shuffle(round_kinds)
        while True:
            kind = round_kinds.pop(0) if round_kinds else rng.choice(KINDS)
            if kind == "spool-full":
                cursor += SPOOL_FULL_EXTRA_GAP_S
            fault = _draw(rng, kind, cursor, probes)
            if limit is not None and fault.at_s + fault.duration_s > limit:
                break
            faults.append(fault)
            cursor = fault.at_s + fault.duration_s + rng.uniform(*GAP_S)
            if limit is None and not round_kinds:
                break
        traffic_s = minutes * 60.0 if minutes is not None else cursor + COOLDOWN_S
        return cls(seed=seed, traffic_s=round(traffic_s, 1), probes=probes, rate_pps=RATE_PPS,
                   faults=tuple(faults), slack_s=SHORT_RUN_SLACK_S if minutes is None else 0.0)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults"] = [{**asdict(f), "loss": f.loss} for f in self.faults]
        return data


def _draw(rng: random.Random, kind: str, at_s: float, probes: int) -> Fault:
    duration = round(rng.uniform(*DURATION_S[kind]), 1)
    others = [i for i in range(probes) if i != SMALL_SPOOL_PROBE]
    probe: int | None
    if kind in ("server-kill", "redis-outage"):
        probe = None
    elif kind == "spool-full":
        probe = SMALL_SPOOL_PROBE
    elif kind == "server-unreachable":
        probe = rng.choice(others)  # the small spool would fill: that is the spool-full fault's job
    else:
        probe = rng.randrange(probes)
    step = round(rng.uniform(*CLOCK_STEP_S), 1) if kind == "clock-step" else 0.0
    return Fault(kind=kind, at_s=round(at_s, 1), duration_s=duration, probe=probe, step_s=step)
