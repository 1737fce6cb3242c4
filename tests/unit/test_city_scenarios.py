"""The staged scenarios (zones, jam, rush hour): reproducible, sane, and true to their ground truth.

Each is run through the pure detector and compared with its own ground truth, on several seeds
where the staging depends on the traffic.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import h3
import orjson
import pytest

from roadwatch.domain.events import EventType
from roadwatch.domain.geo import haversine_m
from roadwatch.simulation.geofence import CrossingTruth, ZoneShape, zone_shapes_from_geojson
from roadwatch.simulation.network import Edge, RoadClass
from roadwatch.simulation.scenarios import SCENARIOS, Composite, Demand, Jam, Scenario, ZoneTours
from roadwatch.simulation.vehicles import SPEED_MARGIN, Traffic, VehicleKind
from tests.scenarios.truth import mismatches
from tests.unit.test_city import city, detect, encoded, run, staged

# Free-flow CAMs come at 1 Hz and a car does at most 130 km/h x 1.1: about 40 m per second.
MAX_STEP_M = 200.0 / 3.6 * 0.5 + 1.0


def parts(scenario: Scenario) -> list[Scenario]:
    return scenario.parts if isinstance(scenario, Composite) else [scenario]


def jams(scenario: Scenario) -> list[Jam]:
    return [part for part in parts(scenario) if isinstance(part, Jam)]


@pytest.mark.parametrize(
    ("name", "vehicles"),
    [("traffic", 40), ("accident", 60), ("jam", 40), ("zones", 30), ("rush-hour", 30)],
)
def test_same_seed_gives_the_same_trace_for_every_scenario(name: str, vehicles: int) -> None:
    first = run(SCENARIOS[name](), vehicles, 150)
    second = run(SCENARIOS[name](), vehicles, 150)
    assert encoded(first[1]) == encoded(second[1])
    assert first[0].ground_truth() == second[0].ground_truth()
    assert encoded(first[1]) != encoded(run(SCENARIOS[name](), vehicles, 150, seed=8)[1])


@pytest.mark.parametrize("seed", [1, 4, 9])
def test_zone_crossings_of_the_staged_vehicles_are_exactly_the_expected_ones(seed: int) -> None:
    scenario = SCENARIOS["zones"]()
    sim, publications = run(scenario, 30, 560, seed=seed)
    truth = sim.ground_truth()
    staged_vehicles = scenario.stations()
    assert len(staged_vehicles) == 4
    # Every staged vehicle entered and left a zone, and left the network outside them all.
    assert {event["station_ids"][0] for event in truth} == staged_vehicles
    assert {event["type"] for event in truth} == {"zone_enter", "zone_exit"}
    assert not any(sim.traffic.get(station) for station in staged_vehicles)
    events = detect(sim, publications)
    assert mismatches(truth, staged(scenario, truth, events)) == []
    # Exact to the message: the same crossings at the same times.
    found = Counter(
        (e.type.value, e.zone_id, e.station_ids[0], e.started_ms)
        for e in events
        if e.type in {EventType.ZONE_ENTER, EventType.ZONE_EXIT}
        and e.station_ids[0] in staged_vehicles
    )
    wanted = Counter((t["type"], t["zone_id"], t["station_ids"][0], t["at_ms"]) for t in truth)
    assert found == wanted


def test_zone_tours_visit_several_zones() -> None:
    sim, _ = run(SCENARIOS["zones"](), 20, 560, seed=2)
    entered = {event["zone_id"] for event in sim.ground_truth() if event["type"] == "zone_enter"}
    assert len(entered) >= 3


SQUARE: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {"id": "a", "name": "A"},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]],
            },
        },
        {
            "type": "Feature",
            "properties": {"id": "b", "name": "B", "hysteresis_m": 500},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[1, 0], [2, 0], [2, 1], [1, 1], [1, 0]]],
            },
        },
    ],
}


def test_expected_crossings_follow_the_spec_rules() -> None:
    zones: list[ZoneShape] = zone_shapes_from_geojson(SQUARE)
    truth = CrossingTruth(zones, timeout_ms=600_000)
    truth.position("s", 1_000, 0.5, -0.5)  # outside both
    truth.position("s", 2_000, 0.5, 0.0)  # on A's boundary: inside
    truth.position("s", 3_000, 0.5, 1.5)  # leaves A, enters B in one message: exit first
    truth.position("s", 4_000, 0.5, 0.997)  # ~330 m outside B: within its 500 m band
    truth.position("s", 5_000, 0.5, 0.99)  # ~1.1 km outside B: out (and back in A)
    kinds = [(e["type"], e["zone_id"], e["at_ms"]) for e in truth.expected(5_000)]
    assert kinds == [
        ("zone_enter", "a", 2_000),
        ("zone_exit", "a", 3_000),
        ("zone_enter", "b", 3_000),
        ("zone_enter", "a", 4_000),
        ("zone_exit", "b", 5_000),
    ]
    # Silent for the timeout while inside A: a timeout exit, dated at last position + timeout.
    assert len(truth.expected(605_000)) == len(kinds)
    timeout = truth.expected(605_001)[-1]
    assert (timeout["type"], timeout["at_ms"], timeout["reason"]) == (
        "zone_exit",
        605_000,
        "timeout",
    )


@pytest.mark.parametrize(("vehicles", "seed"), [(40, 1), (60, 3), (90, 5), (120, 7), (150, 12)])
def test_the_staged_jam_is_one_jam_whatever_the_traffic(vehicles: int, seed: int) -> None:
    scenario = Jam()
    sim, publications = run(scenario, vehicles, 520, seed=seed)
    truth = sim.ground_truth()
    assert [event["status"] for event in truth] == ["cleared"]
    events = detect(sim, publications)
    assert mismatches(truth, staged(scenario, truth, events)) == []


def test_the_closure_lies_in_one_cell_and_one_direction() -> None:
    sim = city(Jam(), 60, 3)
    (jam,) = jams(sim.scenario)
    assert jam.edge is not None
    start, end = jam.section
    assert 60.0 <= end - start <= 150.0
    cells = {
        h3.latlng_to_cell(*jam.edge.position_at(s)[:2], Jam.CELL_RESOLUTION)
        for s in range(round(start - Jam.BRAKING_ROOM_M), round(end) + 1)
    }
    assert len(cells) == 1
    # Drivers speeding up after it report from the next cell.
    after = jam.edge.position_at(end + Jam.EXIT_MARGIN_M + 1.0)
    assert h3.latlng_to_cell(after[0], after[1], Jam.CELL_RESOLUTION) not in cells


@pytest.mark.parametrize(("vehicles", "seed"), [(40, 2), (60, 5)])
def test_rush_hour_yields_its_two_jams_and_its_accident(vehicles: int, seed: int) -> None:
    scenario = SCENARIOS["rush-hour"]()
    sim, publications = run(scenario, vehicles, 680, seed=seed)
    truth = sim.ground_truth()
    assert sorted((e["type"], e["status"]) for e in truth) == [
        ("accident", "cleared"),
        ("traffic_jam", "cleared"),
        ("traffic_jam", "cleared"),
    ]
    first, second = (jam.site for jam in jams(scenario))
    assert first is not None and second is not None
    assert haversine_m(*first, *second) >= Jam.SEPARATION_M
    events = detect(sim, publications)
    assert mismatches(truth, staged(scenario, truth, events)) == []
    assert any(e.type is EventType.TRAFFIC_JAM for e in events)


def test_rush_hour_demand_ramps_up_well_beyond_the_base_traffic() -> None:
    scenario = SCENARIOS["rush-hour"]()
    (demand,) = [part for part in parts(scenario) if isinstance(part, Demand)]
    sim = city(scenario, 40, 4)
    counts: list[int] = []
    joined: list[int] = []
    for _ in range(6):
        before = demand.joined
        for _ in range(120):
            sim.tick(1.0)
        counts.append(len(sim.traffic))
        joined.append(demand.joined - before)
    # Ever more commuters join until the peak (600 s), then about as many.
    assert joined[0] < joined[2] < joined[4]
    assert joined[5] >= 0.8 * joined[4]
    assert counts[0] < counts[1] < counts[2]
    assert min(counts[2:]) >= 2.5 * 40
    assert demand.rate_per_s(0.0) == 0.0
    assert demand.rate_per_s(300.0) < demand.rate_per_s(600.0) == demand.rate_per_s(900.0)


def test_a_long_rush_hour_keeps_every_vehicle_under_the_limit_and_on_the_road() -> None:
    sim = city(SCENARIOS["rush-hour"](), 30, 11)
    last: dict[str, tuple[float, float]] = {}
    slowest_limit = 100.0
    for _ in range(1800):
        sim.tick(0.5)
        for vehicle in sim.traffic.vehicles:
            limit = sim.traffic.speed_limit_at(vehicle.edge, vehicle.offset_m)
            slowest_limit = min(slowest_limit, limit)
            # A lowered limit applies from the moment it is imposed: drivers brake into it.
            posted = vehicle.edge.speed_limit_kmh
            assert vehicle.speed_mps * 3.6 <= max(limit, posted) * SPEED_MARGIN + 1e-6
            lat, lon, _ = vehicle.position()
            if vehicle.id in last:
                assert haversine_m(*last[vehicle.id], lat, lon) <= MAX_STEP_M
            last[vehicle.id] = (lat, lon)
    assert slowest_limit == Jam.LIMIT_KMH  # the closures were there


def straight_road(length_m: float, limit_kmh: float) -> Edge:
    end_lat = length_m / 111_195.0
    return Edge.from_points(
        "road",
        0,
        1,
        [(0.0, 0.0), (end_lat, 0.0)],
        speed_limit_kmh=limit_kmh,
        road_class=RoadClass.TRUNK,
    )


def test_drivers_brake_into_a_slow_section_and_speed_up_after_it() -> None:
    road = straight_road(2000.0, 90.0)
    traffic = Traffic(1)
    traffic.set_slow_section(road.id, 800.0, 1000.0, 15.0)
    car = traffic.add(VehicleKind.CAR, [road], offset_m=0.0, speed_mps=20.0)
    speeds: dict[int, float] = {}
    while traffic.get(car.id) is not None:
        traffic.step(0.5)
        speeds[round(car.offset_m) // 50 * 50] = car.speed_mps * 3.6
    assert max(speed for at, speed in speeds.items() if 800 <= at < 1000) <= 15.0 * SPEED_MARGIN
    assert speeds[600] > 40.0
    assert speeds[1500] > 60.0
    assert traffic.speed_limit_at(road, 900.0) == 15.0
    traffic.set_slow_section(road.id, 0.0, 0.0, None)
    assert traffic.speed_limit_at(road, 900.0) == 90.0


def test_ground_truth_is_plain_json_with_the_documented_keys() -> None:
    sim, _ = run(SCENARIOS["demo"](), 60, 620)
    truth = sim.ground_truth()
    assert orjson.loads(orjson.dumps(truth)) == truth
    kinds = {event["type"] for event in truth}
    assert {"accident", "traffic_jam", "zone_enter", "zone_exit"} <= kinds
    for event in truth:
        assert {"type", "status", "station_ids", "zone_id", "exact_stations"} <= set(event)
        if event["type"] == "traffic_jam":
            assert {"started_between_ms", "near"} <= set(event)
        if event["type"].startswith("zone_"):
            assert event["exact_stations"] and "at_ms" in event
    stations = [station for event in truth for station in event["station_ids"]]
    assert any(station.startswith("zone0-") for station in stations)


def test_cams_of_staged_vehicles_come_in_time_order() -> None:
    scenario = ZoneTours()
    _, publications = run(scenario, 20, 200)
    times: dict[str, list[int]] = {}
    for _, payload, _ in publications:
        if payload["stationId"] in scenario.stations():
            times.setdefault(payload["stationId"], []).append(payload["timestamp"])
    assert times
    assert all(a < b for stamps in times.values() for a, b in itertools.pairwise(stamps))
