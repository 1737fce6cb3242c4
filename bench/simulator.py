"""Vehicles and messages/s the simulator sustains: dry run, then through a private broker."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import orjson

from roadwatch.adapters.mqtt import BlockingPublisher, MqttEndpoint, MqttError
from roadwatch.runner.mosquitto import Mosquitto
from roadwatch.runner.private import private_settings
from roadwatch.runner.process import RunLayout
from roadwatch.services.simulator import (
    CIRCLES_SCENARIO,
    DEFAULT_CONNECTIONS,
    DEFAULT_SCENARIO,
    FleetSink,
    NullSink,
    Pacer,
    Sink,
    Summary,
    make_simulation,
    run,
)
from roadwatch.settings import Settings

VEHICLES = 10_000
DRY_RUN_S = 60.0  # simulated seconds, flat out
REAL_TIME_S = 10.0  # wall seconds at 1 Hz, real time
FLAT_OUT_S = 20.0  # simulated seconds, flat out through the broker
DRAIN_TIMEOUT_S = 60.0
FACADE_MESSAGES = 300_000  # QoS 0, flat out through one BlockingPublisher
FACADE_STATIONS = 10_000
# Demand ramps up from the start: within the dry run, about 600 commuters join the 10,000.
RUSH_HOUR_SCENARIO = "rush-hour"


def _drain(sink: FleetSink) -> None:
    """Wait until every queued message has left (QoS 0 written out, QoS 1 acknowledged)."""
    for publisher in sink.publishers:
        publisher.flush(DRAIN_TIMEOUT_S)


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _run(
    sink: Sink,
    duration_s: float,
    paced: bool,
    record: bool = False,
    scenario: str = DEFAULT_SCENARIO,
) -> Summary:
    start_ms = round(time.time() * 1000) - round(duration_s * 1000)
    simulation = make_simulation(VEHICLES, 1, start_ms, scenario)
    pacer = Pacer(start_ms, round(time.time() * 1000), 1.0) if paced else None
    with tempfile.TemporaryDirectory() as folder:
        out = (Path(folder) / "trace.jsonl").open("wb") if record else None
        try:
            return run(
                simulation,
                sink,
                vehicles=VEHICLES,
                duration_s=duration_s,
                pacer=pacer,
                stop=threading.Event(),
                record=out,
            )
        finally:
            if out is not None:
                out.close()


def main() -> None:
    for scenario in (CIRCLES_SCENARIO, DEFAULT_SCENARIO, RUSH_HOUR_SCENARIO):
        summary = _run(NullSink(), DRY_RUN_S, paced=False, scenario=scenario)
        print(
            f"simulator dry run, {scenario:9} {VEHICLES} vehicles, {summary.rate:9,.0f} msg/s "
            f"({summary.messages / DRY_RUN_S:,.0f} msg per simulated s; JSON only)"
        )
    summary = _run(NullSink(), DRY_RUN_S, paced=False, record=True)
    print(
        f"simulator dry run + trace: {VEHICLES} vehicles, {summary.rate:9,.0f} msg/s "
        f"({DEFAULT_SCENARIO}, JSONL written)"
    )
    # A broker of its own on a free port: never the one of a running `make up` system.
    root = Path(tempfile.mkdtemp(prefix="rw-bench-sim-"))
    root.chmod(0o755)  # Mosquitto runs as its own user
    settings = private_settings(root)
    layout = RunLayout(root)
    layout.ensure()
    broker = Mosquitto(settings, layout)
    try:
        broker.start()
        _facade(settings)
        _publish(settings)
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)


def _facade(settings: Settings) -> None:
    """One BlockingPublisher alone, QoS 0 flat out: its rate and CPU (both threads) per message."""
    publisher = BlockingPublisher(
        MqttEndpoint.fleet(settings),
        name="bench-facade",
    )
    publisher.start()
    topics = [f"vehicles/bench-{n:05d}/cam" for n in range(FACADE_STATIONS)]
    payloads = [
        orjson.dumps(
            {
                "stationId": f"bench-{n:05d}",
                "stationType": 5,
                "timestamp": 1_780_000_000_000 + n,
                "lat": 49.2583 + n * 1e-6,
                "lon": 4.0317 - n * 1e-6,
                "speed": 42.5,
                "heading": 187.3,
            }
        )
        for n in range(FACADE_STATIONS)
    ]
    try:
        cpu = _cpu_s()
        began = time.perf_counter()
        for n in range(FACADE_MESSAGES):
            k = n % FACADE_STATIONS
            publisher.publish(topics[k], payloads[k], 0)
        handed_s = time.perf_counter() - began
        publisher.flush(DRAIN_TIMEOUT_S)
        wall_s = time.perf_counter() - began
        cpu_us = (_cpu_s() - cpu) / FACADE_MESSAGES * 1e6
    finally:
        publisher.stop()
    print(
        f"BlockingPublisher, QoS 0:  {FACADE_MESSAGES / wall_s:9,.0f} msg/s flat out into the "
        f"broker, {cpu_us:.1f} µs CPU per message (caller + loop threads), "
        f"{FACADE_MESSAGES / max(1, publisher.wakeups):,.0f} messages per loop wake-up; "
        f"publish() returns in {handed_s / FACADE_MESSAGES * 1e6:.1f} µs"
    )


def _publish(settings: Settings) -> None:
    sink = FleetSink(settings, DEFAULT_CONNECTIONS, f"bench{time.time_ns() % 100_000}")
    try:
        sink.start()
    except MqttError as exc:
        print(f"simulator publishing:    skipped, {exc}")
        return
    try:
        summary = _run(sink, REAL_TIME_S, paced=True)
        started = time.monotonic()
        _drain(sink)
        wall_s = summary.elapsed_s + time.monotonic() - started
        rate = summary.messages / wall_s
        verdict = "kept up" if wall_s < REAL_TIME_S + 1.0 else "FELL BEHIND"
        print(
            f"simulator 1 Hz, fleet:     {VEHICLES} vehicles, {rate:9,.0f} msg/s, "
            f"{REAL_TIME_S:.0f} s of traffic sent in {wall_s:.2f} s ({verdict})"
        )
        summary = _run(sink, FLAT_OUT_S, paced=False)
        started = time.monotonic()
        _drain(sink)
        wall_s = summary.elapsed_s + time.monotonic() - started
        rate = summary.messages / wall_s
        print(
            f"simulator flat out, fleet: {VEHICLES} vehicles, {rate:9,.0f} msg/s "
            f"into the broker ({DEFAULT_CONNECTIONS} connections, {DEFAULT_SCENARIO})"
        )
    finally:
        sink.close()


if __name__ == "__main__":
    main()
