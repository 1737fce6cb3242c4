"""A real gateway killed with SIGKILL mid-replay and restarted: MySQL gets the same events.

The gateway and the collector run as processes against the test Mosquitto, Prosody and
MariaDB; a trace is replayed over MQTT with the fleet account. Half-way, once the gateway has
taken every message published so far, it is killed with `kill -9` and started again, then the
replay goes on. The events stored must be exactly those of an uninterrupted detection of the
same trace: no duplicate zone_enter, nothing invented, nothing lost.
"""

from __future__ import annotations

import math
import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pymysql
import pytest

from roadwatch.adapters.mysql.zones import ZoneStore
from roadwatch.domain.detector import Detector
from roadwatch.domain.events import Event, EventType
from roadwatch.domain.messages import parse_message
from roadwatch.domain.zones import Zone
from roadwatch.runner.process import RunLayout, free_port, is_alive, read_pid
from roadwatch.runner.stack import PythonService, service_probe
from roadwatch.services.gateway.intake import forget_sessions
from roadwatch.services.replay import ReplayStats, rebase_payload, replay
from roadwatch.services.status import status_path

if TYPE_CHECKING:
    from roadwatch.runner.mariadb import MariaDB
    from roadwatch.runner.mosquitto import Mosquitto
    from roadwatch.runner.prosody import Prosody
    from roadwatch.settings import Settings

from tests.integration.db import reset_zones

pytestmark = pytest.mark.integration

# Far from the Reims zones the gateway also loads, so only this zone sees these vehicles.
LAT, LON = 48.95, 3.60
HALF_DEG = 0.002
T0 = 1_780_000_000_000
TRACE_S = 120
SPEEDUP = 8.0
SETTLE_S = 30.0


@dataclass
class Stack:
    settings: Settings
    layout: RunLayout
    gateway: PythonService
    zone: Zone
    suffix: str


def square_zone(zone_id: str) -> Zone:
    ring = (
        (LON - HALF_DEG, LAT - HALF_DEG),
        (LON + HALF_DEG, LAT - HALF_DEG),
        (LON + HALF_DEG, LAT + HALF_DEG),
        (LON - HALF_DEG, LAT + HALF_DEG),
        (LON - HALF_DEG, LAT - HALF_DEG),
    )
    return Zone(zone_id, "Gateway state test", ((ring,),))


def zones_unseeded(settings: Settings) -> bool:
    with ZoneStore.connect(settings) as store:
        return store.revision() == 0


def metrics(settings: Settings) -> dict[str, float]:
    url = f"http://127.0.0.1:{settings.gateway_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            figures[name.removeprefix("roadwatch_gateway_")] = float(value)
    return figures


