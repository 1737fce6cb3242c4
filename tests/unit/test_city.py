"""The city simulator: reproducible, physically sane, on contract, and true to its ground truth."""

from __future__ import annotations

import itertools
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from roadwatch.domain.detector import DetectionRules, Detector
from roadwatch.domain.events import Event
from roadwatch.domain.geo import haversine_m
from roadwatch.domain.messages import Cam, parse_message
from roadwatch.domain.zones import zones_from_geojson
from roadwatch.simulation.cam import Publication
from roadwatch.simulation.city import CitySimulation
from roadwatch.simulation.geofence import ZoneShape, load_zone_shapes
from roadwatch.simulation.network import REIMS_NETWORK_PATH, RoadNetwork, load_network
from roadwatch.simulation.scenarios import SCENARIOS, Accident, Composite, Scenario, ZoneTours
from roadwatch.simulation.vehicles import SPEED_MARGIN
from tests.e2e.ground_truth import staged_selector
from tests.scenarios.truth import final_versions, mismatches

T0 = 1_780_000_000_000
REIMS_ZONES = Path(__file__).resolve().parents[2] / "deploy" / "zones" / "reims.geojson"


@cache
def reims() -> RoadNetwork:
    return load_network(REIMS_NETWORK_PATH)


@cache
def reims_zones() -> tuple[ZoneShape, ...]:
    return tuple(load_zone_shapes(REIMS_ZONES))


def city(scenario: Scenario, vehicles: int, seed: int = 7) -> CitySimulation:
    """A city on the Reims network with the shipped zones."""
    return CitySimulation(reims(), vehicles, seed, T0, scenario, zones=reims_zones())


def run(
    scenario: Scenario, vehicles: int, seconds: int, seed: int = 7
) -> tuple[CitySimulation, list[Publication]]:
    sim = city(scenario, vehicles, seed)
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
    sim = city(Scenario(), 5, 1)
    sim.tick(1.3)
    sim.tick(0.2)
    assert sim.now_ms == T0 + 1500


def test_vehicles_keep_under_the_limit_and_never_jump() -> None:
    sim = city(SCENARIOS["jam"](), 150, 3)
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


def detect(sim: CitySimulation, publications: list[Publication]) -> list[Event]:
    zones = zones_from_geojson(orjson.loads(REIMS_ZONES.read_bytes()))
    detector = Detector(DetectionRules(), zones)
    events: list[Event] = []
    for topic, payload, _ in publications:
        events += detector.process(parse_message(topic, orjson.dumps(payload), sim.now_ms))
    return events


def zone_stations(scenario: Scenario) -> set[str]:
    parts = scenario.parts if isinstance(scenario, Composite) else [scenario]
    return set().union(*(part.stations() for part in parts if isinstance(part, ZoneTours)))


def staged(
    scenario: Scenario, truth: list[dict[str, Any]], events: list[Event]
) -> list[dict[str, Any]]:
    """Return the final versions of the events the scenario staged.

    A busy city also yields zone crossings and slow-traffic jams of its own: only accidents,
    the crossings of the vehicles staged for them, and the jams starting at a staged closure
    while it holds count.
    """
    keep = staged_selector(truth, zone_stations(scenario))
    return [row for row in final_versions(events) if keep(row)]


@pytest.mark.parametrize(
    ("name", "vehicles", "seconds"),
    [("accident", 200, 360), ("jam", 60, 520), ("zones", 40, 500), ("demo", 60, 620)],
)
def test_scenario_ground_truth_is_what_the_detector_finds(
    name: str, vehicles: int, seconds: int
) -> None:
    scenario = SCENARIOS[name]()
    sim, publications = run(scenario, vehicles, seconds)
    truth = sim.ground_truth()
    assert truth
    events = detect(sim, publications)
    assert mismatches(truth, staged(scenario, truth, events)) == []


def test_accident_truth_names_the_witnesses_and_the_ambulance() -> None:
    scenario = Accident()
    sim, _ = run(scenario, 100, 400)
    (accident,) = sim.ground_truth()
    assert accident["status"] == "cleared"
    assert len(accident["station_ids"]) == 3
    assert any(station.startswith("ems-") for station in accident["station_ids"])


def test_scenarios_are_named() -> None:
    assert {"accident", "jam", "zones", "rush-hour", "demo"} <= set(SCENARIOS)
    demo = SCENARIOS["demo"]()
    assert isinstance(demo, Composite)
    assert demo.name == "demo"
