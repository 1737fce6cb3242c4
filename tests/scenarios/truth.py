"""Ground truth of the scenarios: their expected events, and how to compare events with them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from roadwatch.domain.events import Event

SCENARIOS = Path(__file__).resolve().parent
NAMES = ("accident", "traffic_jam", "hazard", "zones")


def expected_events(name: str) -> list[dict[str, Any]]:
    expected: list[dict[str, Any]] = orjson.loads(
        (SCENARIOS / f"{name}.expected.json").read_bytes()
    )
    return expected


def trace_lines(name: str) -> list[dict[str, Any]]:
    """The publications of one scenario, in order."""
    with (SCENARIOS / f"{name}.jsonl").open("rb") as trace:
        return [orjson.loads(line) for line in trace]


def scenario_stations(name: str) -> set[str]:
    """Every station id that the scenario's trace publishes for."""
    return {line["payload"]["stationId"] for line in trace_lines(name)}


def _key(event: dict[str, Any]) -> tuple[str, str, str | None]:
    return event["type"], event["status"], event["zone_id"]


def mismatches(expected: list[dict[str, Any]], stored: list[dict[str, Any]]) -> list[str]:
    """Say, in words, how the final events differ from the expected ones (empty: none).

    `stored` holds each event's latest version: id, type, status, zone_id, station_ids.
    """
    problems: list[str] = []
    remaining = list(stored)
    for want in expected:
        match = next(
            (
                got
                for got in remaining
                if _key(got) == _key(want)
                and (
                    sorted(got["station_ids"]) == want["station_ids"]
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


def final_versions(events: list[Event]) -> list[dict[str, Any]]:
    """The latest version of every event, as the rows the ground truth is compared with."""
    latest: dict[str, Event] = {}
    for event in events:
        if event.id not in latest or event.version > latest[event.id].version:
            latest[event.id] = event
    return [
        {
            "id": e.id,
            "type": e.type.value,
            "status": e.status.value,
            "zone_id": e.zone_id,
            "station_ids": sorted(e.station_ids),
            "started_ms": e.started_ms,
            "lat": e.lat,
            "lon": e.lon,
        }
        for e in latest.values()
    ]
