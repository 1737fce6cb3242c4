"""Compare the events stored in MySQL with a scenario's expected events."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pymysql

from roadwatch.settings import Settings
from tests.scenarios.truth import expected_events, mismatches, scenario_stations

# After a match, nothing more may arrive for this long (a late duplicate would show here).
SETTLE_S = 1.5


def stored_events(settings: Settings, stations: set[str]) -> list[dict[str, Any]]:
    """The latest version of every stored event involving one of `stations`."""
    connection = pymysql.connect(
        host=settings.mysql_host,
        port=settings.mysql_port,
        user=settings.mysql_user,
        password=settings.mysql_password.get_secret_value(),
        database=settings.mysql_database,
        cursorclass=pymysql.cursors.DictCursor,
    )
    placeholders = ", ".join(["%s"] * len(stations))
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT e.id, e.type, e.status, e.version, e.zone_id, e.station_ids"
                " FROM events e JOIN event_stations s ON s.event_id = e.id"
                f" WHERE s.station_id IN ({placeholders})",
                sorted(stations),
            )
            rows = list(cursor.fetchall())
    finally:
        connection.close()
    for row in rows:
        row["station_ids"] = sorted(orjson.loads(row["station_ids"]))
    return rows


def wait_for_ground_truth(
    settings: Settings,
    name: str,
    *,
    expected: list[dict[str, Any]] | None = None,
    stations: set[str] | None = None,
    types: set[str] | None = None,
    timeout_s: float = 30.0,
) -> list[dict[str, Any]]:
    """Poll MySQL until the scenario's events are exactly the expected ones; return them."""
    expected = expected_events(name) if expected is None else expected
    stations = scenario_stations(name) if stations is None else stations
    deadline = time.monotonic() + timeout_s

    def current() -> list[dict[str, Any]]:
        rows = stored_events(settings, stations)
        return rows if types is None else [row for row in rows if row["type"] in types]

    while True:
        stored = current()
        problems = mismatches(expected, stored)
        if not problems:
            time.sleep(SETTLE_S)
            stored = current()
            problems = mismatches(expected, stored)
            if not problems:
                return stored
        if time.monotonic() > deadline:
            raise AssertionError(f"scenario {name}: " + "; ".join(problems))
        time.sleep(0.2)