def wait_for(what: str, check: Any, timeout_s: float = SETTLE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(
    test_settings: Settings,
    run_root: Path,
    mariadb: MariaDB,
    mosquitto: Mosquitto,
    prosody: Prosody,
) -> Iterator[Stack]:
    """A collector and a gateway with their own run folder (state, status, logs)."""
    settings = test_settings.model_copy(
        update={
            "run_dir": run_root / "gateway-state",
            "gateway_metrics_port": free_port(),
            "state_snapshot_interval_s": 0.5,
            "zone_refresh_s": 0.3,
        }
    )
    layout = RunLayout(settings.run_dir)
    layout.ensure()
    unseeded = zones_unseeded(settings)
    suffix = str(time.time_ns())[-7:]
    zone = square_zone(f"gwstate-{suffix}")
    services = [
        PythonService(name, settings, layout, service_probe(settings, name))
        for name in ("collector", "gateway")
    ]
    try:
        for service in services:
            service.start()
        # After the gateway's start, so its first start seeds the zones file as usual.
        with ZoneStore.connect(settings) as store:
            store.create_zone(zone)
        wait_for(
            "the gateway taking the new zone",
            lambda: f'zone_occupancy{{zone="{zone.id}"}}' in metrics(settings),
        )
        yield Stack(settings, layout, services[1], zone, suffix)
    finally:
        for service in reversed(services):
            service.stop()
        forget_sessions(settings)
        if unseeded:
            reset_zones(settings)
        else:
            with ZoneStore.connect(settings) as store:
                store.delete_zone(zone.id)


def write_trace(path: Path, suffix: str) -> list[str]:
    """Vehicles swinging in and out of the zone, and an accident reported then cleared."""
    stations = [f"gws-{suffix}-{n}" for n in range(8)]
    metres_per_deg_lon = 111_320.0 * math.cos(math.radians(LAT))
    lines: list[dict[str, Any]] = []
    for s in range(TRACE_S):
        for n, station in enumerate(stations):
            period = 30 + 7 * n
            east_m = 330.0 * math.sin(2 * math.pi * s / period + n)
            payload = {
                "stationId": station,
                "stationType": 5,
                "timestamp": T0 + s * 1000 + n * 37,
                "lat": round(LAT + (n - 4) * 0.0001, 7),
                "lon": round(LON + east_m / metres_per_deg_lon, 7),
                "speed": 40.0,
                "heading": 90.0 if math.cos(2 * math.pi * s / period + n) > 0 else 270.0,
            }
            lines.append({"topic": f"vehicles/{station}/cam", "qos": 0, "payload": payload})
        for at_s, station, station_type, termination in (
            (30, stations[0], 5, None),
            (35, stations[1], 5, None),
            (100, f"gws-{suffix}-op", 15, "negation"),
        ):
            if s == at_s:
                denm: dict[str, Any] = {
                    "stationId": station,
                    "stationType": station_type,
                    "timestamp": T0 + s * 1000 + 500,
                    "lat": LAT,
                    "lon": LON,
                    "causeCode": 2,
                }
                if termination:
                    denm["termination"] = termination
                lines.append({"topic": f"vehicles/{station}/denm", "qos": 1, "payload": denm})
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return [*stations, f"gws-{suffix}-op"]


def expected_events(path: Path, offset_ms: int, zone: Zone, settings: Settings) -> dict[str, Event]:
    """Detect the replayed trace in-process, without any crash: the latest version per id."""
    detector = Detector(settings.detection_rules, zones=[zone])
    latest: dict[str, Event] = {}
    for raw in path.read_bytes().splitlines():
        line = orjson.loads(raw)
        payload = orjson.dumps(rebase_payload(line["payload"], offset_ms))
        message = parse_message(line["topic"], payload, 2**62)
        for event in detector.process(message):
            latest[event.id] = event
    return latest


def stored_events(settings: Settings, stations: list[str]) -> dict[str, tuple[str, str, int]]:
    connection = pymysql.connect(
        host=settings.mysql_host,
        port=settings.mysql_port,
        user=settings.mysql_user,
        password=settings.mysql_password.get_secret_value(),
        database=settings.mysql_database,
    )
    placeholders = ", ".join(["%s"] * len(stations))
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT e.id, e.type, e.status, e.version FROM events e"
                " JOIN event_stations s ON s.event_id = e.id"
                f" WHERE s.station_id IN ({placeholders})",
                stations,
            )
            return {row[0]: (row[1], row[2], row[3]) for row in cursor.fetchall()}
    finally:
        connection.close()


def kill_and_restart(stack: Stack, replayed: ReplayStats, received_before: float) -> None:
    """Once the gateway has every message so far, kill -9 it and start it again."""
    settings = stack.settings
    wait_for(
        "the gateway receiving what was published",
        lambda: (
            metrics(settings)["messages_received_total"] >= received_before + replayed.published
        ),
    )
    time.sleep(0.1)  # longer than the journal's flush interval: as if the kill came a bit later
    pid = read_pid(stack.layout.pidfile("gateway"))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for("the gateway to die", lambda: not is_alive(pid), 10.0)
    # Its last status says "ready": the new process must write its own before it counts.
    status_path(settings.run_dir, "gateway").unlink(missing_ok=True)
    stack.gateway.start()


def test_a_gateway_killed_mid_replay_stores_the_same_events_as_one_never_killed(
    stack: Stack, tmp_path: Path
) -> None:
    settings = stack.settings
    path = tmp_path / "trace.jsonl"
    stations = write_trace(path, stack.suffix)
    received_before = metrics(settings)["messages_received_total"]
    stats = replay(
        settings,
        path,
        SPEEDUP,
        checkpoints={0.5: lambda replayed: kill_and_restart(stack, replayed, received_before)},
    )
    assert stats.published == len(path.read_bytes().splitlines())

    after = metrics(settings)
    assert after["restore_snapshot_loaded"] == 1
    assert after["messages_received_total"] > 0

    expected = {
        event_id: (event.type.value, event.status.value, event.version)
        for event_id, event in expected_events(path, stats.offset_ms, stack.zone, settings).items()
    }
    kinds = {kind for kind, _, _ in expected.values()}
    assert {EventType.ZONE_ENTER.value, EventType.ZONE_EXIT.value, "accident"} <= kinds
    wait_for(
        "MySQL holding exactly the events of an uninterrupted run",
        lambda: stored_events(settings, stations) == expected,
    )
    time.sleep(1.5)  # a late duplicate would show up here
    stored = stored_events(settings, stations)
    assert stored == expected
    enters = [row for row in stored.values() if row[0] == EventType.ZONE_ENTER.value]
    assert len(enters) == sum(1 for row in expected.values() if row[0] == "zone_enter")
    log = (stack.layout.logfile("gateway")).read_text()
    assert re.search(r"gateway state: snapshot restored, \d+ journal records replayed", log)
