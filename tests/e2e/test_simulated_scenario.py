"""A simulated city scenario, replayed over MQTT, leaves its staged accident in MySQL."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from roadwatch.services.replay import replay
from roadwatch.simulation.city import SCENARIOS, CitySimulation
from roadwatch.simulation.network import REIMS_NETWORK_PATH, load_network
from tests.e2e.conftest import RunningSystem
from tests.e2e.ground_truth import wait_for_ground_truth
from tests.e2e.test_ground_truth import restart_gateway

pytestmark = pytest.mark.e2e

START_MS = 1_780_000_000_000  # shifted by the replay so that the trace ends now
VEHICLES = 120
SECONDS = 360
SPEEDUP = 40.0


def test_simulated_accident_scenario_meets_its_ground_truth_end_to_end(
    running_system: RunningSystem, tmp_path: Path
) -> None:
    simulation = CitySimulation(
        load_network(REIMS_NETWORK_PATH), VEHICLES, 11, START_MS, SCENARIOS["accident"]()
    )
    trace = tmp_path / "accident.jsonl"
    with trace.open("wb") as out:
        for _ in range(SECONDS):
            for topic, payload, qos in simulation.tick(1.0):
                out.write(orjson.dumps({"topic": topic, "qos": qos, "payload": payload}) + b"\n")
    expected = [event for event in simulation.ground_truth() if event["type"] == "accident"]
    assert expected, "the scenario staged no accident"
    witnesses = {station for event in expected for station in event["station_ids"]}

    restart_gateway(running_system, keep_state=False)
    replay(running_system.settings, trace, SPEEDUP)
    # The witnesses also drive through zones: only accidents are the scenario's to judge.
    wait_for_ground_truth(
        running_system.settings,
        "accident",
        expected=expected,
        stations=witnesses,
        types={"accident"},
    )
