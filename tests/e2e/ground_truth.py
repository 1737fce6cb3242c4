"""Compare the events stored in MySQL with a scenario's expected events."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pymysql

from roadwatch.settings import Settings

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
# After a match, nothing more may arrive for this long (a late duplicate would show here).
SETTLE_S = 1.5


def expected_events(name: str) -> list[dict[str, Any]]:
    expected: list[dict[str, Any]] = orjson.loads((SCENARIOS / f"{name}.expected.json").read_bytes())
    return expected


def scenario_stations(name: str) -> set[str]:
    """Every station id that the scenario's trace publishes for."""
    stations: set[str] = set()
    with (SCENARIOS / f"{name}.jsonl").open("rb") as trace:
        for line in trace:
            stations.add(orjson.loads(line)["payload"]["stationId"])
    return stations


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


def _key(event: dict[str, Any]) -> tuple[str, str, str | None]:
    return event["type"], event["status"], event["zone_id"]


def mismatches(expected: list[dict[str, Any]], stored: list[dict[str, Any]]) -> list[str]:
    """Say, in words, how the stored events differ from the expected ones (empty: none)."""
    problems: list[str] = []
    remaining = list(stored)
    for want in expected:
        match = next(
            (
                got
                for got in remaining
                if _key(got) == _key(want)
                and (
                    got["station_ids"] == want["station_ids"]
                    if want.get("exact_stations", True)
                    else set(got["station_ids"]) <= set(want["station_ids"])
                )
            ),
            None,
        )
        if match is None:
            problems.append(f"missing {want}")
        else:
            remaining.remove(match)
    problems += [f"unexpected {got}" for got in remaining]
    counts = Counter(row["id"] for row in stored)
    problems += [f"event {ident} stored {n} times" for ident, n in counts.items() if n > 1]
    return problems


def wait_for_ground_truth(
    settings: Settings, name: str, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """Poll MySQL until the scenario's events are exactly the expected ones; return them."""
    expected = expected_events(name)
    stations = scenario_stations(name)
    deadline = time.monotonic() + timeout_s
    while True:
        stored = stored_events(settings, stations)
        problems = mismatches(expected, stored)
        if not problems:
            time.sleep(SETTLE_S)
            stored = stored_events(settings, stations)
            problems = mismatches(expected, stored)
            if not problems:
                return stored
        if time.monotonic() > deadline:
            raise AssertionError(f"scenario {name}: " + "; ".join(problems))
        time.sleep(0.2)
