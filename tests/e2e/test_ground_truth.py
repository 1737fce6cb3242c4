"""Recorded scenarios replayed over MQTT: MySQL ends up holding exactly their expected events.

Each run goes through the real path — Mosquitto, the gateway, Prosody, the collector, MariaDB —
and one run kills the gateway with SIGKILL in the middle of the replay: its saved state must
make the result identical, with no duplicate and no invented zone crossing.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from roadwatch.runner.process import is_alive, read_pid
from roadwatch.runner.templates import deploy_dir
from roadwatch.services.replay import ReplayStats, replay
from roadwatch.settings import Settings
from tests.e2e.conftest import RunningSystem
from tests.e2e.ground_truth import wait_for_ground_truth
from tests.e2e.helpers import zones_request
from tests.scenarios.truth import NAMES, SCENARIOS, expected_events, trace_lines

pytestmark = pytest.mark.e2e

# Simulated seconds per second: the longest scenario (13 min) replays in about 15 s.
SPEEDUP = 50.0


def put_zones_through_the_api(settings: Settings) -> None:
    """Make exactly the shipped Reims zones current, through the REST API as an operator would."""
    wanted = orjson.loads((deploy_dir() / "zones" / "reims.geojson").read_bytes())["features"]
    wanted_ids = {feature["properties"]["id"] for feature in wanted}
    for feature in zones_request(settings, "GET").body["features"]:
        if feature["properties"]["id"] not in wanted_ids:
            path = f"/{feature['properties']['id']}"
            assert zones_request(settings, "DELETE", path).status == 204
    for feature in wanted:
        path = f"/{feature['properties']['id']}"
        assert zones_request(settings, "PUT", path, feature).status in (200, 201)


@pytest.fixture(scope="module")
def zones_ready(running_system: RunningSystem) -> None:
    put_zones_through_the_api(running_system.settings)


def restart_gateway(system: RunningSystem, *, keep_state: bool) -> None:
    """Stop the gateway; unless `keep_state`, forget its saved detection state; start it."""
    gateway = system.services["gateway"]
    gateway.stop()
    if not keep_state:
        shutil.rmtree(system.settings.run_dir / "gateway", ignore_errors=True)
    gateway.start()


def renamed_trace(name: str, prefix: str, folder: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Copy a scenario with every station id prefixed, so that runs do not share stations."""
    path = folder / f"{prefix}{name}.jsonl"
    with path.open("wb") as out:
        for line in trace_lines(name):
            payload = dict(line["payload"])
            station = prefix + payload["stationId"]
            payload["stationId"] = station
            kind = line["topic"].rsplit("/", 1)[1]
            out.write(
                orjson.dumps({**line, "topic": f"vehicles/{station}/{kind}", "payload": payload})
                + b"\n"
            )
    expected = [
        {**event, "station_ids": sorted(prefix + s for s in event["station_ids"])}
        for event in expected_events(name)
    ]
    return path, expected


@pytest.mark.parametrize("name", NAMES)
def test_replayed_scenario_yields_exactly_its_ground_truth(
    running_system: RunningSystem, zones_ready: None, name: str
) -> None:
    restart_gateway(running_system, keep_state=False)
    stats = replay(running_system.settings, SCENARIOS / f"{name}.jsonl", SPEEDUP)
    assert stats.published == len(trace_lines(name))
    wait_for_ground_truth(running_system.settings, name)


def test_gateway_killed_mid_replay_yields_the_same_events(
    running_system: RunningSystem, zones_ready: None, tmp_path: Path
) -> None:
    settings = running_system.settings
    restart_gateway(running_system, keep_state=False)
    path, expected = renamed_trace("zones", "k9-", tmp_path)
    gateway = running_system.services["gateway"]
    crashes: list[float] = []

    def crash(stats: ReplayStats) -> None:
        pid = read_pid(settings.run_dir / "pids" / "gateway.pid")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        crashes.append(time.monotonic())
        gateway.start()  # the runner's own restart: state comes back from the saved files

    replay(settings, path, SPEEDUP, checkpoints={0.5: crash})
    assert crashes, "the gateway was never killed"
    stations = {
        line["payload"]["stationId"] for line in map(orjson.loads, path.read_bytes().splitlines())
    }
    wait_for_ground_truth(settings, "zones", expected=expected, stations=stations)
