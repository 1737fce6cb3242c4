"""Simulated city scenarios, replayed over MQTT, leave exactly their staged events in MySQL.

Each scenario is simulated in the test with its own station prefix (so that runs share no
station), replayed through Mosquitto, the gateway, Prosody and the collector, and compared
with the ground truth the simulator wrote for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from roadwatch.services.replay import replay
from roadwatch.simulation.city import CitySimulation
from roadwatch.simulation.geofence import load_zone_shapes
from roadwatch.simulation.network import REIMS_NETWORK_PATH, load_network
from roadwatch.simulation.scenarios import SCENARIOS, Composite, ZoneTours
from tests.e2e.conftest import RunningSystem
from tests.e2e.ground_truth import ZONE_TYPES, staged_selector, wait_for_ground_truth
from tests.e2e.test_ground_truth import put_zones_through_the_api, restart_gateway

pytestmark = pytest.mark.e2e

START_MS = 1_780_000_000_000  # shifted by the replay so that the trace ends now
SPEEDUP = 40.0
ZONES = Path(__file__).resolve().parents[2] / "deploy" / "zones" / "reims.geojson"


@pytest.fixture(scope="module")
def shipped_zones(running_system: RunningSystem) -> None:
    """Make the gateway's zones exactly the shipped ones, which the simulator stages against."""
    put_zones_through_the_api(running_system.settings)


def simulate(
    name: str, vehicles: int, seconds: int, seed: int, prefix: str, folder: Path
) -> tuple[Path, list[dict[str, Any]], CitySimulation]:
    """Record a scenario as a trace with prefixed stations; return it and its ground truth."""
    simulation = CitySimulation(
        load_network(REIMS_NETWORK_PATH),
        vehicles,
        seed,
        START_MS,
        SCENARIOS[name](),
        zones=load_zone_shapes(ZONES),
    )
    trace = folder / f"{name}.jsonl"
    with trace.open("wb") as out:
        for _ in range(seconds):
            for topic, payload, qos in simulation.tick(1.0):
                station = prefix + payload["stationId"]
                kind = topic.rsplit("/", 1)[1]
                line = {
                    "topic": f"vehicles/{station}/{kind}",
                    "qos": qos,
                    "payload": {**payload, "stationId": station},
                }
                out.write(orjson.dumps(line) + b"\n")
    expected = [
        {**event, "station_ids": sorted(prefix + s for s in event["station_ids"])}
        for event in simulation.ground_truth()
    ]
    return trace, expected, simulation


def replay_and_compare(
    running_system: RunningSystem,
    name: str,
    trace: Path,
    expected: list[dict[str, Any]],
    *,
    stations: set[str],
    types: set[str],
    touring: frozenset[str] = frozenset(),
) -> None:
    """Replay a trace through the running system; wait until MySQL holds exactly its truth.

    Only the staged events are judged (see `staged_selector`): `touring` are the vehicles
    whose zone crossings were staged.
    """
    restart_gateway(running_system, keep_state=False)
    stats = replay(running_system.settings, trace, SPEEDUP)
    wait_for_ground_truth(
        running_system.settings,
        name,
        expected=expected,
        stations=stations,
        types=types,
        keep=staged_selector(expected, set(touring), shift_ms=stats.offset_ms),
    )


def test_simulated_accident_scenario_meets_its_ground_truth_end_to_end(
    running_system: RunningSystem, tmp_path: Path
) -> None:
    trace, expected, _ = simulate("accident", 120, 360, 11, "sa-", tmp_path)
    expected = [event for event in expected if event["type"] == "accident"]
    assert expected, "the scenario staged no accident"
    witnesses = {station for event in expected for station in event["station_ids"]}

    # The witnesses also drive through zones: only accidents are the scenario's to judge.
    replay_and_compare(
        running_system, "accident", trace, expected, stations=witnesses, types={"accident"}
    )


def test_simulated_jam_scenario_meets_its_ground_truth_end_to_end(
    running_system: RunningSystem, tmp_path: Path
) -> None:
    trace, expected, _ = simulate("jam", 60, 520, 5, "sj-", tmp_path)
    assert [(e["type"], e["status"]) for e in expected] == [("traffic_jam", "cleared")]
    stations = {station for event in expected for station in event["station_ids"]}

    # The city has congestion of its own: only the jam at the closure, while it held, counts.
    replay_and_compare(
        running_system, "jam", trace, expected, stations=stations, types={"traffic_jam"}
    )


def test_simulated_zones_scenario_meets_its_ground_truth_end_to_end(
    running_system: RunningSystem, shipped_zones: None, tmp_path: Path
) -> None:
    trace, expected, simulation = simulate("zones", 30, 520, 3, "sz-", tmp_path)
    staged = {"sz-" + station for station in simulation.scenario.stations()}
    assert len(staged) == 4
    assert {event["type"] for event in expected} == set(ZONE_TYPES)

    # The staged vehicles may also sit in a jam on the way: only their crossings are judged.
    replay_and_compare(
        running_system,
        "zones",
        trace,
        expected,
        stations=staged,
        types=set(ZONE_TYPES),
        touring=frozenset(staged),
    )


def test_simulated_rush_hour_meets_its_ground_truth_end_to_end(
    running_system: RunningSystem, tmp_path: Path
) -> None:
    trace, expected, _ = simulate("rush-hour", 40, 680, 2, "sr-", tmp_path)
    assert sorted((e["type"], e["status"]) for e in expected) == [
        ("accident", "cleared"),
        ("traffic_jam", "cleared"),
        ("traffic_jam", "cleared"),
    ]
    stations = {station for event in expected for station in event["station_ids"]}

    # Commuters crowd the city: only the staged accident and the jams at both closures count.
    replay_and_compare(
        running_system,
        "rush-hour",
        trace,
        expected,
        stations=stations,
        types={"accident", "traffic_jam"},
    )


def test_simulated_demo_meets_its_ground_truth_end_to_end(
    running_system: RunningSystem, shipped_zones: None, tmp_path: Path
) -> None:
    trace, expected, simulation = simulate("demo", 60, 620, 3, "sd-", tmp_path)
    assert isinstance(simulation.scenario, Composite)
    touring = {
        "sd-" + station
        for part in simulation.scenario.parts
        if isinstance(part, ZoneTours)
        for station in part.stations()
    }
    kinds = {event["type"] for event in expected}
    assert {"accident", "traffic_jam", *ZONE_TYPES} <= kinds
    assert touring
    stations = {station for event in expected for station in event["station_ids"]}

    # Accidents, the jam at the closure, and the touring vehicles' crossings are the demo's.
    replay_and_compare(
        running_system,
        "demo",
        trace,
        expected,
        stations=stations | touring,
        types={"accident", "traffic_jam", *ZONE_TYPES},
        touring=frozenset(touring),
    )
