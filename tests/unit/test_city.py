"""The city simulator: reproducible, physically sane, on contract, and true to its ground truth."""

from __future__ import annotations

import itertools
import math
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from roadwatch.domain.detector import DetectionRules, Detector
from roadwatch.domain.events import Event, EventType
from roadwatch.domain.geo import haversine_m
from roadwatch.domain.messages import Cam, parse_message
from roadwatch.domain.zones import zones_from_geojson
from roadwatch.simulation.city import (
    SCENARIOS,
    Accident,
    CitySimulation,
    Composite,
    Jam,
    Publication,
    Scenario,
)
from roadwatch.simulation.network import REIMS_NETWORK_PATH, RoadNetwork, load_network
from roadwatch.simulation.vehicles import SPEED_MARGIN
from tests.scenarios.truth import mismatches

T0 = 1_780_000_000_000
# A jam's position is the middle of its cells: within a cell or two of the bottleneck.
NEAR_M = 350.0
REIMS_ZONES = Path(__file__).resolve().parents[2] / "deploy" / "zones" / "reims.geojson"


@cache
def reims() -> RoadNetwork:
    return load_network(REIMS_NETWORK_PATH)


def run(
    scenario: Scenario, vehicles: int, seconds: int, seed: int = 7
) -> tuple[CitySimulation, list[Publication]]:
    sim = CitySimulation(reims(), vehicles, seed, T0, scenario)
    out: list[Publication] = []
    for _ in range(seconds):
        out += sim.tick(1.0)
    return sim, out


def encoded(publications: list[Publication]) -> bytes:
    return b"\n".join(
        orjson.dumps({"topic": topic, "qos": qos, "payload": payload})
        for topic, payload, qos in publications
    )


def test_same_seed_gives_the_same_publications() -> None:
    first = encoded(run(SCENARIOS["demo"](), 200, 120)[1])
    second = encoded(run(SCENARIOS["demo"](), 200, 120)[1])
    assert first == second
    assert first != encoded(run(SCENARIOS["demo"](), 200, 120, seed=8)[1])


def test_ticks_of_any_length_keep_the_clock() -> None:
    sim = CitySimulation(reims(), 5, 1, T0, Scenario())
    sim.tick(1.3)
    sim.tick(0.2)
    assert sim.now_ms == T0 + 1500


def test_vehicles_keep_under_the_limit_and_never_jump() -> None:
    sim = CitySimulation(reims(), 150, 3, T0, SCENARIOS["jam"]())
    last: dict[str, tuple[float, float]] = {}
    for _ in range(600):
        sim.tick(0.5)
        for vehicle in sim.traffic.vehicles:
            limit = sim.traffic.speed_limit_kmh(vehicle.edge) / 3.6
            # A temporary limit applies from the moment it is imposed: drivers brake into it.
            posted = vehicle.edge.speed_limit_kmh / 3.6
            assert vehicle.speed_mps <= max(limit, posted) * SPEED_MARGIN + 1e-6
            lat, lon, _ = vehicle.position()
            if vehicle.id in last:
                moved = haversine_m(*last[vehicle.id], lat, lon)
                # No faster than any vehicle can go in half a second, with room for curves.
                assert moved <= 200.0 / 3.6 * 0.5 + 1.0
            last[vehicle.id] = (lat, lon)
    assert sim.counters()["vehicles"] == len(sim.traffic)


def test_publications_are_on_contract_and_cams_come_at_1_to_10_hz() -> None:
    sim, publications = run(SCENARIOS["accident"](), 150, 400)
    cam_times: dict[str, list[int]] = {}
    for topic, payload, qos in publications:
        message = parse_message(topic, orjson.dumps(payload), sim.now_ms)
        if isinstance(message, Cam):
            assert qos == 0
            cam_times.setdefault(message.station_id, []).append(message.timestamp_ms)
        else:
            assert qos == 1
    counters = sim.counters()
    assert counters["cams"] + counters["denms"] == len(publications)
    assert counters["scenario_events"] == counters["denms"] == 4
    for times in cam_times.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(100 <= gap <= 1000 for gap in gaps)


def final_versions(events: list[Event], ids: set[str]) -> list[dict[str, Any]]:
    latest: dict[str, Event] = {}
    for event in events:
        if event.id in ids and (event.id not in latest or event.version > latest[event.id].version):
            latest[event.id] = event
    return [
        {
            "id": e.id,
            "type": e.type.value,
            "status": e.status.value,
            "zone_id": e.zone_id,
            "station_ids": sorted(e.station_ids),
        }
        for e in latest.values()
    ]


def detect(sim: CitySimulation, publications: list[Publication]) -> list[Event]:
    zones = zones_from_geojson(orjson.loads(REIMS_ZONES.read_bytes()))
    detector = Detector(DetectionRules(), zones)
    events: list[Event] = []
    for topic, payload, _ in publications:
        events += detector.process(parse_message(topic, orjson.dumps(payload), sim.now_ms))
    return events


def near_edge(jam: Jam, event: Event) -> bool:
    edge = jam.edge
    if edge is None:
        return False
    points = [edge.position_at(s) for s in range(0, math.ceil(edge.length_m) + 1, 20)]
    return min(haversine_m(event.lat, event.lon, lat, lon) for lat, lon, _ in points) <= NEAR_M


def staged(scenario: Scenario, events: list[Event]) -> set[str]:
    """Return the ids of the events the scenario staged.

    A busy city also yields zone crossings and slow-traffic jams of its own, so only these
    count: every accident (only scenarios send DENMs), and every jam first raised next to a
    bottleneck while that bottleneck was in force.
    """
    jams = [p for p in getattr(scenario, "parts", [scenario]) if isinstance(p, Jam)]
    ids: set[str] = set()
    for event in events:
        if event.type is EventType.ACCIDENT:
            ids.add(event.id)
        elif event.type is EventType.TRAFFIC_JAM and event.version == 1:
            for jam in jams:
                start = jam.imposed_ms if jam.imposed_ms is not None else math.inf
                end = jam.lifted_ms if jam.lifted_ms is not None else math.inf
                if start <= event.started_ms <= end and near_edge(jam, event):
                    ids.add(event.id)
    return ids


@pytest.mark.parametrize(
    ("name", "vehicles", "seconds"),
    [("accident", 200, 360), ("jam", 60, 520), ("demo", 60, 620)],
)
def test_scenario_ground_truth_is_what_the_detector_finds(
    name: str, vehicles: int, seconds: int
) -> None:
    scenario = SCENARIOS[name]()
    sim, publications = run(scenario, vehicles, seconds)
    truth = sim.ground_truth()
    assert truth
    events = detect(sim, publications)
    assert mismatches(truth, final_versions(events, staged(scenario, events))) == []


def test_accident_truth_names_the_witnesses_and_the_ambulance() -> None:
    scenario = Accident()
    sim, _ = run(scenario, 100, 400)
    (accident,) = sim.ground_truth()
    assert accident["status"] == "cleared"
    assert len(accident["station_ids"]) == 3
    assert any(station.startswith("ems-") for station in accident["station_ids"])


def test_scenarios_are_named() -> None:
    assert {"accident", "jam", "demo"} <= set(SCENARIOS)
    demo = SCENARIOS["demo"]()
    assert isinstance(demo, Composite)
    assert demo.name == "demo"
