"""Messages per second through validation and detection alone, on one core
(docs/contract/targets.md §3).

A realistic mix: thousands of vehicles driving round Reims at 1 Hz (the demo traffic, a few
accidents), dozens of zones, every rule on. What bounds it is printed per stage.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import orjson

from roadwatch.adapters.accounts import AccountRegistry, TrustRegistry
from roadwatch.domain.accounts import AccountKind, effective_station_type
from roadwatch.domain.detector import DetectionRules, Detector
from roadwatch.domain.messages import Cam, Denm, parse_message
from roadwatch.domain.zones import Zone, zones_from_geojson
from roadwatch.runner.templates import deploy_dir
from roadwatch.simulation.demo import CENTRE_LAT, CENTRE_LON, DemoTraffic

VEHICLES = 5_000
SECONDS = 60
START_MS = 1_780_000_000_000
EXTRA_ZONES = 40


def synthetic_zones(count: int) -> list[Zone]:
    """Squares of ~400 m on a ring 1.5 km around the centre, beside the shipped Reims zones."""
    zones = []
    for n in range(count):
        angle = 2 * math.pi * n / count
        lat = CENTRE_LAT + 0.0135 * math.cos(angle)
        lon = CENTRE_LON + 0.0205 * math.sin(angle)
        d_lat, d_lon = 0.0018, 0.0028
        ring = [
            (lon - d_lon, lat - d_lat),
            (lon + d_lon, lat - d_lat),
            (lon + d_lon, lat + d_lat),
            (lon - d_lon, lat + d_lat),
            (lon - d_lon, lat - d_lat),
        ]
        zones.append(Zone(id=f"bench-{n}", name=f"Bench zone {n}", polygons=((tuple(ring),),)))
    return zones


def make_trace() -> list[tuple[str, bytes]]:
    traffic = DemoTraffic(VEHICLES, seed=1, start_ms=START_MS)
    trace: list[tuple[str, bytes]] = []
    for _ in range(SECONDS):
        trace += [(topic, orjson.dumps(payload)) for topic, payload, _ in traffic.tick()]
    return trace


def time_trust(messages: list[Cam | Denm]) -> tuple[float, int]:
    """Time the gateway's trust step over `messages`, half their stations owned by accounts."""
    stations = sorted({message.station_id for message in messages})
    with tempfile.TemporaryDirectory() as folder:
        registry = AccountRegistry(Path(folder))
        kinds = (AccountKind.VEHICLE, AccountKind.EMERGENCY, AccountKind.OPERATOR)
        owned = stations[::2]
        for kind in kinds:
            batch = {name: "bench" for name in owned[kinds.index(kind) :: len(kinds)]}
            registry.put(batch, kind)
        trust = TrustRegistry(registry.registry_file)
        started = time.perf_counter()
        for message in messages:
            effective_station_type(
                message.station_type,
                trust.trust_of(message.station_id, started),
                believe_declared=True,
            )
        return time.perf_counter() - started, len(owned)


def main() -> None:
    trace = make_trace()
    zones = zones_from_geojson(
        orjson.loads((deploy_dir() / "zones" / "reims.geojson").read_bytes())
    )
    zones += synthetic_zones(EXTRA_ZONES)
    now_ms = START_MS + SECONDS * 1000 + 1000
    messages = [parse_message(topic, payload, now_ms) for topic, payload in trace]

    started = time.perf_counter()
    for topic, payload in trace:
        parse_message(topic, payload, now_ms)
    parse_s = time.perf_counter() - started

    trust_s, accounts = time_trust(messages)

    detector = Detector(DetectionRules(), zones)
    started = time.perf_counter()
    events = sum(len(detector.process(message)) for message in messages)
    detect_s = time.perf_counter() - started

    total = len(trace)
    print(
        f"detector: {total:,} messages, {VEHICLES:,} vehicles at 1 Hz, {len(zones)} zones, "
        f"every rule on: {events} events"
    )
    print(
        f"  validation (orjson + checks)  {total / parse_s:>10,.0f} msg/s "
        f"({parse_s / total * 1e6:.2f} µs each)"
    )
    print(
        f"  account trust ({accounts:,} accounts) {total / trust_s:>10,.0f} msg/s "
        f"({trust_s / total * 1e6:.2f} µs each)"
    )
    print(
        f"  detection (all rules)         {total / detect_s:>10,.0f} msg/s "
        f"({detect_s / total * 1e6:.2f} µs each)"
    )
    print(
        f"  validation + detection        {total / (parse_s + detect_s):>10,.0f} msg/s "
        "(target >= 100,000 on one core)"
    )
