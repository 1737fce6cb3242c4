"""Messages per second through validation and detection alone, on one core (SPEC §10)."""

from __future__ import annotations

import random
import time

import orjson

from roadwatch.domain.detector import Detector
from roadwatch.domain.messages import parse_message

STATIONS = 5_000
MESSAGES = 300_000
DENM_SHARE = 0.005  # accident reports among CAMs
START_MS = 1_780_000_000_000


def make_trace(seed: int = 1) -> list[tuple[str, bytes]]:
    """A realistic mix: thousands of vehicles around Reims at 1 Hz, a few accident DENMs."""
    rng = random.Random(seed)
    trace: list[tuple[str, bytes]] = []
    for n in range(MESSAGES):
        # Every station reports once per simulated second, in turn.
        station = f"veh-{n % STATIONS:05d}"
        ts = START_MS + (n // STATIONS) * 1000
        lat = 49.25 + rng.uniform(-0.05, 0.05)
        lon = 4.03 + rng.uniform(-0.08, 0.08)
        if rng.random() < DENM_SHARE:
            payload = {
                "stationId": station,
                "stationType": 5,
                "timestamp": ts,
                "lat": lat,
                "lon": lon,
                "causeCode": 2,
            }
            trace.append((f"vehicles/{station}/denm", orjson.dumps(payload)))
        else:
            payload = {
                "stationId": station,
                "stationType": 5,
                "timestamp": ts,
                "lat": lat,
                "lon": lon,
                "speed": rng.uniform(0, 90),
                "heading": rng.uniform(0, 360),
            }
            trace.append((f"vehicles/{station}/cam", orjson.dumps(payload)))
    return trace


def main() -> None:
    trace = make_trace()
    now_ms = START_MS + 10**9

    started = time.perf_counter()
    for topic, payload in trace:
        parse_message(topic, payload, now_ms)
    parse_s = time.perf_counter() - started

    detector = Detector()
    events = 0
    started = time.perf_counter()
    for topic, payload in trace:
        events += len(detector.process(parse_message(topic, payload, now_ms)))
    total_s = time.perf_counter() - started

    print(
        f"detector: {len(trace):,} messages from {STATIONS:,} stations "
        f"({DENM_SHARE:.1%} accident DENMs), {events} events"
    )
    print(f"  validation alone        {len(trace) / parse_s:>10,.0f} msg/s")
    print(f"  validation + detection  {len(trace) / total_s:>10,.0f} msg/s  (target >= 100,000)")
