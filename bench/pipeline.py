"""The whole pipeline under load (docs/contract/targets.md §1, §2): 30,000 CAM/s without loss,
latency at half load.

Starts a private system (bench/system.py: MariaDB, Mosquitto, Prosody, Apache, api, collector,
gateway on free ports under a temporary folder, removed at the end), then:

1. throughput: publisher processes (bench/fleet.py) drive 30,000 stations on the Reims road
   network, every rule on (the zones file loaded, slow groups forming jams), and publish their
   CAMs with the fleet account at QoS 0 at fixed rates, then flat out. The gateway's own
   counters (/metrics) tell what it received: loss = 1 - received / published, counted once
   the broker's backlog has drained; "lag" is how long that took after publishing stopped.
2. latency at half load (bench/latency.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench import latency
from bench.fleet import Publishers, RunResult
from bench.system import (
    DRAIN_TIMEOUT_S,
    PrivateSystem,
    cpu_seconds,
    load_average,
    private_system,
)

POPULATION = 30_000
PUBLISHERS = 2
STEP_S = 8.0
TARGETS = (10_000, 20_000, 30_000)
# Every station's first position (zone entries and all) before the measured steps.
WARM_UP_RATE = 15_000
FLAT_OUT_S = 5.0
RESULT_TIMEOUT_S = 30.0
# Sustained: the gateway takes at least this share of the rate while it is published, and has
# everything within LAG_LIMIT_S of the end.
KEEP_UP_SHARE = 0.95
LAG_LIMIT_S = 2.0
TARGET_RATE = 30_000
# ROADWATCH_BENCH_GATEWAYS=2: gateway instances sharing the load instead of one gateway.
GATEWAYS = int(os.environ.get("ROADWATCH_BENCH_GATEWAYS", "1"))


@dataclass(frozen=True)
class Step:
    label: str
    published: int
    publish_rate: float
    gateway_rate: float
    received: int
    loss: float
    # False: the time limit struck while the backlog still drained, so "loss" includes it.
    drained: bool
    lag_s: float
    events: int
    # % of one core per part of CPU_PARTS, and of the publishers.
    cpu: dict[str, float]
    publishers_cpu: float
    load: str


# Column heading -> the processes whose CPU it shows: every server and service on the way of
# a message, so that each stage's cost is on the line of the step that loads it.
CPU_PARTS = {
    "gateway": "gateway",
    "broker": "mosquitto",
    "prosody": "prosody",
    "collect": "collector",
    "mariadb": "mariadb",
}


def _events(metrics: dict[str, float]) -> int:
    return int(sum(value for name, value in metrics.items() if name.startswith("events_total")))


def _step(
    system: PrivateSystem, publishers: Publishers, label: str, rate: float, duration_s: float
) -> Step:
    pids = {
        name: system.gateway_pids() if name == "gateway" else [system.pid(name)]
        for name in CPU_PARTS.values()
    }
    stations = min(POPULATION, round(rate)) if rate else POPULATION
    before = system.gateway_metrics()
    received_before = system.received()
    cpu_before = {name: sum(map(cpu_seconds, group)) for name, group in pids.items()}
    began = time.monotonic()
    publishers.start(rate, stations, duration_s)
    results: list[RunResult] = publishers.results(duration_s + RESULT_TIMEOUT_S)
    ended = time.monotonic()
    window_s = ended - began
    received_during = system.received() - received_before
    cpu_used = {
        name: sum(map(cpu_seconds, group)) - cpu_before[name] for name, group in pids.items()
    }
    published = sum(result.sent for result in results)
    count, drained, settled = system.drain(received_before + published)
    received = count - received_before
    after = system.gateway_metrics()
    return Step(
        label=label,
        published=published,
        publish_rate=published / max(result.elapsed_s for result in results),
        gateway_rate=received_during / window_s,
        received=received,
        loss=1.0 - received / published if published else 0.0,
        drained=drained,
        lag_s=max(0.0, settled - ended),
        events=_events(after) - _events(before),
        cpu={name: used / window_s * 100 for name, used in cpu_used.items()},
        publishers_cpu=sum(result.cpu_s for result in results) / window_s * 100,
        load=load_average(),
    )


def _print(steps: list[Step]) -> None:
    print(
        f"  {'target':>12}  {'published/s':>11}  {'gateway/s':>9}  {'loss':>7}  {'lag s':>5}"
        f"  {'events':>6}  "
        + "  ".join(f"{heading:>7}" for heading in CPU_PARTS)
        + f"  {'pub.':>4}  {'load':>9}"
    )
    for step in steps:
        print(
            f"  {step.label:>12}  {step.publish_rate:11,.0f}  {step.gateway_rate:9,.0f}"
            f"  {step.loss * 100:6.2f}{'%' if step.drained else '*'}"
            f"  {step.lag_s:5.1f}  {step.events:6,}  "
            + "  ".join(f"{step.cpu[name]:6.0f}%" for name in CPU_PARTS.values())
            + f"  {step.publishers_cpu:3.0f}%  {step.load:>9}"
        )


def throughput(system: PrivateSystem, publishers: Publishers) -> None:
    """Print what the pipeline sustains at each target rate, then flat out."""
    print(
        f"pipeline throughput: {POPULATION:,} stations on the Reims network, every rule on; "
        f"{PUBLISHERS} publisher processes, fleet account, QoS 0; {STEP_S:.0f} s per rate; "
        + ("one gateway" if GATEWAYS <= 1 else f"{GATEWAYS} gateway instances sharing the load")
    )
    steps = [
        _step(system, publishers, "first pos.", WARM_UP_RATE, POPULATION / WARM_UP_RATE),
        *(_step(system, publishers, f"{target:,}", target, STEP_S) for target in TARGETS),
        _step(system, publishers, "flat out", 0, FLAT_OUT_S),
    ]
    _print(steps)
    print(
        "  gateway/s: messages the gateway received while they were published; loss: not "
        "received once the broker's backlog drained (*: still draining after "
        f"{DRAIN_TIMEOUT_S:.0f} s); lag: how long that backlog took; CPU in % of one core "
        "(broker: Mosquitto, collect: the collector, pub.: the publishers); load: load "
        "average (1 / 5 min) after the step"
    )
    kept_up = [
        step.publish_rate
        for step in steps[1:]
        if step.received >= step.published
        and step.gateway_rate >= KEEP_UP_SHARE * step.publish_rate
        and step.lag_s <= LAG_LIMIT_S
    ]
    best = f"{max(kept_up):,.0f}" if kept_up else "none of the rates"
    verdict = "met" if kept_up and max(kept_up) >= KEEP_UP_SHARE * TARGET_RATE else "NOT met"
    print(
        f"  sustained without loss or lag: {best}; docs/contract/targets.md §1"
        f" ({TARGET_RATE:,} CAM/s): {verdict}"
    )


def main() -> None:
    """`python -m bench pipeline`."""
    with (
        private_system(GATEWAYS) as system,
        Publishers(latency.broker_of(system), POPULATION, PUBLISHERS) as publishers,
    ):
        throughput(system, publishers)
        latency.at_half_load(system, publishers)
