"""`roadwatch seed-events` against a real MariaDB: every type lands, and the API reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from roadwatch.adapters.mysql.connection import connect
from roadwatch.runner.mariadb import MariaDB
from roadwatch.services import seed
from roadwatch.settings import Settings
from tests.integration.api_server import serve
from tests.integration.db import clear_events

pytestmark = pytest.mark.integration

COUNT = 2000
REIMS = (3.9, 49.15, 4.2, 49.35)  # minLon, minLat, maxLon, maxLat


def scalar(settings: Settings, sql: str) -> int:
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


@pytest.fixture(scope="module")
def seeded(mariadb: MariaDB, test_settings: Settings) -> str:
    """Run the real command; return what it printed."""
    clear_events(test_settings)
    env = {**os.environ, **test_settings.as_environment(), "ROADWATCH_ENV_FILE": ""}
    done = subprocess.run(
        [sys.executable, "-m", "roadwatch", "seed-events", "--count", str(COUNT), "--days", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"seeded {COUNT:,} / {COUNT:,} events" in done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def client(seeded: str, test_settings: Settings) -> Iterator[httpx.Client]:
    with serve(test_settings) as client:
        yield client


def test_the_command_inserts_the_events_with_their_stations(
    seeded: str, test_settings: Settings
) -> None:
    assert f"{COUNT:,} events inserted" in seeded
    assert scalar(test_settings, "SELECT COUNT(*) FROM events") == COUNT
    assert scalar(test_settings, "SELECT COUNT(DISTINCT type) FROM events") == 5
    # Every event has its station rows, and the stations come from the fixed pool.
    assert scalar(test_settings, "SELECT COUNT(*) FROM events e WHERE e.station_count = 0") == 0
    assert scalar(test_settings, "SELECT SUM(station_count) FROM events") == scalar(
        test_settings, "SELECT COUNT(*) FROM event_stations"
    )
    assert scalar(test_settings, "SELECT COUNT(DISTINCT station_id) FROM event_stations") <= (
        seed.STATION_POOL
    )


def test_seeding_again_with_the_same_seed_adds_nothing(
    seeded: str, test_settings: Settings
) -> None:
    conn = connect(test_settings)
    try:
        report = seed.seed_events(conn, 300, seed=1, days=2, end_ms=None)
    finally:
        conn.close()
    # A different end time moves the start times, so these are new ids...
    assert report.inserted == 300
    conn = connect(test_settings)
    try:
        again = seed.seed_events(conn, 300, seed=1, days=2, end_ms=report.end_ms)
    finally:
        conn.close()
    # ...but the same seed, count and end give the same rows, which are not inserted twice.
    assert again.inserted == 0
    assert scalar(test_settings, "SELECT COUNT(*) FROM events") == COUNT + 300


def test_the_api_serves_the_seeded_events_over_reims_and_the_last_days(
    client: httpx.Client, test_settings: Settings
) -> None:
    total = scalar(test_settings, "SELECT COUNT(*) FROM events")
    summary = client.get("/api/stats/summary").json()
    assert summary["total"] == total
    assert all(count > 0 for count in summary["by_type"].values())
    page = client.get("/api/events", params={"limit": 1000}).json()
    assert len(page["items"]) == 1000
    assert page["next_cursor"] is not None
    min_lon, min_lat, max_lon, max_lat = REIMS
    assert all(min_lat < e["lat"] < max_lat and min_lon < e["lon"] < max_lon for e in page["items"])
    zone_events = [e for e in page["items"] if e["type"] in ("zone_enter", "zone_exit")]
    assert zone_events
    assert all(e["zone_id"] and e["status"] == "instant" for e in zone_events)
    series = client.get("/api/stats/timeseries", params={"bucket": "day", "type": "accident"})
    assert sum(b["total"] for b in series.json()["buckets"]) == summary["by_type"]["accident"]
