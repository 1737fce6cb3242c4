"""Compare the events stored in MySQL with a scenario's expected events."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import pymysql

from roadwatch.domain.geo import haversine_m
from roadwatch.settings import Settings
from tests.scenarios.truth import expected_events, mismatches, scenario_stations

# After a match, nothing more may arrive for this long (a late duplicate would show here).
SETTLE_S = 1.5
ZONE_TYPES = frozenset({"zone_enter", "zone_exit"})


def staged_selector(
    expected: Iterable[dict[str, Any]], zone_stations: set[str], shift_ms: int = 0
) -> Callable[[dict[str, Any]], bool]:
    """Return a test telling a simulated scenario's staged events from the city's own.

    A busy city also has congestion and zone crossings of its own: only accidents (only
    scenarios send DENMs), the zone crossings of the vehicles staged for them, and the jams
    that start where and while a staged jam was (its `near` and `started_between_ms`; times
    shifted by `shift_ms`, as a replay does) count. Rows need type, station_ids, started_ms,
    lat and lon.
    """
    expected = list(expected)
    jams = [event for event in expected if event["type"] == "traffic_jam"]

    def staged(row: dict[str, Any]) -> bool:
        if row["type"] == "accident":
            return True
        if row["type"] in ZONE_TYPES:
            return not zone_stations.isdisjoint(row["station_ids"])
        if row["type"] != "traffic_jam":
            return False
        for jam in jams:
            first, last = jam["started_between_ms"]
            near = jam["near"]
            if (
                first + shift_ms <= row["started_ms"] <= last + shift_ms
                and haversine_m(row["lat"], row["lon"], near["lat"], near["lon"])
                <= near["radius_m"]
            ):
                return True
        return False

    return staged


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
                "SELECT DISTINCT e.id, e.type, e.status, e.version, e.zone_id, e.station_ids,"
                " e.started_at, e.lat, e.lon"
                " FROM events e JOIN event_stations s ON s.event_id = e.id"
                f" WHERE s.station_id IN ({placeholders})",
                sorted(stations),
            )
            rows = list(cursor.fetchall())
    finally:
        connection.close()
    for row in rows:
        row["station_ids"] = sorted(orjson.loads(row["station_ids"]))
        # Event times are stored as UTC without a zone (docs/contract/storage.md §2).
        started: datetime = row.pop("started_at")
        row["started_ms"] = round(started.replace(tzinfo=UTC).timestamp() * 1000)
    return rows


def wait_for_ground_truth(
    settings: Settings,
    name: str,
    *,
    expected: list[dict[str, Any]] | None = None,
    stations: set[str] | None = None,
    types: set[str] | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    timeout_s: float = 30.0,
) -> list[dict[str, Any]]:
    """Poll MySQL until the scenario's events are exactly the expected ones; return them.

    Only the events of `stations`, of `types` and passing `keep` are compared.
    """
    expected = expected_events(name) if expected is None else expected
    stations = scenario_stations(name) if stations is None else stations
    deadline = time.monotonic() + timeout_s

    def current() -> list[dict[str, Any]]:
        rows = stored_events(settings, stations)
        return [
            row
            for row in rows
            if (types is None or row["type"] in types) and (keep is None or keep(row))
        ]

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
